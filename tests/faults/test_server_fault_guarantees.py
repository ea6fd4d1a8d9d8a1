"""Server faults through the fault lab: what holds by design when the server dies or freezes.

Real servers (Redis / Valkey started by the harness, moto's server in its own
process), real worker processes. Only the guarantees that follow from the
design are asserted; how many calls the fault cost is the runner's figure.

- ``appendfsync always``: Redis fsyncs a write before it replies (to the
  writer or to any reader), so a SIGKILL loses nothing a caller was told.
  (A killed process leaves the kernel's page cache behind, so ``everysec``
  mostly passes this too; but while a background fsync runs, Redis holds
  its AOF buffer back for up to two seconds, and a kill then loses writes
  it had acknowledged: the runner has seen it on ``redis-wait1``.)
- A clean shutdown (SIGTERM) writes the AOF out, so with the workers held
  still meanwhile, every claim and result outlives the restart.
- A frozen server makes a call fail closed within the client's timeouts,
  and the same client works once the server goes on.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import redis_harness as harness
from faultlab.driver import Fleet
from faultlab.lab import Lab, provision
from faultlab.ledger import Ledger, Tally, read_events
from faultlab.scenarios import Params, wait_for
from faultlab.server_faults import (
    DELIVERIES,
    await_share,
    conclude,
    load,
    server_sigkill,
)
from faultlab.targets import Caller

KEYS = 60
WORKERS = 2


def finals(events: list[dict[str, Any]]) -> dict[str, str]:
    """Each key's nonce as the check phase replayed it."""
    return {ev["k"]: ev["n"] for ev in events if ev["src"] == "check" and ev["e"] == "got"}


def acknowledged(events: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    """The calls whose own result the store acknowledged storing."""
    return [ev for ev in events if ev["e"] == "got" and ev["own"] and ev["ack"]]


def assert_nothing_acknowledged_was_lost(folder: Path, out: Tally) -> None:
    """Every acknowledged own result and every replay is what the key replays at the end."""
    events = read_events(folder)
    final = finals(events)
    assert len(final) == out.keys
    assert out.unresolved == 0
    acked = acknowledged(events)
    assert acked, "no call's result was acknowledged: the run proves nothing"
    assert [ev["k"] for ev in acked if ev["n"] != final[ev["k"]]] == []
    replays = [ev for ev in events if ev["e"] == "got" and not ev["own"]]
    assert [ev["k"] for ev in replays if ev["n"] != final[ev["k"]]] == []
    assert out.stale_replays == 0


@pytest.fixture
def always(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[Lab]:
    with provision("onceonly/redis-aof-always", tmp_path, redis_engine) as lab:
        yield lab


def test_a_sigkilled_always_server_loses_no_acknowledged_outcome(always: Lab) -> None:
    out = server_sigkill(always, Params(seed=7, keys=KEYS, workers=WORKERS, heal_cap_s=15))

    assert_nothing_acknowledged_was_lost(always.folder / "ledger", out)
    # A body whose completion the dead server could not take may run again
    # (its claim holds until the lease ends): never more often than that.
    assert out.duplicates <= out.notes["unacked"] + out.notes["store_errors_after_body"]


# -- a clean shutdown with the workers held still ---------------------------------------------


def test_a_clean_shutdown_and_restart_on_everysec_runs_nothing_twice(
    redis_engine: harness.Engine, tmp_path: Path
) -> None:
    # A lease and a retry budget far longer than the restart: a worker held
    # mid-call resumes with its claim alive and its call still within budget.
    with provision(
        "onceonly/redis-aof-everysec",
        tmp_path,
        redis_engine,
        lease_ms=60_000,
        socket_timeout_s=30.0,
    ) as lab:
        assert lab.server is not None
        folder = lab.folder / "ledger"
        fleet, keys = load(lab, Params(keys=KEYS, workers=WORKERS), folder)
        try:
            await_share(fleet, folder, len(keys) * DELIVERIES, 0.3)
            hold(fleet, signal.SIGSTOP)
            wait_for(lambda: all(held(fleet, i) for i in fleet.procs), "the workers to stop")
            lab.server.kill(signal.SIGTERM)  # a clean shutdown: the AOF is written out
            lab.server.start()  # same folder and port: reloads the AOF
            hold(fleet, signal.SIGCONT)
            fleet.wait(120)
        finally:
            fleet.terminate()
        out = conclude(lab, folder, keys, cap_s=15)

    assert_nothing_acknowledged_was_lost(folder, out)
    assert (out.duplicates, out.lost_outcomes, out.failed_closed) == (0, 0, 0)
    assert out.notes["unacked"] == 0
    assert out.executions == KEYS


def hold(fleet: Fleet, sig: int) -> None:
    for index in fleet.procs:
        fleet.signal(index, sig)


def held(fleet: Fleet, index: int) -> bool:
    """Whether the worker is stopped, or already done."""
    return fleet.procs[index].poll() is not None or fleet.stopped(index)


# -- a frozen server ----------------------------------------------------------------------


def frozen_bound_s(lab: Lab, attempts: int, backoff_s: float) -> float:
    """The longest a call may take to fail on a store that does not answer.

    Args:
        attempts: The client's attempts at one store call; each may wait out
            a connect and a read timeout (``Target.socket_timeout_s`` both).
        backoff_s: The longest the client's pauses between attempts add up to.

    Returns:
        That, and a second's margin for a busy machine.
    """
    return attempts * 2 * lab.target.socket_timeout_s + backoff_s + 1.0


class Frozen:
    """The lab's server process stopped (SIGSTOP) until the block ends (SIGCONT)."""

    def __init__(self, lab: Lab) -> None:
        self.pid = lab.pid()

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def assert_frozen_calls_fail_closed_and_the_client_recovers(
    lab: Lab, bound_s: float, calls: int
) -> None:
    """Calls on the frozen server raise a store error within ``bound_s``; no body runs."""
    folder = lab.folder / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    caller = Caller(lab.target, Ledger(folder / "test.jsonl", "test"))
    before = caller.call("warm", phase="load")
    assert before.own
    assert before.nonce is not None

    with Frozen(lab):
        outcomes = [caller.call(f"frozen-{i}", phase="load") for i in range(calls)]

    for outcome in outcomes:
        assert (outcome.nonce, outcome.error) == (None, "store")
        assert outcome.elapsed_ms <= bound_s * 1000
    # Failed closed: no body ran for a call that got a store error.
    assert [ev["k"] for ev in read_events(folder) if ev["e"] == "run"] == ["warm"]
    # The same client, once the server goes on: an old key replays, new keys run and replay.
    assert caller.call("warm", phase="check").nonce == before.nonce
    fresh = caller.call("after", phase="check")
    assert fresh.own
    assert fresh.nonce is not None
    again = caller.call("after", phase="check")
    assert (again.own, again.nonce) == (False, fresh.nonce)
    caller.ledger.close()


def test_a_frozen_redis_server_fails_calls_closed_and_the_client_recovers(
    redis_engine: harness.Engine, tmp_path: Path
) -> None:
    with provision("onceonly/redis-aof-everysec", tmp_path, redis_engine) as lab:
        # onceonly's bounded retry: a call that timed out has spent its budget (the
        # socket timeout) and is not sent again; a connection error first may
        # be retried once within it, after a pause of at most a second.
        bound_s = frozen_bound_s(lab, attempts=2, backoff_s=1.0)
        # Two calls: the second on a connection made while the server is frozen.
        assert_frozen_calls_fail_closed_and_the_client_recovers(lab, bound_s, calls=2)


def test_a_frozen_dynamodb_server_fails_calls_closed_and_the_client_recovers(
    tmp_path: Path,
) -> None:
    engine = harness.engines_or_fail()[0]  # provision's signature; moto needs no Redis
    with provision("onceonly/dynamodb", tmp_path, engine) as lab:
        # botocore's standard retry mode, as faultlab.targets configures it: 3
        # attempts, pausing up to 1 s and then up to 2 s between them.
        bound_s = frozen_bound_s(lab, attempts=3, backoff_s=3.0)
        assert_frozen_calls_fail_closed_and_the_client_recovers(lab, bound_s, calls=1)
