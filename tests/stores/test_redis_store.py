"""The Redis store on real servers: command counts, fencing, races, storms, durability knobs.

Every test runs once per engine found (Debian's Redis 7 and the Valkey 8
wheel in CI). The contract suite (test_store_contract.py) covers the six
operations on standalone, cluster and Sentinel; this file covers what is
particular to Redis.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import redis_harness as harness
from onceonly import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyConfigError,
    idempotent_function,
)
from onceonly.keys import canonical_json, hasher
from onceonly.records import Acquired, Found, Status, encode_outcome, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore, scripts
from testkit import ManualClock, RedisFarm

LEASE = 60_000
TTL = 60_000


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _script_calls(client: redis.Redis) -> dict[str, int]:
    """Script calls (the store's round trips) since the last CONFIG RESETSTAT.

    commandstats also counts the GET / SET / DEL run inside the scripts; those
    are no round trips, so only EVALSHA and EVAL are read here.
    """
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval")
    }


def _warm(store: RedisStore) -> None:
    """Load all four scripts, so that counted calls never meet NOSCRIPT."""
    tok = new_token()
    key = f"warm:{uuid.uuid4().hex}"
    store.claim(key, token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    store.renew(key, token=tok, lease_ms=LEASE)
    store.release(key, token=tok)
    store.claim(key, token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    store.complete(key, token=tok, outcome=b"j1", ttl_ms=TTL)


# -- round trips ---------------------------------------------------------------------


def test_command_counts_first_duplicate_live_claim_and_takeover(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    client = server.client()
    clock = ManualClock(1_800_000_000_000)
    store = RedisStore(client, prefix=_prefix(), clock=clock)
    runs: list[str] = []

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(lease_seconds=10))
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(order["id"])
        return {"charged": order["id"]}

    _warm(store)

    client.config_resetstat()
    assert charge({"id": "a"}) == {"charged": "a"}
    assert _script_calls(client) == {"evalsha": 2}  # claim + complete

    client.config_resetstat()
    assert charge({"id": "a"}) == {"charged": "a"}
    assert _script_calls(client) == {"evalsha": 1}  # the claim answers with the record

    # A live claim held elsewhere: one call, answered "in progress".
    key = charge.key_for({"id": "b"})  # type: ignore[attr-defined]
    other = new_token()
    assert store.claim(key, token=other, lease_ms=10_000, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=False)
    )
    client.config_resetstat()
    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        charge({"id": "b"})
    assert info.value.retry_after_ms == 10_000
    assert _script_calls(client) == {"evalsha": 1}

    # The holder died: past its lease the next call takes over in one call, +1 to complete.
    clock.advance(10_000)
    client.config_resetstat()
    assert charge({"id": "b"}) == {"charged": "b"}
    assert _script_calls(client) == {"evalsha": 2}
    assert runs == ["a", "b"]
    assert charge.stats.snapshot()["takeover"] == 1  # type: ignore[attr-defined]
    client.close()


def test_the_first_call_on_a_server_loads_the_script_with_eval(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    client.script_flush()
    client.config_resetstat()
    # An injected clock keeps the claim on its script (see the native claim below).
    store = RedisStore(client, prefix=_prefix(), clock=ManualClock(1_800_000_000_000))
    assert store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=False)
    )
    # EVALSHA answered NOSCRIPT, EVAL ran the script and cached it.
    assert _script_calls(client) == {"evalsha": 1, "eval": 1}
    client.config_resetstat()
    store.claim("k2", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert _script_calls(client) == {"evalsha": 1}

    # By the server's time the claim is a native SET; the complete script loads the same way.
    native = RedisStore(client, prefix=_prefix())
    tok = new_token()
    native.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    client.config_resetstat()
    assert native.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL) is True
    assert _script_calls(client) == {"evalsha": 1, "eval": 1}
    client.close()


# -- values and errors ------------------------------------------------------------------


def test_records_are_one_string_with_px_lease_then_retention(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    tok = new_token()
    store.claim("k", token=tok, lease_ms=30_000, ttl_ms=TTL, fingerprint="abcd")
    raw = client.get(f"{prefix}:k")
    assert raw is not None
    assert raw.startswith(f"o1|P|{tok}|".encode())
    assert raw.endswith(b"|abcd|")
    assert 29_000 < client.pttl(f"{prefix}:k") <= 30_000
    store.complete("k", token=tok, outcome=encode_outcome({"x": 1}), ttl_ms=120_000)
    assert 119_000 < client.pttl(f"{prefix}:k") <= 120_000
    record = store.get("k")
    assert record is not None
    assert record.status is Status.COMPLETED
    assert record.fingerprint == "abcd"
    assert record.outcome == b'j{"x":1}'
    client.close()


@pytest.mark.parametrize("decode_responses", [False, True])
def test_either_kind_of_client_reads_records(
    redis_engine: harness.Engine, redis_farm: RedisFarm, decode_responses: bool
) -> None:
    client = redis_farm.standalone(redis_engine).client(decode_responses=decode_responses)
    store = RedisStore(client, prefix=_prefix())
    tok = new_token()
    store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    store.complete("k", token=tok, outcome=encode_outcome(["é", 0, None]), ttl_ms=TTL)
    found = store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert isinstance(found, Found)
    assert found.record.outcome == encode_outcome(["é", 0, None])
    client.close()


@pytest.mark.parametrize(
    ("value", "header_parses"),
    [
        (b"garbage", False),
        (b"o1|X|" + b"0" * 32 + b"|1|||", False),
        (b"", False),
        # A COMPLETED header with no outcome after it: the scripts apply the
        # decoder's rule (issue 9, item 11), so every write reports it as corrupt.
        (b"o1|C|" + b"0" * 32 + b"|99999999999999||", False),
    ],
)
def test_a_foreign_value_is_a_corrupt_record_and_is_left_alone(
    redis_engine: harness.Engine, redis_farm: RedisFarm, value: bytes, header_parses: bool
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    client.set(f"{prefix}:k", value)
    tok = new_token()
    with pytest.raises(CorruptRecordError):
        store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    with pytest.raises(CorruptRecordError):
        store.get("k")
    writes = (
        lambda: store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL),
        lambda: store.release("k", token=tok),
        lambda: store.renew("k", token=tok, lease_ms=LEASE),
    )
    for write in writes:
        if header_parses:
            assert write() is False
        else:
            with pytest.raises(CorruptRecordError):
                write()
    assert client.get(f"{prefix}:k") == value
    assert store.delete("k") is True
    assert store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=False)
    )
    client.close()


def test_a_key_of_another_type_is_a_corrupt_record(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    client.hset(f"{prefix}:h", "status", "COMPLETED")  # what a Powertools record looks like
    store = RedisStore(client, prefix=prefix)
    runs = []

    @idempotent_function(store=store, key=lambda: "x", config=IdempotencyConfig(key_prefix="p"))
    def work() -> int:
        runs.append(1)
        return 1

    with pytest.raises(CorruptRecordError, match="other than a string"):
        store.claim("h", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    client.hset(f"{prefix}:{work.key_for()}", "a", "b")  # type: ignore[attr-defined]
    with pytest.raises(CorruptRecordError):
        work()
    assert runs == []
    client.close()


def test_bad_options_fail_at_construction(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    for kwargs in (
        {"prefix": 5},
        {"prefix": None},
        {"prefix": b"p"},
        {"wait_replicas": -1},
        {"wait_timeout_ms": 1.5},
        {"wait_aof": "yes"},
        {"clock": 5},
    ):
        with pytest.raises(IdempotencyConfigError):
            RedisStore(client, **kwargs)
    with pytest.raises(IdempotencyConfigError, match="redis-py client"):
        RedisStore(object())
    with pytest.raises(IdempotencyConfigError, match="AsyncRedisStore"):
        RedisStore(redis.asyncio.Redis())
    client.close()


# -- fencing through the decorator ---------------------------------------------------------


def test_a_worker_that_lost_its_lease_returns_but_overwrites_nothing(
    redis_engine: harness.Engine, redis_farm: RedisFarm, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    clock = ManualClock(1_800_000_000_000)
    store = RedisStore(client, prefix=_prefix(), clock=clock)
    seen: list[str] = []

    @idempotent_function(
        store=store,
        data="job",
        config=IdempotencyConfig(event_key_jmespath="id", lease_seconds=5),
    )
    def slow(job: dict[str, Any]) -> str:
        if job["who"] == "first":
            seen.append("first")
            clock.advance(6_000)  # the first worker stalls past its lease...
            # ...and a second delivery takes the key over and finishes.
            assert slow({"id": job["id"], "who": "second"}) == "second"
        else:
            seen.append("second")
        return job["who"]

    with caplog.at_level(logging.WARNING, logger="onceonly"):
        assert slow({"id": 7, "who": "first"}) == "first"
    assert seen == ["first", "second"]
    assert "losing its lease" in caplog.text
    # The newer owner's outcome stands; a later duplicate replays it.
    assert slow({"id": 7, "who": "third"}) == "second"
    client.close()


# -- many processes ----------------------------------------------------------------------


def _orphan_racer(url: str, prefix: str, start: Any, done: Any) -> None:
    store = RedisStore.from_url(url, prefix=prefix)
    client = redis.Redis.from_url(url)

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(key_prefix="race", lease_seconds=30)
    )
    def charge(order: dict[str, Any]) -> str:
        client.incr(f"{prefix}:executions")
        return "charged"

    start.wait()
    try:
        result = charge({"id": "the-orphan"})
    except IdempotencyAlreadyInProgressError:
        result = "in progress"
    client.rpush(f"{prefix}:answers", result)
    done.release()


def test_eight_processes_racing_for_one_orphan_run_it_once(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    url = f"redis://{harness.HOST}:{server.port}/0"
    prefix = _prefix()
    client = server.client()
    # An orphan: a claim whose worker died, its lease already over by the
    # server's clock (the key still exists: it was written with a long PX).
    key = f"race:{hasher('md5')(canonical_json({'id': 'the-orphan'}))}"
    dead = new_token()
    client.set(f"{prefix}:{key}", f"o1|P|{dead}|1000||".encode(), px=60_000)
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Semaphore(0)
    procs = [ctx.Process(target=_orphan_racer, args=(url, prefix, start, done)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    answers = sorted(a.decode() for a in client.lrange(f"{prefix}:answers", 0, -1))
    assert client.get(f"{prefix}:executions") == b"1"
    assert len(answers) == 8
    assert set(answers) <= {"charged", "in progress"}
    assert answers.count("charged") >= 1
    client.close()


STORM_PROCESSES, STORM_KEYS, STORM_COPIES = 8, 1000, 4


def _storm_worker(url: str, prefix: str, cluster: bool, deliveries: list[str], start: Any) -> None:
    store = RedisStore.from_url(url, prefix=prefix, cluster=cluster)
    counter = redis.Redis.from_url(url) if not cluster else redis.RedisCluster.from_url(url)

    @idempotent_function(
        store=store,
        data="message",
        config=IdempotencyConfig(event_key_jmespath="id", key_prefix="storm", lease_seconds=60),
    )
    def handle(message: dict[str, Any]) -> str:
        counter.rpush(f"{prefix}:log:{{x}}", message["id"])
        return message["id"]

    queue = collections.deque(deliveries)
    start.wait()
    answers = 0
    while queue:
        key = queue.popleft()
        try:
            if handle({"id": key}) != key:
                raise AssertionError(f"wrong result for {key}")
            answers += 1
        except IdempotencyAlreadyInProgressError:
            queue.append(key)  # redelivered later, as a queue would
    counter.incrby(f"{prefix}:answers:{{x}}", answers)


def _storm(url: str, client: Any, cluster: bool) -> None:
    prefix = _prefix()
    rng = random.Random(1234)
    keys = [f"k{i:04d}" for i in range(STORM_KEYS)]
    queues: list[list[str]] = [[] for _ in range(STORM_PROCESSES)]
    for key in keys:
        for q in rng.sample(range(STORM_PROCESSES), STORM_COPIES):
            queues[q].append(key)
    for q in queues:
        rng.shuffle(q)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_storm_worker, args=(url, prefix, cluster, q, start)) for q in queues
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    log = [k.decode() for k in client.lrange(f"{prefix}:log:{{x}}", 0, -1)]
    assert len(log) == STORM_KEYS  # exactly one execution per key...
    assert sorted(log) == keys  # ...of every key
    assert int(client.get(f"{prefix}:answers:{{x}}")) == STORM_KEYS * STORM_COPIES


def test_storm_on_standalone_runs_every_key_exactly_once(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    client = server.client()
    _storm(f"redis://{harness.HOST}:{server.port}/0", client, cluster=False)
    client.close()


def test_storm_on_a_cluster_runs_every_key_exactly_once(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    cluster = redis_farm.cluster(redis_engine)
    client = cluster.client()
    _storm(f"redis://{harness.HOST}:{cluster.nodes[0].port}", client, cluster=True)
    # The records spread over all three primaries.
    for primary in cluster.primaries():
        with primary.client() as c:
            assert len(c.keys("*:storm:*")) > 0
    client.close()


# -- durability knobs ----------------------------------------------------------------------


def test_wait_replicas_waits_for_the_replicas_and_counts_shortfalls(
    redis_engine: harness.Engine, redis_farm: RedisFarm, caplog: pytest.LogCaptureFixture
) -> None:
    sentinels = redis_farm.sentinel(redis_engine)
    host, port = sentinels.master_address()
    client = redis.Redis(host=host, port=port)
    store = RedisStore(client, prefix=_prefix(), wait_replicas=2, wait_timeout_ms=2000)
    tok = new_token()
    assert store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=False)
    )
    assert store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL) is True
    assert store.wait_shortfalls == 0
    # Two replicas exist; asking for three falls short after the timeout, and says so.
    greedy = RedisStore(client, prefix=_prefix(), wait_replicas=3, wait_timeout_ms=50)
    with caplog.at_level(logging.WARNING, logger="onceonly"):
        greedy.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert greedy.wait_shortfalls == 1
    (short,) = [r for r in caplog.records if "fewer replicas" in r.getMessage()]
    assert short.onceonly_outcome == "wait_shortfall"  # type: ignore[attr-defined]
    assert short.onceonly_store == "RedisStore"  # type: ignore[attr-defined]
    assert short.onceonly_key_digest == greedy.full_key("k")[-16:]  # type: ignore[attr-defined]
    client.close()


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_async_store_waits_for_the_replicas_with_or_without_pipelining(
    redis_engine: harness.Engine, redis_farm: RedisFarm, pipelining: bool
) -> None:
    sentinels = redis_farm.sentinel(redis_engine)
    host, port = sentinels.master_address()

    async def scenario() -> tuple[int, int, list[Any]]:
        client = redis.asyncio.Redis(host=host, port=port)
        try:
            # Loaded up front: a NOSCRIPT answer and the EVAL after it would
            # each carry a WAIT of their own (the count below is one per write).
            for script in (scripts.CLAIM, scripts.COMPLETE, scripts.RELEASE):
                await client.script_load(script.source)
            store = AsyncRedisStore(
                client, prefix=_prefix(), wait_replicas=2, wait_timeout_ms=2000,
                pipelining=pipelining,
            )  # fmt: skip
            tok = new_token()
            answers: list[Any] = [
                await store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None),
                await store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL),
            ]
            # Two replicas exist; asking for three falls short on every write.
            greedy = AsyncRedisStore(
                client, prefix=_prefix(), wait_replicas=3, wait_timeout_ms=50,
                pipelining=pipelining,
            )  # fmt: skip
            other = new_token()
            answers.append(
                await greedy.claim("k", token=other, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
            )
            answers.append(await greedy.release("k", token=other))
            return store.wait_shortfalls, greedy.wait_shortfalls, answers
        finally:
            await client.aclose()

    enough, short, answers = asyncio.run(scenario())
    assert answers == [Acquired(takeover=False), True, Acquired(takeover=False), True]
    assert (enough, short) == (0, 2)


def test_wait_aof_is_refused_or_used_as_the_server_allows(
    redis_engine: harness.Engine, redis_farm: RedisFarm, tmp_path: Path
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    major_minor = tuple(int(p) for p in redis_engine.version.split(".")[:2])
    if major_minor < (7, 2):
        with pytest.raises(IdempotencyConfigError, match=r"7\.2"):
            RedisStore(client, wait_aof=True)
    else:
        store = RedisStore(client, prefix=_prefix(), wait_aof=True, wait_timeout_ms=2000)
        tok = new_token()
        store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
        assert store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL) is True
        assert store.wait_shortfalls == 0
        # fsynced at once here, on no replica: WAITAOF answers [1, 0], short of the
        # one replica asked for.
        own = harness.standalone(redis_engine, tmp_path / "always", extra=["appendfsync always"])
        try:
            short = RedisStore(
                own.client(), prefix=_prefix(), wait_aof=True, wait_replicas=1, wait_timeout_ms=10
            )
            claim = short.claim(
                "k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            assert claim == Acquired(takeover=False)
            assert short.wait_shortfalls == 1
            assert own.client().execute_command("WAITAOF", 1, 1, 10) == [1, 0]
        finally:
            own.stop()
    client.close()


def test_wait_aof_needs_appendonly(redis_engine: harness.Engine, tmp_path: Path) -> None:
    server = harness.standalone(redis_engine, tmp_path / "noaof", aof=False)

    async def first_call(clock: ManualClock | None) -> None:
        # The async store cannot ask the server at construction: its first call does,
        # the native claim (the server's time) or the claim script (an injected clock).
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        store = AsyncRedisStore(client, prefix=_prefix(), wait_aof=True, clock=clock)
        try:
            await store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
        finally:
            await client.aclose()

    try:
        with pytest.raises(IdempotencyConfigError, match=r"appendonly|7\.2"):
            RedisStore(server.client(), wait_aof=True)
        for clock in (None, ManualClock()):
            with pytest.raises(IdempotencyConfigError, match=r"appendonly|7\.2"):
                asyncio.run(first_call(clock))
        assert server.client().dbsize() == 0  # refused before anything was written
    finally:
        server.stop()
