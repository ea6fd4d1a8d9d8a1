"""``onceonly doctor URL --stream S --group G`` against real servers: the group's state.

A real ``StreamConsumer`` makes the group, applies entries and dead-letters a
failing one (so the doctor's default dead-letter name is checked against the
consumer's); plain ``XREADGROUP`` leaves entries pending on another consumer.
The printed report is parsed; exit codes follow the doctor's rule (1 for a
warning, 2 for an error or a usage error).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from test_doctor import doctor, table

import redis_harness as harness
from onceonly.cli import main
from onceonly.doctor_stream import STREAM_ACL_COMMANDS
from onceonly.streams import EntryStatus, StreamConsumer, StreamEntry
from onceonly.streams.config import CONSUMER_ACL_COMMANDS
from testkit import RedisFarm

GROUP = "profiles"
STREAM_ROWS = ("stream", "group", "lag", "pending", "dead-letters")
# What the doctor's own checks send, for an ACL user: the probe's script and
# commands (EVALSHA, EVAL, GET, SET, DEL, TIME inside it) and PING.
PROBE_COMMANDS = ("EVALSHA", "EVAL", "GET", "SET", "DEL", "TIME", "PING")


def _tag() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _client(topology: str, engine: harness.Engine, farm: RedisFarm) -> tuple[Any, str, list[str]]:
    """A client of the topology's server, the doctor's URL and flags for it."""
    if topology == "standalone":
        port = farm.standalone(engine).port
        return redis.Redis(host=harness.HOST, port=port), f"redis://{harness.HOST}:{port}", []
    if topology == "cluster":
        port = farm.cluster(engine).nodes[0].port
        url = f"redis://{harness.HOST}:{port}"
        return redis.RedisCluster(host=harness.HOST, port=port), url, ["--cluster"]
    sentinels = farm.sentinel(engine)
    master = redis.Sentinel(sentinels.addresses(), socket_timeout=5).master_for(
        harness.SERVICE, socket_timeout=5
    )
    return master, sentinels.url(), []


def _make_group(client: Any, stream: str) -> list[str]:
    """Five entries; a consumer applies e0, dead-letters e1; c2 holds e2, e3 unacknowledged.

    Leaves: 2 consumers (c1, c2), 2 pending (on c2), last delivered e3, lag 1,
    one dead letter in the consumer's default dead-letter stream.
    """
    ids = [client.xadd(stream, {"n": str(i), "bad": str(int(i == 1))}).decode() for i in range(5)]

    def handler(entry: StreamEntry) -> None:
        if entry.fields["bad"] == "1":
            raise ValueError("bad entry")

    def consumer() -> StreamConsumer:
        return StreamConsumer(
            client, stream=stream, group=GROUP, handler=handler, consumer="c1", block_ms=0,
            batch_size=2, max_deliveries=1,
        )  # fmt: skip

    assert [r.status for r in consumer().run_once()] == [EntryStatus.APPLIED, EntryStatus.FAILED]
    # Restarted under its name, it drains its pending entry: delivery 2 > max_deliveries.
    assert [r.status for r in consumer().run_once()] == [EntryStatus.DEAD]
    client.xreadgroup(GROUP, "c2", {stream: ">"}, count=2)
    return ids


def _stream_rows(out: str) -> dict[str, tuple[str, str]]:
    rows = table(out)
    return {name: rows[name] for name in STREAM_ROWS if name in rows}


def _owner(engine: harness.Engine, farm: RedisFarm, stream: str) -> str:
    """The cluster primary that serves ``stream`` (the others answer MOVED)."""
    for node in farm.cluster(engine).primaries():
        with node.client() as plain:
            try:
                plain.xlen(stream)
            except redis.ResponseError:
                continue
            return f"{harness.HOST}:{node.port}"
    raise AssertionError(f"no primary serves {stream}")


@pytest.mark.parametrize("topology", ["standalone", "cluster", "sentinel"])
def test_the_groups_pending_lag_consumers_and_dead_letters(
    capsys: pytest.CaptureFixture[str],
    topology: str,
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
) -> None:
    client, url, flags = _client(topology, redis_engine, redis_farm)
    stream = f"{{{_tag()}}}:events"
    try:
        ids = _make_group(client, stream)
        code, statuses, out = doctor(capsys, url, *flags, "--stream", stream, "--group", GROUP)
    finally:
        client.close()
    dead = f"{stream}:{GROUP}:dead"  # the consumer's rule: the stream has a hash tag
    assert code == 1  # the dead letter is the one warning
    assert [s for s in statuses.values() if s != "ok"] == ["warning"]
    rows = _stream_rows(out)
    where = f" (on {_owner(redis_engine, redis_farm, stream)})" if topology == "cluster" else ""
    assert rows["stream"] == ("ok", f"{stream}: 5 entries{where}")
    assert rows["group"] == ("ok", f"{GROUP}: 2 consumers, last delivered {ids[3]}")
    assert rows["lag"] == ("ok", "1 entry not yet delivered to the group")
    status, reason = rows["pending"]
    assert status == "ok"
    assert reason.startswith("2 entries on 1 consumer (c2 2); longest idle ")
    assert reason.endswith(f" ({ids[2]} on c2), most deliveries 1")
    assert rows["dead-letters"] == (
        "warning",
        f"{dead}: 1 entry, events not applied after max_deliveries (read them with XRANGE; "
        "each holds the entry's fields, deliveries and last error)",
    )
    assert out.splitlines()[-1] == "1 warning: exit 1"


def test_a_missing_group_or_stream_is_a_warning_that_says_how_to_make_it(
    capsys: pytest.CaptureFixture[str], redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    url = f"redis://{harness.HOST}:{server.port}"
    stream = f"{_tag()}-events"  # no hash tag: the dead letters go to {stream}:group:dead
    code, _, out = doctor(capsys, url, "--stream", stream, "--group", "g")
    assert code == 1
    rows = _stream_rows(out)
    assert rows == {
        "stream": ("warning", f"no stream {stream}"),
        "group": (
            "warning",
            f"no group 'g' (no stream): a StreamConsumer creates it (with the stream) on its "
            f"first pass, or run XGROUP CREATE {stream} g 0 MKSTREAM",
        ),
        "dead-letters": ("ok", f"{{{stream}}}:g:dead: none"),
    }
    assert out.splitlines()[-1] == "2 warnings: exit 1"

    with server.client() as admin:
        admin.xadd(stream, {"n": "1"})
        admin.xgroup_create(stream, "other", id="0")
        code, _, out = doctor(capsys, url, "--stream", stream, "--group", "g")
        admin.delete(stream)
    assert code == 1
    assert _stream_rows(out)["group"] == (
        "warning",
        f"stream {stream} has no group 'g': a StreamConsumer creates it (with the stream) "
        f"on its first pass, or run XGROUP CREATE {stream} g 0 MKSTREAM",
    )
    assert "lag" not in _stream_rows(out)


def test_lag_unknown_after_a_deletion_and_stale_pending_entries_are_warnings(
    capsys: pytest.CaptureFixture[str], redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    url = f"redis://{harness.HOST}:{server.port}"
    stream = f"{{{_tag()}}}:events"
    dead = "elsewhere:dead"
    with server.client() as admin:
        ids = [admin.xadd(stream, {"n": str(i)}).decode() for i in range(4)]
        admin.xgroup_create(stream, GROUP, id="0")
        admin.xreadgroup(GROUP, "gone", {stream: ">"}, count=2)
        admin.xdel(stream, ids[3])  # past the last delivered id: the lag is unknown now
        admin.xadd(dead, {"n": "1"})
        # Idle at least 3 x --min-idle-ms (1 ms): poll the server, no timing assumed.
        while min(r["time_since_delivered"] for r in admin.xpending_range(
            stream, GROUP, "-", "+", 10
        )) < 3:  # fmt: skip
            time.sleep(0.005)
        flags = ["--stream", stream, "--group", GROUP, "--dead-letters", dead]
        code, _, out = doctor(capsys, url, *flags, "--min-idle-ms", "1")
        assert code == 1
        rows = _stream_rows(out)
        assert rows["lag"] == (
            "warning",
            "unknown: entries were deleted (XDEL) or trimmed (XTRIM) after the group's last "
            "delivered id, so the server cannot count the unread ones; it knows again once "
            "the group has read past them",
        )
        status, reason = rows["pending"]
        assert status == "warning"
        assert reason.startswith("2 entries on 1 consumer (gone 2); longest idle ")
        assert reason.endswith(
            "; idle over 3 x min_idle_ms (3 ms): no consumer is reclaiming them (none running, "
            "or their min_idle_ms is None or larger; see --min-idle-ms)"
        )
        assert rows["dead-letters"][0] == "warning"
        assert rows["dead-letters"][1].startswith(f"{dead}: 1 entry, ")

        # The consumers' default min_idle_ms (60 s): the same entries are not stale yet.
        code, _, out = doctor(capsys, url, *flags)
        assert _stream_rows(out)["pending"][0] == "ok"
        admin.delete(stream, dead)


def _rule(user: str, pattern: str, commands: tuple[str, ...]) -> str:
    allowed = " ".join("+" + c.lower() for c in commands)
    return f"user {user} on >pw-{user} ~{pattern} resetchannels -@all {allowed}"


@pytest.fixture
def acl_server(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A server whose users have the probe's and ``STREAM_ACL_COMMANDS`` (or one fewer)."""
    t = _tag()
    full = (*PROBE_COMMANDS, *STREAM_ACL_COMMANDS)
    rules = [
        _rule("doctor", f"{{{t}}}:*", full),
        _rule("noxpending", f"{{{t}}}:*", tuple(c for c in full if c != "XPENDING")),
        _rule("noxinfo", f"{{{t}}}:*", tuple(c for c in full if c != "XINFO|GROUPS")),
    ]
    server = harness.standalone(
        redis_engine, tmp_path / "acl", extra=["user default on nopass ~* &* +@all", *rules]
    )
    try:
        yield server.port, t
    finally:
        server.stop()


def test_an_acl_user_with_the_documented_commands_sees_the_group(
    capsys: pytest.CaptureFixture[str], acl_server: tuple[int, str]
) -> None:
    port, t = acl_server
    stream = f"{{{t}}}:events"
    with redis.Redis(host=harness.HOST, port=port) as admin:
        ids = _make_group(admin, stream)

    def run(user: str) -> tuple[int, dict[str, tuple[str, str]]]:
        url = f"redis://{user}:pw-{user}@{harness.HOST}:{port}"
        flags = ["--prefix", f"{{{t}}}", "--stream", stream, "--group", GROUP]
        code, _, out = doctor(capsys, url, *flags)
        assert f"pw-{user}" not in out
        return code, _stream_rows(out)

    code, rows = run("doctor")
    assert code == 1  # the dead letter (INFO and CONFIG refused are unknowns)
    assert rows["group"] == ("ok", f"{GROUP}: 2 consumers, last delivered {ids[3]}")
    assert rows["pending"][0] == "ok"
    assert rows["dead-letters"][0] == "warning"

    _, rows = run("noxpending")
    assert rows["group"][0] == "ok"
    status, reason = rows["pending"]
    assert status == "unknown"
    assert reason.startswith("2 entries; XPENDING failed: ")
    assert "xpending" in reason.lower()

    _, rows = run("noxinfo")
    assert rows["stream"] == ("ok", f"{stream}: 5 entries")
    status, reason = rows["group"]
    assert status == "unknown"
    assert reason.startswith("XINFO GROUPS failed: ")
    assert "lag" not in rows
    assert "pending" not in rows


def test_the_documented_commands_are_what_a_consumer_already_has() -> None:
    # A consumer's ACL user can run the doctor on its stream, but for XLEN.
    assert set(STREAM_ACL_COMMANDS) - set(CONSUMER_ACL_COMMANDS) == {"XLEN"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stream", "s"], "--stream needs --group: give both, or neither"),
        (["--group", "g"], "--group needs --stream: give both, or neither"),
        (
            ["--dead-letters", "d"],
            "--dead-letters and --min-idle-ms need --stream STREAM --group GROUP",
        ),
        (
            ["--stream", "s", "--group", "a:b"],
            "group must not contain ':' (it is part of the dedup keys), got 'a:b'",
        ),
    ],
)
def test_stream_options_alone_are_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    url = f"redis://{harness.HOST}:{harness.free_port()}"  # never reached
    assert main(["doctor", url, *argv]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"onceonly: {message}\n")
