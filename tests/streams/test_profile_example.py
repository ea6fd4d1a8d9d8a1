"""examples/profile_service: exactly-once state under kills and retries; the plain one drifts.

The driver runs against the harness' 3-primary cluster (600 events, 1 in 5
sent twice, 6 consumer kills, onceonly consumers restarted under new names and
their entries reclaimed) and writes its counts. onceonly's run must
equal the exactly-once expectation key by key, with one welcome e-mail per
new user; the plain run (bare XADD, write then XACK) must not: the seed
fixes which requests are retried, so its drift is certain, not luck.

The external-effects path: a handler that sends an e-mail through an
``idempotent_function`` keyed by the event id, then dies before the commit,
gets the entry again and the e-mail is not sent twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

import redis_harness as harness
from onceonly.stores import SQLiteStore
from onceonly.streams import EntryStatus, StreamConsumer, StreamEntry, publish
from testkit import RedisFarm

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "profile_service"


def test_the_driver_gives_exactly_once_state_and_the_plain_run_drifts(
    redis_engine: harness.Engine, redis_farm: RedisFarm, tmp_path: Path
) -> None:
    node = redis_farm.cluster(redis_engine).nodes[0]
    out = tmp_path / "results.json"
    args = ["--cluster", f"{node.client_host()}:{node.port}", "--events", "600", "--kills", "6"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours, plain = json.loads(out.read_text())
    assert ours["mode"] == "onceonly"
    assert ours["sent"] > ours["events"]  # some requests were retried
    assert ours["kills"] == plain["kills"] == 6
    assert (ours["wrong_users"], ours["wrong_members"], ours["extra_points"]) == (0, 0, 0)
    # A onceonly consumer comes back under a new name: a killed one's entries are
    # reclaimed by its successor (only reclaim acknowledges them, the run drained).
    assert ours["busy_kills"] == 0 or ours["reclaimed"] > 0
    assert plain["reclaimed"] is None
    # A kill during a send, before its outcome is recorded, sends it again after the
    # lease (at least once; at most once per completed send): never fewer, and at
    # most one more per kill.
    assert ours["new_users"] <= ours["emails"] <= ours["new_users"] + ours["kills"]
    assert plain["mode"] == "plain"
    assert plain["wrong_users"] > 0
    assert plain["extra_points"] > 0  # retried score events were applied twice


def _service() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import service
    finally:
        sys.path.remove(str(EXAMPLE))
    return service


def test_a_redelivered_entry_does_not_send_its_welcome_email_again(
    standalone: redis.Redis, tmp_path: Path
) -> None:
    service = _service()
    for key in standalone.scan_iter(match="{p0}:*"):
        standalone.delete(key)
    stream = service.stream("p0")
    fields = {"type": "profile", "user": "3", "name": "Ada", "new": "1", "event_id": "evt-1"}
    publish(standalone, stream, fields, event_id="evt-1")
    emails = tmp_path / "emails.txt"
    store = SQLiteStore(tmp_path / "emails.db")
    handle = service.onceonly_handler(emails, store)

    def dies_after_the_email(entry: StreamEntry) -> Any:
        handle(entry)  # the e-mail goes out ...
        raise RuntimeError("killed before the commit")  # ... and nothing is committed

    def consumer(handler: Any) -> StreamConsumer:
        return StreamConsumer(
            standalone, stream=stream, group="g", consumer="c-p0", handler=handler,
            block_ms=0, event_id_field="event_id",
        )  # fmt: skip

    first = consumer(dies_after_the_email).run_once()
    assert [r.status for r in first] == [EntryStatus.FAILED]
    assert emails.read_text().splitlines() == ["welcome user 3 (event evt-1)"]
    again = consumer(handle).run_once()  # the same name: its pending entry comes again
    assert [(r.status, r.deliveries) for r in again] == [(EntryStatus.APPLIED, 2)]
    assert emails.read_text().splitlines() == ["welcome user 3 (event evt-1)"]
    assert standalone.hgetall(service.user_key(3)) == {b"name": b"Ada", b"updates": b"1"}
