"""AsyncStreamConsumer on real servers: the same final state as the sync one, concurrently.

Runs on standalone, a 3-primary cluster and Sentinel, Redis 7 and Valkey 8,
with ``redis.asyncio`` clients.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
from streams_support import ScoreHandler, board, names, pending_ids, points, wait_idle

import redis_harness as harness
from onceonly.errors import IdempotencyConfigError
from onceonly.streams import (
    AsyncStreamConsumer,
    Effects,
    EntryStatus,
    StreamConsumer,
    StreamEntry,
)
from testkit import RedisFarm

APPLIED, DUPLICATE, FENCED = EntryStatus.APPLIED, EntryStatus.DUPLICATE, EntryStatus.FENCED


def _async_client(topology: str, engine: harness.Engine, farm: RedisFarm) -> Any:
    if topology == "standalone":
        server = farm.standalone(engine)
        return redis.asyncio.Redis(host=server.client_host(), port=server.port)
    if topology == "cluster":
        node = farm.cluster(engine).nodes[0]
        return redis.asyncio.RedisCluster(host=node.client_host(), port=node.port)
    sentinel = redis.asyncio.sentinel.Sentinel(farm.sentinel(engine).addresses(), socket_timeout=5)
    return sentinel.master_for(harness.SERVICE, socket_timeout=5)


async def _close(aclient: Any) -> None:
    """Close the client, and a Sentinel master's connections to its sentinels too."""
    await aclient.aclose()
    manager = getattr(getattr(aclient, "connection_pool", None), "sentinel_manager", None)
    for sentinel in manager.sentinels if manager is not None else ():
        await sentinel.aclose()


def _events(n: int, seed: int) -> list[tuple[str, str, int]]:
    """(event id, user, points), a fifth of them published twice."""
    rng = random.Random(seed)
    events = [(f"e{i}", f"u{rng.randrange(12)}", rng.randrange(1, 50)) for i in range(n)]
    return events + [e for e in events if rng.random() < 0.2]


def _publish_all(client: Any, stream: str, events: list[tuple[str, str, int]]) -> None:
    # Plain XADD (not publish): the repeats must reach the stream, as a
    # producer that does not deduplicate would append them.
    for event_id, user, pts in events:
        client.xadd(stream, {"event_id": event_id, "user": user, "points": pts})


def _state(client: Any, user_prefix: str, lb: str) -> tuple[dict[str, int], dict[str, float]]:
    users = {f"u{i}": points(client, user_prefix, f"u{i}") for i in range(12)}
    return users, board(client, lb)


def test_concurrency_32_gives_the_same_final_state_as_the_sync_consumer(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    events = _events(300, seed=13)
    sync_stream, sync_user, sync_lb, group = names()
    async_stream, async_user, async_lb, _ = names()
    _publish_all(client, sync_stream, events)
    _publish_all(client, async_stream, events)

    sync = StreamConsumer(
        client,
        stream=sync_stream,
        group=group,
        handler=ScoreHandler(sync_user, sync_lb),
        consumer="s",
        block_ms=0,
        event_id_field="event_id",
    )
    while sync.run_once():
        pass

    score = ScoreHandler(async_user, async_lb)
    running, most = 0, 0

    async def handler(entry: StreamEntry) -> Effects:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # let the other handlers of the batch run meanwhile
        running -= 1
        return score(entry)

    async def main() -> list[EntryStatus]:
        aclient = _async_client(topology, redis_engine, redis_farm)
        try:
            consumer = AsyncStreamConsumer(
                aclient,
                stream=async_stream,
                group=group,
                handler=handler,
                consumer="a",
                block_ms=0,
                event_id_field="event_id",
                concurrency=32,
            )
            statuses: list[EntryStatus] = []
            while batch := await consumer.run_once():
                statuses += [r.status for r in batch]
            return statuses
        finally:
            await _close(aclient)

    statuses = asyncio.run(main())
    assert most == 32
    unique = len({e[0] for e in events})
    assert statuses.count(APPLIED) == unique
    assert statuses.count(DUPLICATE) == len(events) - unique
    assert sync.stats.applied == unique
    assert _state(client, async_user, async_lb) == _state(client, sync_user, sync_lb)
    expected: dict[str, int] = {}
    for _, user, pts in {e[0]: e for e in events}.values():
        expected[user] = expected.get(user, 0) + pts
    assert {u: p for u, p in _state(client, async_user, async_lb)[0].items() if p} == expected
    assert pending_ids(client, async_stream, group) == []


def test_a_pass_cancelled_mid_batch_writes_nothing_and_a_restart_applies_once(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": u, "points": p}).decode() for u, p in (("a", 5), ("b", 3))]
    score = ScoreHandler(user, lb)

    async def main() -> list[Any]:
        aclient = _async_client(topology, redis_engine, redis_farm)
        try:
            started = asyncio.Event()

            async def stuck(entry: StreamEntry) -> Effects:
                started.set()
                await asyncio.Event().wait()  # never returns: the pass is killed here
                return score(entry)

            first = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=stuck, consumer="w1", block_ms=0
            )
            task = asyncio.ensure_future(first.run_once())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pending_ids(client, stream, group) == ids  # read, nothing committed
            assert client.exists(user + "a", user + "b", lb) == 0

            again = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=score, consumer="w1", block_ms=0
            )
            return [(r.id, r.status, r.deliveries) for r in await again.run_once()]
        finally:
            await _close(aclient)

    assert asyncio.run(main()) == [(i, APPLIED, 2) for i in ids]
    assert (points(client, user, "a"), points(client, user, "b")) == (5, 3)
    assert pending_ids(client, stream, group) == []


def test_a_late_commit_after_a_reclaim_is_fenced_and_a_redelivery_is_a_duplicate(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    entry_id = client.xadd(stream, {"user": "a", "points": 5}).decode()
    score = ScoreHandler(user, lb)

    async def main() -> tuple[Any, Any]:
        aclient = _async_client(topology, redis_engine, redis_farm)
        try:

            async def claimed_meanwhile(entry: StreamEntry) -> Effects:
                await aclient.xclaim(stream, group, "b", 0, [entry.id])  # b reclaims it
                return score(entry)

            a = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=claimed_meanwhile, consumer="a",
                block_ms=0,
            )  # fmt: skip
            late = [(r.id, r.status) for r in await a.run_once()]
            b = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=score, consumer="b", block_ms=0
            )
            first = [(r.id, r.status) for r in await b.run_once()]
            await aclient.xgroup_setid(stream, group, "0")  # the group rewound
            again = [(r.id, r.status) for r in await b.run_once()]
            return late, (first, again)
        finally:
            await _close(aclient)

    late, (first, again) = asyncio.run(main())
    assert late == [(entry_id, FENCED)]
    assert first == [(entry_id, APPLIED)]
    assert again == [(entry_id, DUPLICATE)]
    assert points(client, user, "a") == 5
    assert board(client, lb) == {"a": 5.0}


def test_the_async_consumer_reclaims_a_dead_consumers_entries(
    standalone_or_cluster: Any, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = standalone_or_cluster
    topology = "cluster" if isinstance(client, redis.RedisCluster) else "standalone"
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": "a", "points": p}).decode() for p in (1, 2)]
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "dead", {stream: ">"})
    wait_idle(client, stream, group, 200)

    async def main() -> list[Any]:
        aclient = _async_client(topology, redis_engine, redis_farm)
        try:
            rescuer = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=ScoreHandler(user, lb),
                consumer="alive", block_ms=0, min_idle_ms=200,
            )  # fmt: skip
            results = [(r.id, r.status, r.deliveries) for r in await rescuer.run_once()]
            assert rescuer.stats.reclaimed == 2
            return results
        finally:
            await _close(aclient)

    assert asyncio.run(main()) == [(i, APPLIED, 2) for i in ids]
    assert points(client, user, "a") == 3
    assert pending_ids(client, stream, group) == []


def test_the_async_consumer_refuses_a_sync_client_and_a_bad_concurrency() -> None:
    stream, _, _, group = names()
    with pytest.raises(IdempotencyConfigError, match="sync client"):
        AsyncStreamConsumer(redis.Redis(), stream=stream, group=group, handler=print)
    for bad in (0, 1001, 2.0, True):
        with pytest.raises(IdempotencyConfigError, match="concurrency"):
            AsyncStreamConsumer(
                redis.asyncio.Redis(), stream=stream, group=group, handler=print,
                concurrency=bad,  # type: ignore[arg-type]
            )  # fmt: skip
