"""``onceonly bench`` end to end: real servers, its table parsed, its keys gone afterwards."""

from __future__ import annotations

import math
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis

import redis_harness as harness
from dynamodb_harness import CREDENTIALS, REGION, MotoServer
from onceonly.bench import (
    ASYNC,
    DUPLICATE,
    FIRST,
    READ,
    WARM_UP,
    BenchOptions,
    Measure,
    percentile,
)
from onceonly.cli import main
from onceonly.errors import IdempotencyConfigError

FAST = ["--seconds", "0.3", "--concurrency", "8", "--payload-bytes", "64"]


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parse(out: str) -> tuple[dict[str, tuple[int, float, float, float]], int, str]:
    """The table's rows {phase: (calls, p50, p99, per second)}, records deleted, the prefix."""
    lines = out.splitlines()
    assert lines[0].startswith("onceonly bench: ")
    assert lines[1] == ""
    assert lines[2].split() == ["calls", "p50", "us", "p99", "us", "per", "second"]
    rows = {}
    for line in lines[3:]:
        if not line:
            break
        name, figures = line[:34].strip(), line[34:].split()
        calls, p50, p99, rate = figures
        rows[name] = (int(calls), _number(p50), _number(p99), float(rate))
    words = lines[-1].split()
    assert words[0] == "deleted"
    assert words[2:4] == ["records", "under"]
    return rows, int(words[1]), words[4]


def _number(text: str) -> float:
    return math.nan if text == "-" else float(text)


def check_table(out: str) -> tuple[dict[str, tuple[int, float, float, float]], int, str]:
    rows, deleted, prefix = parse(out)
    assert list(rows) == [READ, FIRST, DUPLICATE, f"{ASYNC} x8"]
    for name in (READ, FIRST, DUPLICATE):
        calls, p50, p99, rate = rows[name]
        assert calls > 0, name
        assert 0 < p50 <= p99, name
        assert rate > 0, name
    calls, p50, p99, rate = rows[f"{ASYNC} x8"]
    assert calls > 0
    assert rate > 0
    assert math.isnan(p50)
    assert math.isnan(p99)
    # Every first execution and async execution (and the async warm-up) wrote one record.
    assert deleted == rows[FIRST][0] + calls + WARM_UP
    assert prefix.startswith("onceonly-bench-")
    assert "p50 / one read's p50: first execution " in out
    return rows, deleted, prefix


def leftovers(clients: list[Any], prefix: str) -> list[Any]:
    found: list[Any] = []
    for client in clients:
        found += list(client.scan_iter(match=f"*{prefix}*"))
    return found


@pytest.mark.parametrize("topology", ["standalone", "cluster", "sentinel"])
def test_redis_topologies(
    capsys: pytest.CaptureFixture[str],
    redis_farm: Any,
    redis_engine: harness.Engine,
    topology: str,
) -> None:
    if topology == "standalone":
        server = redis_farm.standalone(redis_engine)
        argv, clients = [f"redis://127.0.0.1:{server.port}"], [server.client()]
    elif topology == "cluster":
        cluster = redis_farm.cluster(redis_engine)
        argv = [f"redis://127.0.0.1:{cluster.nodes[0].port}", "--cluster"]
        clients = [node.client() for node in cluster.nodes]
    else:
        sentinels = redis_farm.sentinel(redis_engine)
        host, port = sentinels.master_address()
        argv, clients = [sentinels.url()], [redis.Redis(host=host, port=port)]
    code, out, err = bench(capsys, *argv, *FAST)
    assert code == 0, err
    _, deleted, prefix = check_table(out)
    assert deleted > WARM_UP
    assert leftovers(clients, prefix) == []
    # Not a terminal here: one line per phase on stderr, no bar.
    assert err.splitlines() == [
        f"onceonly bench: {phase}..."
        for phase in (READ, FIRST, DUPLICATE, ASYNC, "deleting the run's records")
    ]
    for client in clients:
        client.close()


def test_an_acl_user_of_one_prefix_can_run_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_engine: harness.Engine
) -> None:
    # The user may touch only mine:* and run only the store's commands (no INFO:
    # the eviction check is then unknown, not refused): every key the run
    # writes, reads and deletes is under the store's prefix.
    server, user, password = harness.acl_server(redis_engine, tmp_path / "acl", "mine")
    with harness.stopped_at_exit(server):
        url = f"redis://{user}:{password}@127.0.0.1:{server.port}"
        code, out, err = bench(capsys, url, "--prefix", "mine", *FAST)
        assert code == 0, err
        _, _, prefix = check_table(out)
        assert password not in out + err
        assert f"redis://{user}:***@127.0.0.1:{server.port} (RedisStore)" in out
        client = server.client()
        assert leftovers([client], prefix) == []
        assert client.dbsize() == 0
        client.close()


def test_an_evicting_server_is_refused_unless_forced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_engine: harness.Engine
) -> None:
    server = harness.standalone(
        redis_engine, tmp_path / "lru", aof=False, extra=["maxmemory-policy allkeys-lru"]
    )
    with harness.stopped_at_exit(server):
        client = server.client()
        url = f"redis://127.0.0.1:{server.port}"
        code, out, err = bench(capsys, url, *FAST)
        assert (code, out) == (2, "")
        assert err == (
            "onceonly: maxmemory-policy allkeys-lru may evict records under memory pressure, "
            "and the figures would not be the ones of a safe setup: set noeviction, or pass "
            "--force to run anyway\n"
        )
        assert client.dbsize() == 0  # refused before anything was written

        code, out, err = bench(capsys, url, "--force", *FAST)
        assert code == 0, err
        _, _, prefix = check_table(out)
        assert "note: run with --force: maxmemory-policy allkeys-lru" in out.splitlines()
        assert leftovers([client], prefix) == []
        client.close()


def test_sqlite_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bench.sqlite3"
    code, out, err = bench(capsys, str(path), *FAST)
    assert code == 0, err
    check_table(out)
    assert out.splitlines()[0].startswith(f"onceonly bench: {path} (SQLiteStore); 0.3 s per phase")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM onceonly").fetchone() == (0,)


def test_dynamodb_table(
    capsys: pytest.CaptureFixture[str], moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    client = moto_server.shared_client
    table = moto_server.fresh_table(client)
    url = f"dynamodb://{table}?region={REGION}&endpoint_url={moto_server.url}"
    code, out, err = bench(capsys, url, *FAST)
    assert code == 0, err
    check_table(out)
    assert client.scan(TableName=table)["Count"] == 0


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # A port bound and never listened on: connections are refused, and no
    # other process can take the port meanwhile.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        code, out, err = bench(capsys, f"redis://127.0.0.1:{port}", *FAST)
    assert (code, out) == (2, "")
    assert err.startswith("onceonly: cannot reach Redis: ")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--seconds", "0"], "argument --seconds: must be more than 0"),
        (["--concurrency", "0"], "argument --concurrency: must be at least 1"),
        (["--payload-bytes", "-1"], "argument --payload-bytes: must be at least 0"),
    ],
)
def test_bad_arguments_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "x.sqlite3", *argv])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(says)


def test_unknown_scheme_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = bench(capsys, "foo://x", *FAST)
    assert (code, out) == (2, "")
    assert err.startswith("onceonly: unknown store URL scheme 'foo'")


@pytest.mark.parametrize(
    "options",
    [
        {"seconds": 0},
        {"seconds": True},
        {"seconds": 601},
        {"concurrency": 0},
        {"concurrency": 2.0},
        {"payload_bytes": -1},
        {"payload_bytes": (1 << 20) + 1},
        {"force": 1},
    ],
)
def test_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(IdempotencyConfigError):
        BenchOptions(**options)


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(n) for n in range(1, 101)]
    assert (percentile(ordered, 0.5), percentile(ordered, 0.99), percentile(ordered, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    measure = Measure("m", 4, 2.0, (1.0, 2.0, 3.0, 4.0))
    assert (measure.per_second, measure.p50_us, measure.p99_us) == (2.0, 2.0, 4.0)
