"""``onceonly doctor``: can this Redis / Valkey server hold onceonly's records safely?

:func:`collect` asks the server (PING, HELLO, INFO, CONFIG GET, and a probe
through a real ``RedisStore``) and writes the answers down; the ``check_*``
functions judge them without I/O (plain dicts like INFO's test them) and return
a ``(status, reason)`` verdict; :func:`run_doctor` joins the two, never raises,
and never repeats the URL's password. The command line prints the report.
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from .errors import IdempotencyError
from .records import Acquired, Found, encode_outcome, new_token

__all__ = [
    "PROBE_EXPECTED", "Answers", "Check", "NodeAnswers", "ProbeAnswers", "Verdict",
    "check_eviction", "check_latency", "check_persistence", "check_probe", "check_replication",
    "check_scripts", "check_server", "check_topology", "collect", "exit_code", "judge",
    "run_doctor", "run_probe",
]  # fmt: skip

Status = Literal["ok", "warning", "unknown", "error"]
Verdict = tuple[Status, str]
RANK: dict[str, int] = {"ok": 0, "unknown": 1, "warning": 2, "error": 3}
MIN_VERSIONS = {"Redis": (6, 2), "Valkey": (7, 2)}
CONFIG_PARAMS = ("maxmemory-policy", "appendonly", "appendfsync", "save", "min-replicas-to-write")
PINGS = 20
PROBE_LEASE_MS, PROBE_TTL_MS = 30_000, 60_000  # a probe key left behind expires by itself
#: Each probe step and what it must observe, in order.
PROBE_EXPECTED = (
    ("claim", "acquired"), ("complete", "true"), ("claim again", "found COMPLETED"),
    ("delete", "true"), ("claim after delete", "acquired"), ("same-token claims", "acquired"),
    ("release", "true"), ("get after release", "none"),
)  # fmt: skip


@dataclass(frozen=True)
class Check:
    """One line of the report: a check's name, its status and a one-line reason."""

    name: str
    status: Status
    reason: str


@dataclass
class NodeAnswers:
    """What one server answered; ``refused`` maps a command (HELLO, INFO, CONFIG) to why not."""

    name: str = "server"
    info: dict[str, Any] | None = None
    hello: dict[str, Any] | None = None
    config: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class ProbeAnswers:
    """The probe's key, what each step observed, the step that failed (and why), the cleanup."""

    key: str = ""
    steps: list[tuple[str, str]] = field(default_factory=list)
    failure: tuple[str, str] | None = None
    cleanup_error: str | None = None


@dataclass
class Answers:
    """Everything the server answered; ``kind`` is standalone, cluster or sentinel."""

    kind: str = "standalone"
    address: str = ""
    service: str | None = None  # the Sentinel service
    primaries: int = 0  # cluster: primaries in the slot map
    connect_error: str | None = None
    crash: str | None = None
    nodes: list[NodeAnswers] = field(default_factory=list)  # cluster: every primary
    probe: ProbeAnswers = field(default_factory=ProbeAnswers)
    ping_ms: list[float] = field(default_factory=list)
    claim_ms: list[float] = field(default_factory=list)
    stream: Any = None  # a doctor_stream.StreamAnswers with --stream / --group


# -- the pure checks ---------------------------------------------------------------


def _refusals(node: NodeAnswers, *commands: str) -> str:
    said = [f"{c} refused: {node.refused[c]}" for c in commands if c in node.refused]
    return "; ".join(said) or "the server did not say"


def _field(node: NodeAnswers, info_key: str, hello_key: str) -> str | None:
    value = (node.info or {}).get(info_key) or (node.hello or {}).get(hello_key)
    return None if value is None else str(value)


def check_server(node: NodeAnswers) -> Verdict:
    """Name the server (from INFO, else HELLO): error below Redis 6.2 / Valkey 7.2."""
    info, hello = node.info or {}, node.hello or {}
    if "valkey_version" in info or info.get("server_name") == "valkey":
        product, version = "Valkey", info.get("valkey_version", info.get("redis_version"))
    elif "redis_version" in info or "version" in hello:
        product = "Valkey" if hello.get("server") == "valkey" else "Redis"
        version = info.get("redis_version", hello.get("version"))
    else:
        return "unknown", _refusals(node, "INFO", "HELLO")
    found = re.match(r"(\d+)\.(\d+)", str(version))
    if found is None:
        return "unknown", f"{product} reports version {version!r}"
    major, minor = MIN_VERSIONS[product]
    if (int(found[1]), int(found[2])) < (major, minor):
        return "error", f"{product} {version} is older than {major}.{minor}, the oldest supported"
    return "ok", f"{product} {version}"


def check_topology(answers: Answers) -> Verdict:
    """Say what the client talks to: error for a replica, a cluster node or a Sentinel."""
    if answers.kind == "cluster":
        return "ok", f"cluster with {answers.primaries} primaries"
    node = answers.nodes[0] if answers.nodes else NodeAnswers()
    role, mode = _field(node, "role", "role"), _field(node, "redis_mode", "mode")
    mode = (node.info or {}).get("server_mode", mode)  # Valkey's name for it
    if mode == "cluster" or str((node.info or {}).get("cluster_enabled")) == "1":
        return "error", "this node runs in cluster mode: pass --cluster"
    if mode == "sentinel":
        return "error", "this is a Sentinel: use a redis+sentinel:// URL"
    where = f"standalone server at {answers.address}"
    if answers.kind == "sentinel":
        where = f"sentinel-managed primary {answers.service!r} at {answers.address}"
    if role is None:
        return "unknown", f"{where}; role unknown ({_refusals(node, 'INFO', 'HELLO')})"
    if role != "master":
        return "error", f"{where} is a {role}: writes need the primary"
    return "ok", f"{where}, role master"


def check_eviction(node: NodeAnswers) -> Verdict:
    """Judge ``maxmemory-policy`` (INFO memory, else CONFIG GET).

    Returns:
        ok for noeviction; warning for every allkeys-* and volatile-* policy
        (each can evict live records: every onceonly record has a TTL).
    """
    policy = (node.info or {}).get("maxmemory_policy") or node.config.get("maxmemory-policy")
    if policy is None:
        return "unknown", _refusals(node, "INFO", "CONFIG")
    if policy == "noeviction":
        return "ok", "noeviction: a full server refuses writes, it evicts nothing"
    if str(policy).startswith(("allkeys-", "volatile-")):
        why = "under memory pressure live claims and results can be evicted"
        return "warning", f"{policy}: {why} and a duplicate then runs again; set noeviction"
    return "unknown", f"{policy}: a policy the doctor does not know"


def check_persistence(node: NodeAnswers) -> Verdict:
    """Judge durability across a restart: warning with AOF off, or with appendfsync no."""
    aof = (node.info or {}).get("aof_enabled", node.config.get("appendonly"))
    fsync = node.config.get("appendfsync") or f"unknown ({_refusals(node, 'CONFIG')})"
    if aof is None:
        return "unknown", _refusals(node, "INFO", "CONFIG")
    if str(aof) not in ("1", "yes"):
        off = " (and RDB snapshots are off)" if node.config.get("save") == "" else ""
        why = "a restart loses every claim written since the last RDB snapshot"
        return "warning", f"appendonly no{off}: {why}, and duplicates then run again"
    if fsync == "no":
        return "warning", "appendonly yes, appendfsync no: a crash can lose many seconds of claims"
    return "ok", f"appendonly yes, appendfsync {fsync}"


def check_replication(node: NodeAnswers) -> Verdict:
    """Report role, replicas, ``min-replicas-to-write`` and what async replication costs."""
    role = _field(node, "role", "role")
    if node.info is None or role is None:
        return "unknown", _refusals(node, "INFO")
    if role != "master":
        return "error", f"role {role}: a replica refuses writes"
    replicas = int(node.info.get("connected_slaves", 0))
    least = node.config.get("min-replicas-to-write") or f"unknown ({_refusals(node, 'CONFIG')})"
    plural = "s" * (replicas != 1)
    said = f"role master, {replicas or 'no'} replica{plural}, min-replicas-to-write {least}"
    if replicas == 0:
        return "ok", f"{said}: nothing to fail over to"
    why = "replication is asynchronous, so a failover can lose an acknowledged claim"
    return "ok", f"{said}; {why} unless the store uses wait_replicas (or MemoryDB)"


def check_scripts(probe: ProbeAnswers) -> Verdict:
    """Judge the Lua scripts by the probe's first claim (EVALSHA, or EVAL on NOSCRIPT)."""
    if probe.steps:
        return "ok", "the claim script loaded and ran"
    if probe.failure is not None:
        return "error", "the claim script did not run (see probe)"
    return "unknown", "not run"


def check_probe(probe: ProbeAnswers) -> Verdict:
    """Compare the probe's steps with :data:`PROBE_EXPECTED`: error on any failure or surprise."""
    if probe.failure is not None:
        return "error", f"{probe.failure[0]} on {probe.key} failed: {probe.failure[1]}"
    if not probe.steps:
        return "unknown", "not run"
    for (step, seen), (_, want) in zip(probe.steps, PROBE_EXPECTED, strict=False):
        if seen != want:
            return "error", f"{step} on {probe.key}: {seen}, expected {want}"
    if len(probe.steps) != len(PROBE_EXPECTED):
        return "error", f"the probe stopped after {len(probe.steps)} steps"
    if probe.cleanup_error is not None:
        return "warning", f"{probe.key} not deleted ({probe.cleanup_error}); it expires"
    return "ok", f"claim, complete, replay, delete, claim, release on {probe.key}"


def check_latency(ping_ms: Sequence[float], claim_ms: Sequence[float]) -> Verdict:
    """Report median round trips in ms: information only (ok, or unknown without samples)."""
    parts = [
        f"{what} median {statistics.median(samples):.2f} ms (n={len(samples)})"
        for what, samples in (("PING", ping_ms), ("claim", claim_ms))
        if samples
    ]
    return ("ok", ", ".join(parts)) if parts else ("unknown", "no round trip measured")


def _per_node(answers: Answers, name: str, check: Callable[[NodeAnswers], Verdict]) -> Check:
    """One line for a check of every node (cluster primaries): the worst, naming its node."""
    if not answers.nodes:
        return Check(name, "unknown", "not checked")
    judged = [(node.name, *check(node)) for node in answers.nodes]
    where, status, reason = max(judged, key=lambda item: RANK[item[1]])
    if len({r for _, _, r in judged}) > 1:
        reason += f" (on {where}; primaries differ)"
    return Check(name, status, reason)


def judge(answers: Answers) -> list[Check]:
    """The report's checks in order; only the connection error if there was one."""
    if answers.connect_error is not None:
        return [Check("connection", "error", answers.connect_error)]
    checks = [
        Check("connection", "ok", f"connected to {answers.address}"),
        _per_node(answers, "server", check_server),
        Check("topology", *check_topology(answers)),
        _per_node(answers, "maxmemory-policy", check_eviction),
        _per_node(answers, "persistence", check_persistence),
        _per_node(answers, "replication", check_replication),
        Check("scripts", *check_scripts(answers.probe)),
        Check("probe", *check_probe(answers.probe)),
        Check("latency", *check_latency(answers.ping_ms, answers.claim_ms)),
    ]
    if answers.stream is not None and answers.stream.node:  # asked, and the node answered
        from .doctor_stream import judge_stream

        named = [n for n in answers.nodes if n.name == answers.stream.node] or answers.nodes
        lines = judge_stream(answers.stream, named[0] if named else None)
        checks += [Check(name, status, reason) for name, status, reason in lines]
    if answers.crash is not None:
        checks.append(Check("doctor", "error", f"stopped by {answers.crash}"))
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    """2 if any check is an error, 1 if any is a warning, else 0."""
    return {3: 2, 2: 1}.get(max((RANK[c.status] for c in checks), default=0), 0)


# -- the I/O half ---------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """One line for an exception, without redis-py's long client reprs."""
    text = str(exc) if isinstance(exc, IdempotencyError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(re.sub(r"\s*:?\s*<redis\..*>", "", text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _mapping(reply: object) -> dict[str, Any]:
    """A HELLO / CONFIG GET reply (a dict, or a flat list of pairs) with str keys and values."""
    if isinstance(reply, (list, tuple)):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    text: Callable[[object], Any] = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return {text(k): text(v) for k, v in reply.items()} if isinstance(reply, dict) else {}


def _ask_node(name: str, client: Any, refusal: Any) -> NodeAnswers:
    """HELLO, INFO and CONFIG GET on one server; a refused command is noted, not raised."""
    node = NodeAnswers(name)

    def ask(command: str, call: Callable[[], Any]) -> Any:
        if command not in node.refused:  # once refused, not asked again
            try:
                return call()
            except refusal as exc:
                node.refused[command] = " ".join(str(exc).split())
        return None

    node.hello = _mapping(ask("HELLO", partial(client.execute_command, "HELLO"))) or None
    info = ask("INFO", client.info)
    node.info = None if info is None else dict(info)
    for param in CONFIG_PARAMS:
        node.config.update(_mapping(ask("CONFIG", partial(client.config_get, param))))
    return node


def _seen(result: object) -> str:
    if isinstance(result, Acquired):
        return "acquired (takeover)" if result.takeover else "acquired"
    if isinstance(result, Found):
        return f"found {result.record.status.name}"
    return result if isinstance(result, str) else str(result).lower()  # True, False, None


def run_probe(store: Any, claim_ms: list[float]) -> ProbeAnswers:
    """Run the :data:`PROBE_EXPECTED` steps on a random key, deleted whatever happens.

    Args:
        store: A ``RedisStore``; the key is ``"{prefix}:doctor:{random}"`` (no
            prefix with ``prefix=""``).
        claim_ms: Receives each claim's round trip in ms.

    Returns:
        What each step observed, or the step that failed and why.
    """
    key = f"doctor:{secrets.token_hex(8)}"
    probe = ProbeAnswers(key=store.full_key(key))
    first, second = new_token(), new_token()

    def claim(token: str) -> str:
        start = time.perf_counter()
        got = store.claim(
            key, token=token, lease_ms=PROBE_LEASE_MS, ttl_ms=PROBE_TTL_MS, fingerprint=None
        )
        claim_ms.append((time.perf_counter() - start) * 1000)
        return _seen(got)

    outcome = encode_outcome({"doctor": True})
    steps: list[Callable[[], object]] = [
        partial(claim, first),
        partial(store.complete, key, token=first, outcome=outcome, ttl_ms=PROBE_TTL_MS),
        partial(claim, second),  # a duplicate: found COMPLETED
        partial(store.delete, key),
        partial(claim, second),
        lambda: ", ".join(sorted({claim(second) for _ in range(PINGS - 1)})),  # retried claims
        partial(store.release, key, token=second),
        partial(store.get, key),
    ]
    step = PROBE_EXPECTED[0][0]
    try:
        for (step, _), action in zip(PROBE_EXPECTED, steps, strict=True):
            probe.steps.append((step, _seen(action())))
    except Exception as exc:
        probe.failure = (step, _describe(exc))
    finally:  # even when the first claim failed: its write may have landed
        try:
            store.delete(key)
        except Exception as exc:
            if probe.steps:  # else nothing was written: the failure says why
                probe.cleanup_error = _describe(exc)
    return probe


def _pings(client: Any, refusal: Any) -> list[float]:
    samples: list[float] = []
    with suppress(refusal):  # an ACL without PING
        for _ in range(PINGS):
            start = time.perf_counter()
            client.ping()
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def _close(client: Any) -> None:
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        sentinel.close()
    client.close()


def _collect_from(answers: Answers, store: Any, refusal: Any) -> None:
    """Everything past the connection: where it is, the nodes' answers, PINGs, the probe."""
    client = store.client
    if answers.kind == "cluster":
        answers.address = client.get_default_node().name
        primaries = sorted(client.get_primaries(), key=lambda n: n.name)
        nodes = [(n.name, client.get_redis_connection(n)) for n in primaries]
        answers.primaries = len(primaries)
    elif answers.kind == "sentinel":
        host, port = client.connection_pool.get_master_address()
        answers.address, answers.service = f"{host}:{port}", client.connection_pool.service_name
    else:
        where = client.connection_pool.connection_kwargs
        answers.address = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    if answers.kind != "cluster":
        nodes = [(answers.address, client)]
    answers.nodes = [_ask_node(name, node, refusal) for name, node in nodes]
    answers.ping_ms = _pings(nodes[0][1], refusal)
    answers.probe = run_probe(store, answers.claim_ms)
    if answers.stream is not None:
        from .doctor_stream import collect_stream

        collect_stream(answers.stream, client, answers.address, refusal)


def collect(answers: Answers, url: str, *, prefix: str, options: Mapping[str, Any]) -> None:
    """Connect with ``RedisStore.from_url`` and fill ``answers`` (whose ``kind`` says how).

    Raises:
        Exception: Whatever failed once connected (:func:`run_doctor` reports it).
    """
    from .stores.redis import RedisStore, import_redis

    redis = import_redis()
    refusal = redis.exceptions.ResponseError
    # No retries: report the first failure at once (redis-py backs off for seconds).
    options = {"retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0), **options}
    cluster = answers.kind == "cluster"
    try:
        store = RedisStore.from_url(url, cluster=cluster, prefix=prefix, **options)
    except Exception as exc:
        answers.connect_error = _describe(exc)
        return
    try:
        try:
            with suppress(refusal):  # an ACL without PING: the server answered all the same
                store.client.ping()
        except Exception as exc:
            answers.connect_error = _describe(exc)
            return
        _collect_from(answers, store, refusal)
    finally:
        _close(store.client)


def _hide_secrets(url: str, checks: list[Check]) -> list[Check]:
    """Replace the URL's password, wherever a reason repeats it, by ``***``."""
    from .stores._redact import hide_secrets

    return [Check(c.name, c.status, hide_secrets(c.reason, url)) for c in checks]


def run_doctor(
    url: str, *, prefix: str = "onceonly", cluster: bool = False, stream: Any = None, **options: Any
) -> list[Check]:
    """Check a Redis / Valkey server for onceonly; never raises, never shows the password.

    Args:
        url: A URL as ``RedisStore.from_url`` takes it (credentials included).
        prefix: The store's key prefix; the probe writes under it.
        cluster: Connect with ``RedisCluster`` (the URL names any node).
        stream: A ``doctor_stream.StreamAnswers`` (``stream_target``): also
            report that stream's consumer group.
        **options: redis-py client options (``ssl_ca_certs``, ``socket_timeout``...).

    Returns:
        The checks, in report order.
    """
    sentinel = url.partition("://")[0].lower().endswith("+sentinel")
    answers = Answers(kind="cluster" if cluster else "sentinel" if sentinel else "standalone")
    answers.stream = stream
    try:
        collect(answers, url, prefix=prefix, options=options)
    except Exception as exc:  # past the connection: keep what was answered
        if answers.address:
            answers.crash = _describe(exc)
        else:
            answers.connect_error = _describe(exc)
    return _hide_secrets(url, judge(answers))
