"""``onceonly doctor`` against real Redis / Valkey servers (no mocks, no fakes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

import redis_harness as harness
from onceonly.cli import main

CHECKS = "connection server topology maxmemory-policy persistence replication scripts probe latency"
ALL_OK = dict.fromkeys(CHECKS.split(), "ok")


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    """Run ``onceonly doctor``; return the exit code, {check: status} and the whole output."""
    code = main(["doctor", *argv])
    out = capsys.readouterr().out
    return code, {name: status for name, (status, _) in table(out).items()}, out


def table(out: str) -> dict[str, tuple[str, str]]:
    """The report's rows: {check: (status, reason)}, between the header and the verdict."""
    lines = out.splitlines()
    assert lines[1] == ""
    rows = {}
    for line in lines[2 : lines.index("", 2)]:
        name, status, reason = line.split(maxsplit=2)
        rows[name] = (status, reason)
    return rows


def product(engine: harness.Engine) -> str:
    return f"{'Valkey' if engine.name == 'valkey' else 'Redis'} {engine.version}"


def leftovers(clients: list[redis.Redis], prefix: str = "onceonly") -> list[Any]:
    """Probe keys left on any of these servers."""
    found: list[Any] = []
    for client in clients:
        with client:
            found += client.scan_iter(match=f"{prefix}:doctor:*")
    return found


def test_farm_standalone_is_all_ok_and_leaves_no_probe_key(
    capsys: pytest.CaptureFixture[str], redis_farm: Any, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    code, statuses, out = doctor(capsys, f"redis://127.0.0.1:{server.port}/0")
    assert (code, statuses) == (0, ALL_OK)
    rows = table(out)
    assert rows["server"] == ("ok", product(redis_engine))
    assert rows["topology"] == ("ok", f"standalone server at 127.0.0.1:{server.port}, role master")
    assert rows["maxmemory-policy"] == (
        "ok",
        "noeviction: a full server refuses writes, it evicts nothing",
    )
    assert rows["persistence"] == ("ok", "appendonly yes, appendfsync everysec")
    assert rows["replication"] == (
        "ok",
        "role master, no replicas, min-replicas-to-write 0: nothing to fail over to",
    )
    assert rows["probe"][1].startswith("claim, complete, replay, delete, claim, release on ")
    assert out.splitlines()[0] == (
        f"onceonly doctor: redis://127.0.0.1:{server.port}/0 (prefix onceonly)"
    )
    assert out.splitlines()[-1] == "all ok: exit 0"
    assert leftovers([server.client()]) == []


def test_eviction_and_no_aof_are_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_engine: harness.Engine
) -> None:
    server = harness.standalone(
        redis_engine, tmp_path / "lru", aof=False, extra=["maxmemory-policy allkeys-lru"]
    )
    with harness.stopped_at_exit(server):
        code, statuses, out = doctor(capsys, f"redis://127.0.0.1:{server.port}")
        assert code == 1
        assert statuses == {**ALL_OK, "maxmemory-policy": "warning", "persistence": "warning"}
        rows = table(out)
        assert rows["maxmemory-policy"][1] == (
            "allkeys-lru: under memory pressure live claims and results can be evicted "
            "and a duplicate then runs again; set noeviction"
        )
        assert rows["persistence"][1] == (
            "appendonly no (and RDB snapshots are off): a restart loses every claim written "
            "since the last RDB snapshot, and duplicates then run again"
        )
        assert out.splitlines()[-1] == "2 warnings: exit 1"
        assert leftovers([server.client()]) == []


def test_acl_user_of_another_prefix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_engine: harness.Engine
) -> None:
    server, user, password = harness.acl_server(redis_engine, tmp_path / "acl", "someprefix")
    url = f"redis://{user}:{password}@127.0.0.1:{server.port}"
    unknown = {"maxmemory-policy": "unknown", "persistence": "unknown", "replication": "unknown"}
    with harness.stopped_at_exit(server):
        code, statuses, out = doctor(capsys, url)
        assert code == 2
        assert statuses == {**ALL_OK, **unknown, "scripts": "error", "probe": "error"}
        rows = table(out)
        # HELLO answers where INFO is refused.
        assert rows["server"] == ("ok", product(redis_engine))
        assert rows["maxmemory-policy"][1].startswith("INFO refused: ")
        assert "; CONFIG refused: " in rows["maxmemory-policy"][1]
        assert rows["probe"][1].startswith("claim on onceonly:doctor:")
        assert "Redis refused the command" in rows["probe"][1]
        assert password not in out
        assert f"redis://{user}:***@127.0.0.1:{server.port}" in out

        code, statuses, out = doctor(capsys, url, "--prefix", "someprefix")
        assert (code, statuses) == (0, {**ALL_OK, **unknown})
        assert table(out)["probe"][1].startswith("claim, complete, replay, delete, claim, ")
        assert password not in out
        assert leftovers([server.client()], "someprefix") == []
        assert leftovers([server.client()]) == []


def test_cluster_reports_three_primaries(
    capsys: pytest.CaptureFixture[str], redis_farm: Any, redis_engine: harness.Engine
) -> None:
    cluster = redis_farm.cluster(redis_engine)
    url = f"redis://127.0.0.1:{cluster.nodes[0].port}"
    code, statuses, out = doctor(capsys, url, "--cluster")
    assert (code, statuses) == (0, ALL_OK)
    assert table(out)["topology"] == ("ok", "cluster with 3 primaries")
    assert leftovers([node.client() for node in cluster.nodes]) == []


def test_cluster_node_without_cluster_flag_is_an_error(
    capsys: pytest.CaptureFixture[str], redis_farm: Any, redis_engine: harness.Engine
) -> None:
    primary = redis_farm.cluster(redis_engine).primaries()[0]
    code, _, out = doctor(capsys, f"redis://127.0.0.1:{primary.port}")
    assert code == 2
    assert table(out)["topology"] == ("error", "this node runs in cluster mode: pass --cluster")


def test_closed_port_is_a_connection_error(capsys: pytest.CaptureFixture[str]) -> None:
    port = harness.free_port()
    code, statuses, out = doctor(capsys, f"redis://127.0.0.1:{port}", "--timeout", "1")
    assert (code, statuses) == (2, {"connection": "error"})
    assert table(out)["connection"][1] == (
        f"ConnectionError: Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    )
    assert out.splitlines()[-1] == "1 error: exit 2"


def test_sentinel_managed_primary(
    capsys: pytest.CaptureFixture[str], redis_farm: Any, redis_engine: harness.Engine
) -> None:
    sentinels = redis_farm.sentinel(redis_engine)
    host, port = sentinels.master_address()
    code, statuses, out = doctor(capsys, sentinels.url())
    assert (code, statuses) == (0, ALL_OK)
    rows = table(out)
    assert rows["topology"] == (
        "ok",
        f"sentinel-managed primary '{harness.SERVICE}' at {host}:{port}, role master",
    )
    assert "replication is asynchronous" in rows["replication"][1]
    assert leftovers([sentinels.server_at(port).client()]) == []


def test_replica_is_an_error(
    capsys: pytest.CaptureFixture[str], redis_farm: Any, redis_engine: harness.Engine
) -> None:
    sentinels = redis_farm.sentinel(redis_engine)
    primary_port = sentinels.master_address()[1]
    replica = next(s for s in [sentinels.primary, *sentinels.replicas] if s.port != primary_port)
    code, statuses, out = doctor(capsys, f"redis://127.0.0.1:{replica.port}")
    assert code == 2
    assert (statuses["topology"], statuses["replication"], statuses["probe"]) == (
        "error",
        "error",
        "error",
    )
    assert table(out)["replication"] == ("error", "role slave: a replica refuses writes")


def test_tls_with_client_certificates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tls_engine: harness.Engine
) -> None:
    server, certs = harness.tls_server(tls_engine, tmp_path / "tls")
    url = f"rediss://127.0.0.1:{server.port}"
    client_cert = ["--certfile", str(certs.client_cert), "--keyfile", str(certs.client_key)]
    with harness.stopped_at_exit(server):
        # The TLS server runs without AOF: persistence is the one warning.
        code, statuses, _ = doctor(capsys, url, "--ca-certs", str(certs.ca_cert), *client_cert)
        assert (code, statuses) == (1, {**ALL_OK, "persistence": "warning"})
        code, statuses, _ = doctor(capsys, url, "--insecure", *client_cert)
        assert (code, statuses) == (1, {**ALL_OK, "persistence": "warning"})
        # Without a client certificate the server refuses the handshake.
        code, statuses, _ = doctor(capsys, url, "--ca-certs", str(certs.ca_cert))
        assert (code, statuses) == (2, {"connection": "error"})
        # TLS options on a plain URL are an error line, not a traceback.
        code, statuses, out = doctor(capsys, f"redis://127.0.0.1:{server.port}", *client_cert)
        assert (code, table(out)) == (
            2,
            {"connection": ("error", "TLS options need a rediss:// or rediss+sentinel:// URL")},
        )


def test_the_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    # The password doubles as an unresolvable host name, so redis-py's error repeats it.
    secret = "doctor-secret.invalid"
    url = f"redis://user:{secret}@{secret}:6379/0?password={secret}"
    code, statuses, out = doctor(capsys, url, "--timeout", "1")
    assert (code, statuses) == (2, {"connection": "error"})
    reason = table(out)["connection"][1]
    assert secret not in reason
    assert "***" in reason
    # The header masks the password where it is one (the host stays), and the query.
    assert out.splitlines()[0] == (
        f"onceonly doctor: redis://user:***@{secret}:6379/0?*** (prefix onceonly)"
    )
