"""The doctor's pure checks, fed plain dicts like the ones INFO, HELLO and CONFIG GET return."""

from __future__ import annotations

import pytest

from onceonly.cli import doctor_options, mask_url, render_doctor
from onceonly.doctor import (
    PROBE_EXPECTED,
    Answers,
    Check,
    NodeAnswers,
    ProbeAnswers,
    Status,
    check_eviction,
    check_latency,
    check_persistence,
    check_probe,
    check_replication,
    check_scripts,
    check_server,
    check_topology,
    exit_code,
    judge,
)
from onceonly.errors import IdempotencyConfigError

EVICTING = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
ACL = "this user has no permissions to run the 'info' command"
NO_CONFIG = "unknown command 'CONFIG'"
TAIL = "a restart loses every claim written since the last RDB snapshot, and duplicates then run"


# -- maxmemory-policy ----------------------------------------------------------


@pytest.mark.parametrize("policy", EVICTING)
def test_every_evicting_policy_is_a_warning(policy: str) -> None:
    want = (
        "warning",
        f"{policy}: under memory pressure live claims and results can be evicted "
        "and a duplicate then runs again; set noeviction",
    )
    assert check_eviction(NodeAnswers(info={"maxmemory_policy": policy})) == want
    # From CONFIG GET where INFO memory does not say.
    assert check_eviction(NodeAnswers(info={}, config={"maxmemory-policy": policy})) == want


def test_noeviction_is_ok() -> None:
    assert check_eviction(NodeAnswers(info={"maxmemory_policy": "noeviction"})) == (
        "ok",
        "noeviction: a full server refuses writes, it evicts nothing",
    )
    assert check_eviction(NodeAnswers(config={"maxmemory-policy": "noeviction"}))[0] == "ok"


def test_info_wins_over_config() -> None:
    node = NodeAnswers(
        info={"maxmemory_policy": "noeviction"}, config={"maxmemory-policy": "allkeys-lru"}
    )
    assert check_eviction(node)[0] == "ok"


def test_missing_policy_is_unknown_with_the_refusals() -> None:
    node = NodeAnswers(refused={"INFO": ACL, "CONFIG": NO_CONFIG})
    assert check_eviction(node) == ("unknown", f"INFO refused: {ACL}; CONFIG refused: {NO_CONFIG}")
    assert check_eviction(NodeAnswers(info={})) == ("unknown", "the server did not say")


def test_unheard_of_policy_is_unknown() -> None:
    assert check_eviction(NodeAnswers(info={"maxmemory_policy": "magic"})) == (
        "unknown",
        "magic: a policy the doctor does not know",
    )


# -- server and version -----------------------------------------------------------


def too_old(product: str, version: str, oldest: str) -> tuple[str, str]:
    return "error", f"{product} {version} is older than {oldest}, the oldest supported"


@pytest.mark.parametrize(
    ("info", "want"),
    [
        ({"redis_version": "7.0.15"}, ("ok", "Redis 7.0.15")),
        ({"redis_version": "6.2.0"}, ("ok", "Redis 6.2.0")),
        ({"redis_version": "8.0.2"}, ("ok", "Redis 8.0.2")),
        ({"redis_version": "6.0.20"}, too_old("Redis", "6.0.20", "6.2")),
        ({"redis_version": "5.0.14"}, too_old("Redis", "5.0.14", "6.2")),
        (
            {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.8"},
            ("ok", "Valkey 8.1.8"),
        ),
        ({"redis_version": "7.2.4", "valkey_version": "7.2.5"}, ("ok", "Valkey 7.2.5")),
        # A Valkey that names itself but has no valkey_version: its redis_version.
        ({"redis_version": "7.2.4", "server_name": "valkey"}, ("ok", "Valkey 7.2.4")),
        ({"redis_version": "7.2.4", "valkey_version": "7.1.0"}, too_old("Valkey", "7.1.0", "7.2")),
        ({"redis_version": "unstable"}, ("unknown", "Redis reports version 'unstable'")),
    ],
)
def test_version_thresholds(info: dict[str, str], want: tuple[str, str]) -> None:
    assert check_server(NodeAnswers(info=info)) == want


def test_hello_stands_in_for_a_refused_info() -> None:
    node = NodeAnswers(hello={"server": "valkey", "version": "8.1.8"}, refused={"INFO": ACL})
    assert check_server(node) == ("ok", "Valkey 8.1.8")
    node = NodeAnswers(hello={"server": "redis", "version": "6.0.9"}, refused={"INFO": ACL})
    assert check_server(node) == too_old("Redis", "6.0.9", "6.2")
    assert check_server(NodeAnswers(refused={"INFO": ACL, "HELLO": "nope"})) == (
        "unknown",
        f"INFO refused: {ACL}; HELLO refused: nope",
    )


# -- persistence ----------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_aof_on_is_ok(fsync: str) -> None:
    node = NodeAnswers(info={"aof_enabled": 1}, config={"appendfsync": fsync})
    assert check_persistence(node) == ("ok", f"appendonly yes, appendfsync {fsync}")


def test_aof_with_appendfsync_no_is_a_warning() -> None:
    node = NodeAnswers(info={"aof_enabled": 1}, config={"appendfsync": "no"})
    assert check_persistence(node) == (
        "warning",
        "appendonly yes, appendfsync no: a crash can lose many seconds of claims",
    )


def test_aof_off_is_a_warning() -> None:
    node = NodeAnswers(info={"aof_enabled": 0}, config={"save": "3600 1 300 100"})
    assert check_persistence(node) == ("warning", f"appendonly no: {TAIL} again")
    node = NodeAnswers(info={"aof_enabled": 0}, config={"save": ""})
    assert check_persistence(node) == (
        "warning",
        f"appendonly no (and RDB snapshots are off): {TAIL} again",
    )


def test_persistence_from_config_alone_and_unknown() -> None:
    node = NodeAnswers(config={"appendonly": "yes", "appendfsync": "everysec"})
    assert check_persistence(node) == ("ok", "appendonly yes, appendfsync everysec")
    assert check_persistence(NodeAnswers(config={"appendonly": "no"}))[0] == "warning"
    # AOF on by INFO, CONFIG refused (ElastiCache): ok, fsync unknown.
    node = NodeAnswers(info={"aof_enabled": 1}, refused={"CONFIG": NO_CONFIG})
    assert check_persistence(node) == (
        "ok",
        f"appendonly yes, appendfsync unknown (CONFIG refused: {NO_CONFIG})",
    )
    node = NodeAnswers(refused={"INFO": ACL, "CONFIG": NO_CONFIG})
    assert check_persistence(node) == (
        "unknown",
        f"INFO refused: {ACL}; CONFIG refused: {NO_CONFIG}",
    )


# -- replication ----------------------------------------------------------------


def test_replication() -> None:
    primary = NodeAnswers(
        info={"role": "master", "connected_slaves": 2}, config={"min-replicas-to-write": "1"}
    )
    assert check_replication(primary) == (
        "ok",
        "role master, 2 replicas, min-replicas-to-write 1; replication is asynchronous, so a "
        "failover can lose an acknowledged claim unless the store uses wait_replicas "
        "(or MemoryDB)",
    )
    one = NodeAnswers(info={"role": "master", "connected_slaves": 1}, config={})
    assert check_replication(one)[1].startswith(
        "role master, 1 replica, min-replicas-to-write unknown (the server did not say); "
    )
    alone = NodeAnswers(
        info={"role": "master", "connected_slaves": 0}, refused={"CONFIG": NO_CONFIG}
    )
    assert check_replication(alone) == (
        "ok",
        f"role master, no replicas, min-replicas-to-write unknown (CONFIG refused: {NO_CONFIG}): "
        "nothing to fail over to",
    )
    assert check_replication(NodeAnswers(info={"role": "slave"})) == (
        "error",
        "role slave: a replica refuses writes",
    )
    # HELLO's role alone does not tell the replicas.
    node = NodeAnswers(hello={"role": "master"}, refused={"INFO": ACL})
    assert check_replication(node) == ("unknown", f"INFO refused: {ACL}")


# -- topology -------------------------------------------------------------------


def standalone(kind: str = "standalone", **node: dict[str, object]) -> Answers:
    return Answers(kind=kind, address="10.0.0.1:6379", nodes=[NodeAnswers(**node)])  # type: ignore[arg-type]


def test_topology_standalone_and_sentinel() -> None:
    answers = standalone(info={"role": "master", "redis_mode": "standalone"})
    assert check_topology(answers) == ("ok", "standalone server at 10.0.0.1:6379, role master")
    sentinel = standalone("sentinel", hello={"role": "master", "mode": "standalone"})
    sentinel.service = "mymaster"
    assert check_topology(sentinel) == (
        "ok",
        "sentinel-managed primary 'mymaster' at 10.0.0.1:6379, role master",
    )
    assert check_topology(standalone(info={"role": "slave"})) == (
        "error",
        "standalone server at 10.0.0.1:6379 is a slave: writes need the primary",
    )
    assert check_topology(standalone(refused={"INFO": ACL, "HELLO": "nope"})) == (
        "unknown",
        f"standalone server at 10.0.0.1:6379; role unknown (INFO refused: {ACL}; "
        "HELLO refused: nope)",
    )


@pytest.mark.parametrize(
    "node",
    [
        {"info": {"role": "master", "cluster_enabled": 1}},
        {"info": {"role": "master", "redis_mode": "cluster"}},
        {"info": {"role": "master", "server_mode": "cluster"}},  # Valkey
        {"hello": {"role": "master", "mode": "cluster"}},
    ],
)
def test_a_cluster_node_without_cluster_is_an_error(node: dict[str, dict[str, object]]) -> None:
    assert check_topology(standalone(**node)) == (
        "error",
        "this node runs in cluster mode: pass --cluster",
    )


def test_a_sentinel_as_a_server_is_an_error() -> None:
    for info in ({"redis_mode": "sentinel"}, {"server_mode": "sentinel"}):
        assert check_topology(standalone(info=info)) == (
            "error",
            "this is a Sentinel: use a redis+sentinel:// URL",
        )


def test_topology_cluster() -> None:
    cluster = Answers(kind="cluster", primaries=3)
    assert check_topology(cluster) == ("ok", "cluster with 3 primaries")


# -- scripts, probe, latency ---------------------------------------------------


def test_probe_as_expected_is_ok() -> None:
    probe = ProbeAnswers(key="p:doctor:1", steps=list(PROBE_EXPECTED))
    assert check_probe(probe) == (
        "ok",
        "claim, complete, replay, delete, claim, release on p:doctor:1",
    )
    assert check_scripts(probe) == ("ok", "the claim script loaded and ran")


def test_probe_surprise_failure_and_cleanup() -> None:
    steps = list(PROBE_EXPECTED)
    steps[2] = ("claim again", "acquired")
    assert check_probe(ProbeAnswers(key="k", steps=steps)) == (
        "error",
        "claim again on k: acquired, expected found COMPLETED",
    )
    assert check_probe(ProbeAnswers(key="k", steps=list(PROBE_EXPECTED[:3]))) == (
        "error",
        "the probe stopped after 3 steps",
    )
    failed = ProbeAnswers(key="k", failure=("claim", "Redis refused the command"))
    assert check_probe(failed) == ("error", "claim on k failed: Redis refused the command")
    assert check_scripts(failed) == ("error", "the claim script did not run (see probe)")
    # The claim ran, a later step failed: the scripts work, the probe does not.
    later = ProbeAnswers(key="k", steps=list(PROBE_EXPECTED[:1]), failure=("complete", "gone"))
    assert (check_scripts(later)[0], check_probe(later)[0]) == ("ok", "error")
    kept = ProbeAnswers(key="k", steps=list(PROBE_EXPECTED), cleanup_error="gone away")
    assert check_probe(kept) == ("warning", "k not deleted (gone away); it expires")
    assert check_probe(ProbeAnswers()) == ("unknown", "not run")
    assert check_scripts(ProbeAnswers()) == ("unknown", "not run")


def test_latency_medians() -> None:
    assert check_latency([1.0, 3.0, 2.0], [0.5, 0.25]) == (
        "ok",
        "PING median 2.00 ms (n=3), claim median 0.38 ms (n=2)",
    )
    assert check_latency([], [4.0]) == ("ok", "claim median 4.00 ms (n=1)")
    assert check_latency([], []) == ("unknown", "no round trip measured")


# -- the report -----------------------------------------------------------------


def test_judge_connection_error_is_the_only_line() -> None:
    checks = judge(Answers(connect_error="ConnectionError: refused"))
    assert checks == [Check("connection", "error", "ConnectionError: refused")]
    assert exit_code(checks) == 2


def test_judge_merges_cluster_primaries_by_the_worst() -> None:
    nodes = [
        NodeAnswers("a:1", info={"maxmemory_policy": "noeviction", "aof_enabled": 1}),
        NodeAnswers("b:2", info={"maxmemory_policy": "volatile-lru", "aof_enabled": 1}),
    ]
    checks = {c.name: c for c in judge(Answers(kind="cluster", nodes=nodes, primaries=2))}
    assert checks["maxmemory-policy"].status == "warning"
    assert checks["maxmemory-policy"].reason.endswith("; set noeviction (on b:2; primaries differ)")
    assert checks["persistence"] == Check(
        "persistence", "ok", "appendonly yes, appendfsync unknown (the server did not say)"
    )


def test_judge_after_a_crash_keeps_what_it_has() -> None:
    checks = judge(Answers(address="h:1", crash="RuntimeError: boom"))
    assert [(c.name, c.status) for c in checks] == [
        ("connection", "ok"),
        ("server", "unknown"),
        ("topology", "unknown"),
        ("maxmemory-policy", "unknown"),
        ("persistence", "unknown"),
        ("replication", "unknown"),
        ("scripts", "unknown"),
        ("probe", "unknown"),
        ("latency", "unknown"),
        ("doctor", "error"),
    ]
    assert checks[-1].reason == "stopped by RuntimeError: boom"


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        (["ok", "unknown"], 0),
        (["ok", "warning", "unknown"], 1),
        (["warning", "error", "ok"], 2),
    ],
)
def test_exit_code(statuses: list[Status], code: int) -> None:
    assert exit_code([Check("x", s, "") for s in statuses]) == code


def test_render_aligns_and_masks() -> None:
    checks = [
        Check("connection", "ok", "connected"),
        Check("probe", "warning", "kept"),
        Check("server", "unknown", "?"),
        Check("latency", "unknown", "?"),
    ]
    assert render_doctor(checks, url="redis://u:secret@h:1/0", prefix="p") == (
        "onceonly doctor: redis://u:***@h:1/0 (prefix p)\n"
        "\n"
        "connection  ok       connected\n"
        "probe       warning  kept\n"
        "server      unknown  ?\n"
        "latency     unknown  ?\n"
        "\n"
        "1 warning, 2 unknown: exit 1"
    )


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user:pa%40ss@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://:secret@h", "redis://:***@h"),
        ("rediss://secret@h:6380", "rediss://***@h:6380"),
        ("redis://h/0?password=secret&db=1", "redis://h/0?***"),  # no query shown
        ("redis+sentinel://u:pw@a:1,b:2/svc/0", "redis+sentinel://u:***@a:1,b:2/svc/0"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_doctor_options() -> None:
    assert doctor_options("redis://h", timeout=2.0) == {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
    }
    options = doctor_options("rediss://h", ca_certs="ca", certfile="c", keyfile="k", insecure=True)
    assert options == {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "ssl_ca_certs": "ca",
        "ssl_certfile": "c",
        "ssl_keyfile": "k",
        "ssl_cert_reqs": "none",
        "ssl_check_hostname": False,
    }
    assert doctor_options("rediss+sentinel://h:1/s", ca_certs="ca")["ssl_ca_certs"] == "ca"
    with pytest.raises(IdempotencyConfigError, match=r"rediss://"):
        doctor_options("redis://h", ca_certs="ca")
