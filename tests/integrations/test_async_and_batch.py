"""asyncio and record batches, on every async store and on real Redis / Valkey servers.

Round trips are counted at the socket: a redis-py Connection subclass counts
``send_packed_command`` calls (one per command sent alone, one per pipeline).
It is redis-py's own connection with a counter, not a stand-in.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import uuid
from collections.abc import Awaitable, Callable
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
    IdempotencyKeyReuseError,
    idempotent_function,
)
from onceonly.batch import ItemStatus, process_batch, process_batch_async
from onceonly.records import Acquired, Status, new_token
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore, MemoryStore, SQLiteStore
from onceonly.stores.dynamodb import AsyncDynamoDBStore
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from testkit import ManualClock, RedisFarm, load_event


class CountingConnection(redis.Connection):
    """redis-py's connection, counting what it sends: one per round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


class AsyncCountingConnection(redis.asyncio.Connection):
    """The asyncio twin of CountingConnection."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        AsyncCountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


def _counting_async(port: int) -> Any:
    """An asyncio client whose connections count their sends."""
    pool = redis.asyncio.ConnectionPool(
        host=harness.HOST, port=port, connection_class=AsyncCountingConnection
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# Every async store once; the Redis ones once per engine (Redis 7, Valkey 8).
ENGINES = {engine.id: engine for engine in harness.engines_or_fail()}
ASYNC_STORES = ["async-memory", "async-sqlite", "async-dynamodb"] + [
    f"async-redis-{topology}-{engine_id}"
    for engine_id in ENGINES
    for topology in ("standalone", "cluster")
]


async def _open(
    kind: str, tmp_path: Path, farm: RedisFarm, moto: Any = None
) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """An async store of the given kind, and how to close it (in the same loop)."""
    if kind == "async-memory":
        return AsyncMemoryStore(), _nothing
    if kind == "async-dynamodb":
        client = moto.client()
        dynamo = AsyncDynamoDBStore(moto.fresh_table(client), client=client)

        async def close_dynamo() -> None:
            client.close()

        return dynamo, close_dynamo
    if kind == "async-sqlite":
        store = AsyncSQLiteStore(tmp_path / "a.sqlite3")

        async def close_sqlite() -> None:
            store.close()

        return store, close_sqlite
    _, _, topology, engine_id = kind.split("-")
    engine = ENGINES[engine_id]
    if topology == "standalone":
        client: Any = _counting_async(farm.standalone(engine).port)
    else:
        client = redis.asyncio.RedisCluster(
            host=harness.HOST, port=farm.cluster(engine).nodes[0].port
        )
    return AsyncRedisStore(client, prefix=_prefix()), client.aclose


async def _nothing() -> None:
    return None


# -- gathered duplicates ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ASYNC_STORES)
def test_2000_keys_times_4_gathered_duplicates_run_2000_times(
    kind: str, tmp_path: Path, redis_farm: RedisFarm, request: pytest.FixtureRequest
) -> None:
    moto = request.getfixturevalue("moto_server") if kind == "async-dynamodb" else None
    executions: list[int] = []

    async def main() -> list[Any]:
        store, close = await _open(kind, tmp_path, redis_farm, moto)

        @idempotent_function(
            store=store,
            data="order",
            # A generous wait: 6000 waiters poll while 2000 owners finish (through
            # moto and a worker thread per call, for DynamoDB).
            config=IdempotencyConfig(
                event_key_jmespath="id",
                on_in_progress="wait",
                lease_seconds=600,
                wait_timeout_seconds=600,
            ),
        )
        async def charge(order: dict[str, int]) -> dict[str, int]:
            executions.append(order["id"])
            await asyncio.sleep(0)  # the duplicates meet the claim in progress
            return {"charged": order["id"]}

        try:
            return await asyncio.gather(*(charge({"id": i}) for i in range(2000) for _ in range(4)))
        finally:
            await close()

    results = asyncio.run(main())
    assert sorted(executions) == list(range(2000))
    assert results == [{"charged": i} for i in range(2000) for _ in range(4)]


# -- pipelining ---------------------------------------------------------------------------


@pytest.mark.parametrize("clock", [None, ManualClock()], ids=["server-time", "clock"])
def test_one_loop_turn_is_one_pipeline_and_every_caller_gets_its_own_answer(
    redis_farm: RedisFarm, redis_engine: harness.Engine, clock: ManualClock | None
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    sync = redis.Redis(host=harness.HOST, port=port)
    done, live, orphan, fresh = new_token(), new_token(), new_token(), new_token()
    # A completed key, a live claim, an orphan past its lease, and a hash (not a record).
    setup = RedisStore(sync, prefix=prefix)
    setup.claim("done", token=done, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    setup.complete("done", token=done, outcome=b"j42", ttl_ms=60_000)
    setup.claim("live", token=live, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    sync.set(f"{prefix}:orphan", f"o1|P|{orphan}|1000||".encode(), px=60_000)
    sync.hset(f"{prefix}:hash", "a", "b")

    async def main() -> tuple[list[Any], int]:
        client = _counting_async(port)
        store = AsyncRedisStore(client, prefix=prefix, clock=clock)
        await client.ping()  # connect (and handshake) before counting
        AsyncCountingConnection.sends = 0
        calls = [
            store.claim(k, token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
            for k in ("fresh", "done", "live", "orphan", "hash")
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        sends = AsyncCountingConnection.sends
        await client.aclose()
        return answers, sends

    answers, sends = asyncio.run(main())
    # With an injected clock: five script calls, one round trip. By the server's
    # time: five native claims in one round trip, then the two that need the
    # claim script (the live claim and the orphan) together in one more.
    assert sends == (1 if clock else 2)
    fresh_answer, done_answer, live_answer, orphan_answer, hash_answer = answers
    assert fresh_answer == Acquired(takeover=False)
    assert done_answer.record.status is Status.COMPLETED
    assert done_answer.record.outcome == b"j42"
    assert live_answer.record.status is Status.IN_PROGRESS
    assert live_answer.record.token == live
    assert orphan_answer == Acquired(takeover=True)
    assert isinstance(hash_answer, CorruptRecordError)  # only its own caller fails
    assert isinstance(hash_answer.__cause__, redis.exceptions.ResponseError)
    assert fresh != live
    sync.close()


def test_pipelining_off_sends_each_call_alone(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port

    async def main() -> int:
        client = _counting_async(port)
        store = AsyncRedisStore(client, prefix=_prefix(), pipelining=False)
        await asyncio.gather(
            *(
                store.claim(
                    f"k{i}", token=new_token(), lease_ms=5_000, ttl_ms=5_000, fingerprint=None
                )
                for i in range(5)
            )
        )  # warm: scripts loaded, five connections made
        AsyncCountingConnection.sends = 0
        await asyncio.gather(
            *(
                store.claim(
                    f"j{i}", token=new_token(), lease_ms=5_000, ttl_ms=5_000, fingerprint=None
                )
                for i in range(5)
            )
        )
        sends = AsyncCountingConnection.sends
        await client.aclose()
        return sends

    assert asyncio.run(main()) == 5


# -- cancellation and heartbeat ------------------------------------------------------------


@pytest.mark.parametrize("kind", ASYNC_STORES)
def test_cancelling_the_caller_releases_the_claim(
    kind: str, tmp_path: Path, redis_farm: RedisFarm, request: pytest.FixtureRequest
) -> None:
    moto = request.getfixturevalue("moto_server") if kind == "async-dynamodb" else None

    async def main() -> tuple[list[str], Any]:
        store, close = await _open(kind, tmp_path, redis_farm, moto)
        started = asyncio.Event()
        runs: list[str] = []

        @idempotent_function(store=store, data="job", config=IdempotencyConfig(lease_seconds=60))
        async def work(job: str) -> str:
            runs.append(job)
            started.set()
            await asyncio.sleep(3600)
            return job

        task = asyncio.ensure_future(work("j"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.get(work.key_for("j"))  # type: ignore[attr-defined]
        await close()
        return runs, record

    runs, record = asyncio.run(main())
    assert runs == ["j"]
    assert record is None  # released: a retry runs at once, it does not wait out the lease


def test_heartbeat_keeps_a_long_async_claim_alive_past_its_lease(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    # Redis judges leases by its own clock, so this runs in real time; but it
    # waits on what the server shows, not on fixed sleeps. The function runs
    # until the server's clock is half a lease past the deadline of its claim,
    # trying a duplicate every 100 ms. A beat every lease/3 leaves 800 ms of
    # the 1.2 s lease as the margin for a late beat on a loaded machine.
    port = redis_farm.standalone(redis_engine).port

    async def main() -> tuple[list[Any], list[int], int, str, Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port)
        store = AsyncRedisStore(client, prefix=_prefix())
        seen: list[Any] = []
        deadlines: list[int] = []
        first: list[int] = []

        async def server_ms() -> int:
            seconds, micros = await client.time()
            return int(seconds) * 1000 + int(micros) // 1000

        @idempotent_function(
            store=store, data="job", config=IdempotencyConfig(lease_seconds=1.2, heartbeat=True)
        )
        async def long(job: str) -> str:
            key = long.key_for(job)  # type: ignore[attr-defined]
            claimed = await store.get(key)
            assert claimed is not None
            first.append(claimed.deadline_ms)
            async with asyncio.timeout(30):
                while await server_ms() < first[0] + 600:
                    record = await store.get(key)
                    assert record is not None
                    assert record.status is Status.IN_PROGRESS
                    deadlines.append(record.deadline_ms)
                    try:
                        await long(job)  # a duplicate, while this one runs
                    except IdempotencyAlreadyInProgressError as exc:
                        seen.append(exc.retry_after_ms > 0)
                    await asyncio.sleep(0.1)
            return "finished"

        result = await long("j")
        stored = await store.get(long.key_for("j"))  # type: ignore[attr-defined]
        await client.aclose()
        return seen, deadlines, first[0], result, stored

    seen, deadlines, first, result, stored = asyncio.run(main())
    assert result == "finished"
    assert len(seen) >= 5
    assert seen == [True] * len(seen)  # every duplicate found the claim held
    assert deadlines == sorted(deadlines)
    assert deadlines[-1] > first + 600  # renewed past where the first lease ended
    assert stored is not None
    assert stored.status is Status.COMPLETED


# -- decorators pick the async driver ----------------------------------------------------------


def test_partials_and_async_callables_use_the_async_driver() -> None:
    store = AsyncMemoryStore()

    async def add(base: int, order: dict[str, int]) -> int:
        return base + order["n"]

    class Charger:
        def __init__(self) -> None:
            self.calls = 0

        async def __call__(self, order: dict[str, int]) -> int:
            self.calls += 1
            return order["n"] * 2

    partial = idempotent_function(
        functools.partial(add, 10), store=store, key=lambda order: order["n"],
        config=IdempotencyConfig(key_prefix="partial"),
    )  # fmt: skip
    charger = Charger()
    wrapped = idempotent_function(
        charger, store=store, data="order", config=IdempotencyConfig(key_prefix="charger")
    )

    async def main() -> list[int]:
        return [
            await partial(order={"n": 1}),
            await partial(order={"n": 1}),
            await wrapped({"n": 4}),
            await wrapped({"n": 4}),
        ]

    assert asyncio.run(main()) == [11, 11, 8, 8]
    assert charger.calls == 1
    with pytest.raises(IdempotencyConfigError, match="must be async"):
        idempotent_function(charger, store=MemoryStore(), data="order")


# -- batches ------------------------------------------------------------------------------------


def _sqs_batch(n: int, *, duplicate_of: dict[int, int] | None = None) -> list[dict[str, Any]]:
    template = load_event("sqsEvent.json")["Records"][0]
    records = []
    for i in range(n):
        record = copy.deepcopy(template)
        record["messageId"] = f"m-{i}"
        order = (duplicate_of or {}).get(i, i)
        record["body"] = json.dumps({"order": order})
        records.append(record)
    return records


BATCH_CONFIG = IdempotencyConfig(event_key_jmespath="from_json(body).order", key_prefix="sqs")


def test_a_batch_of_10_sqs_records_costs_2_round_trips_on_redis(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    pool = redis.ConnectionPool(
        host=harness.HOST, port=server.port, connection_class=CountingConnection
    )
    client = redis.Redis.from_pool(pool)
    store = RedisStore(client, prefix=_prefix())
    handled: list[int] = []

    def handle(record: dict[str, Any]) -> dict[str, int]:
        order = json.loads(record["body"])["order"]
        handled.append(order)
        return {"done": order}

    process_batch(_sqs_batch(2), handle, store=store, config=BATCH_CONFIG)  # warm: scripts loaded
    records = _sqs_batch(10, duplicate_of={7: 3, 9: 3})  # orders 3, 7 and 9 share a key
    records = [{**r, "messageId": f"n-{i}"} for i, r in enumerate(records)]
    for r in records:
        r["body"] = json.dumps({"order": json.loads(r["body"])["order"] + 100})
    client.config_resetstat()
    CountingConnection.sends = 0
    result = process_batch(records, handle, store=store, config=BATCH_CONFIG)
    sends = CountingConnection.sends
    stats = client.info("commandstats")

    assert sends == 2  # every claim in one pipeline, every complete in one more
    # 8 distinct keys: 8 native claims (SET NX GET, no script) and 8 complete scripts
    # (each running one SET of its own).
    assert stats["cmdstat_evalsha"]["calls"] == 8
    assert stats["cmdstat_set"]["calls"] == 16
    assert sorted(handled[2:]) == [100, 101, 102, 103, 104, 105, 106, 108]
    assert [i.status for i in result.items] == [ItemStatus.RUN] * 7 + [
        ItemStatus.REPLAYED,
        ItemStatus.RUN,
        ItemStatus.REPLAYED,
    ]
    assert result.items[9].value == {"done": 103}
    assert result.batch_item_failures() == {"batchItemFailures": []}
    # The same batch again: all replayed, one round trip.
    CountingConnection.sends = 0
    again = process_batch(records, handle, store=store, config=BATCH_CONFIG)
    assert CountingConnection.sends == 1
    assert {i.status for i in again.items} == {ItemStatus.REPLAYED}
    client.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_batch_reports_failures_and_in_progress_records_for_redelivery(
    kind: str, tmp_path: Path, redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    if kind == "memory":
        store: Any = MemoryStore()
    elif kind == "sqlite":
        store = SQLiteStore(tmp_path / "b.sqlite3")
    else:
        store = RedisStore(redis_farm.standalone(redis_engine).client(), prefix=_prefix())
    config = IdempotencyConfig(
        event_key_jmespath="from_json(body).order",
        payload_validation_jmespath="from_json(body).amount",
        key_prefix="sqs",
    )
    records = _sqs_batch(4)
    for r in records:
        body = json.loads(r["body"])
        r["body"] = json.dumps({**body, "amount": 5})
    # Order 2 is held by a live claim elsewhere; order 3 was done with another amount.
    held = process_batch([records[2]], lambda r: 0, store=store, config=config)
    assert held.items[0].status is ItemStatus.RUN
    key2 = held.items[0].key
    assert key2 is not None
    store.delete(key2)
    store.claim(key2, token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    other = dict(records[3], body=json.dumps({"order": 3, "amount": 6}))
    process_batch([other], lambda r: "first", store=store, config=config)

    def handle(record: dict[str, Any]) -> str:
        order = json.loads(record["body"])["order"]
        if order == 1:
            raise ValueError("card declined")
        return f"ok {order}"

    result = process_batch(records, handle, store=store, config=config)
    statuses = [i.status for i in result.items]
    assert statuses == [
        ItemStatus.RUN,
        ItemStatus.FAILED,
        ItemStatus.IN_PROGRESS,
        ItemStatus.FAILED,
    ]
    assert isinstance(result.items[1].error, ValueError)
    assert isinstance(result.items[2].error, IdempotencyAlreadyInProgressError)
    assert isinstance(result.items[3].error, IdempotencyKeyReuseError)
    assert result.batch_item_failures() == {
        "batchItemFailures": [
            {"itemIdentifier": "m-1"},
            {"itemIdentifier": "m-2"},
            {"itemIdentifier": "m-3"},
        ]
    }
    # The failed record's claim was released: redelivered, it runs again.
    retry = process_batch([records[1]], lambda r: "paid", store=store, config=config)
    assert retry.items[0].status is ItemStatus.RUN
    assert retry.items[0].value == "paid"


def test_async_batch_costs_2_round_trips_and_runs_duplicates_once(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    handled: list[int] = []

    async def handle(record: dict[str, Any]) -> int:
        order = json.loads(record["body"])["order"]
        handled.append(order)
        await asyncio.sleep(0)
        return order

    async def main() -> tuple[Any, int]:
        client = _counting_async(port)
        store = AsyncRedisStore(client, prefix=_prefix())
        await process_batch_async(_sqs_batch(2), handle, store=store, config=BATCH_CONFIG)
        AsyncCountingConnection.sends = 0
        records = _sqs_batch(10, duplicate_of={5: 1})
        for r in records:
            r["body"] = json.dumps({"order": json.loads(r["body"])["order"] + 50})
        result = await process_batch_async(records, handle, store=store, config=BATCH_CONFIG)
        sends = AsyncCountingConnection.sends
        await client.aclose()
        return result, sends

    result, sends = asyncio.run(main())
    assert sends == 2
    assert sorted(handled[2:]) == [50, 51, 52, 53, 54, 56, 57, 58, 59]
    assert result.items[5].status is ItemStatus.REPLAYED
    assert result.items[5].value == 51


def test_batch_entry_points_check_the_handler_kind() -> None:
    async def async_handler(record: Any) -> None:
        return None

    with pytest.raises(IdempotencyConfigError):
        process_batch([{"messageId": "1"}], async_handler, store=MemoryStore())
    with pytest.raises(IdempotencyConfigError, match="is not async"):
        asyncio.run(
            process_batch_async(
                [{"messageId": "1"}],
                lambda r: r,
                store=AsyncMemoryStore(),
                config=IdempotencyConfig(key_prefix="sync"),  # a lambda needs a name
            )
        )
    with pytest.raises(IdempotencyConfigError):
        process_batch([], lambda r: r, store=MemoryStore(), lease_ms=0)
