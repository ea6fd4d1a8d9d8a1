"""Reclaim: entries left pending by a dead consumer are taken over by another, applied once.

A consumer SIGKILLed after its handler ran (nothing committed) leaves its
entries pending; once they have been idle past ``min_idle_ms``, another
consumer's reclaim scan (``XAUTOCLAIM``) takes them and applies each once.
Entries deleted or trimmed while pending are LOST and acknowledged.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from streams_support import (
    ScoreHandler,
    board,
    names,
    pending_ids,
    points,
    run_crash_worker,
    wait_idle,
    worker_address,
)

import redis_harness as harness
from onceonly.streams import ConsumerConfig, Effects, EntryStatus, StreamConsumer, StreamEntry
from onceonly.streams import scripts as stream_scripts
from onceonly.streams.redis_io import run_call
from testkit import RedisFarm

APPLIED, LOST = EntryStatus.APPLIED, EntryStatus.LOST
IDLE_MS = 200


def _kind_port(client: Any, engine: harness.Engine, farm: RedisFarm) -> tuple[str, int]:
    if isinstance(client, redis.RedisCluster):
        return "cluster", farm.cluster(engine).nodes[0].port
    return "standalone", farm.standalone(engine).port


def _consumer(client: Any, stream: str, group: str, handler: Any, name: str) -> StreamConsumer:
    return StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=handler,
        consumer=name,
        block_ms=0,
        min_idle_ms=IDLE_MS,
    )


def test_entries_of_a_killed_consumer_are_reclaimed_and_applied_once(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    events = [("a", 5), ("b", 3), ("a", 2)]
    ids = [client.xadd(stream, {"user": u, "points": p}).decode() for u, p in events]
    address = worker_address(topology, redis_engine, redis_farm)

    run_crash_worker(topology, address, stream, group, "w1", "handled")
    assert pending_ids(client, stream, group) == ids  # all on the dead w1
    assert client.exists(user + "a", user + "b", lb) == 0

    handler = ScoreHandler(user, lb)
    rescuer = _consumer(client, stream, group, handler, "w2")
    wait_idle(client, stream, group, IDLE_MS)
    results = rescuer.run_once()
    # Delivered to w1 (1), claimed by w2 (2).
    assert [(r.id, r.status, r.deliveries) for r in results] == [(i, APPLIED, 2) for i in ids]
    assert (points(client, user, "a"), points(client, user, "b")) == (7, 3)
    assert board(client, lb) == {"a": 7.0, "b": 3.0}
    assert pending_ids(client, stream, group) == []
    assert (rescuer.stats.reclaimed, rescuer.stats.applied) == (3, 3)

    # Nothing left to reclaim or read: a second pass changes nothing.
    assert rescuer.run_once() == []
    assert (points(client, user, "a"), points(client, user, "b")) == (7, 3)


def test_nothing_is_reclaimed_before_min_idle_ms(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    client.xadd(stream, {"user": "a", "points": 1})
    address = worker_address(topology, redis_engine, redis_farm)
    run_crash_worker(topology, address, stream, group, "w1", "handled")
    patient = StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=ScoreHandler(user, lb),
        consumer="w2",
        block_ms=0,
        min_idle_ms=3_600_000,
    )
    assert patient.run_once() == []
    assert patient.stats.reclaimed == 0
    assert len(pending_ids(client, stream, group)) == 1


def test_entries_deleted_or_trimmed_while_pending_are_lost_and_acknowledged(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": "a", "points": p}).decode() for p in (1, 2, 4)]
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "w1", {stream: ">"})  # w1 reads them all, then dies
    client.xdel(stream, ids[1])
    client.xtrim(stream, maxlen=1, approximate=False)  # drops ids[0]

    handler = ScoreHandler(user, lb)
    rescuer = _consumer(client, stream, group, handler, "w2")
    wait_idle(client, stream, group, IDLE_MS)
    results = rescuer.run_once()
    assert sorted((r.id, r.status) for r in results) == [
        (ids[0], LOST),
        (ids[1], LOST),
        (ids[2], APPLIED),
    ]
    assert handler.calls == [ids[2]]
    assert points(client, user, "a") == 4
    assert pending_ids(client, stream, group) == []
    stats = rescuer.stats
    assert (stats.reclaimed, stats.lost, stats.applied) == (3, 2, 1)


def _other_client(client: Any, engine: harness.Engine, farm: RedisFarm) -> Any:
    kind, port = _kind_port(client, engine, farm)
    if kind == "cluster":
        return redis.RedisCluster(host=harness.HOST, port=port)
    return redis.Redis(host=harness.HOST, port=port)


def test_entries_in_hand_are_not_reclaimed_while_a_slow_handler_runs(
    standalone_or_cluster: Any, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = standalone_or_cluster
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": u, "points": p}).decode() for u, p in (("a", 5), ("b", 3))]
    other = _other_client(client, redis_engine, redis_farm)
    idle_ms = 600
    rival = StreamConsumer(
        other,
        stream=stream,
        group=group,
        handler=ScoreHandler(user, lb),
        consumer="rival",
        block_ms=0,
        min_idle_ms=idle_ms,
    )
    score = ScoreHandler(user, lb)
    tries: list[list[Any]] = []

    def slow(entry: StreamEntry) -> Effects:
        # Both entries were read together; while the first is handled (and the
        # second waits in the batch), stay busy for well past min_idle_ms, then
        # let a rival try to reclaim them.
        if not tries:
            start = time.monotonic()
            while time.monotonic() < start + 3 * idle_ms / 1000:
                time.sleep(0.05)
            tries.append(rival.run_once())
        return score(entry)

    slowpoke = StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=slow,
        consumer="slowpoke",
        block_ms=0,
        min_idle_ms=idle_ms,
    )
    results = slowpoke.run_once()
    assert tries == [[]]  # the rival got nothing
    assert rival.stats.reclaimed == 0
    assert [(r.id, r.status, r.deliveries) for r in results] == [(i, APPLIED, 1) for i in ids]
    assert (points(client, user, "a"), points(client, user, "b")) == (5, 3)
    assert pending_ids(client, stream, group) == []
    other.close()


def test_one_heartbeat_thread_keeps_every_batch_in_hand_then_ends_when_idle(
    standalone: redis.Redis, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    other = _other_client(standalone, redis_engine, redis_farm)
    idle_ms = 600
    rival = StreamConsumer(
        other, stream=stream, group=group, handler=ScoreHandler(user, lb), consumer="rival",
        block_ms=0, min_idle_ms=idle_ms,
    )  # fmt: skip
    score = ScoreHandler(user, lb)
    seen: list[tuple[threading.Thread | None, list[Any]]] = []

    def slow(entry: StreamEntry) -> Effects:
        # Past min_idle_ms in the batch's first handler; then a rival tries to reclaim.
        if entry.fields["points"] == "1":
            time.sleep(3 * idle_ms / 1000)
            seen.append((slowpoke._heartbeat._thread, rival.run_once()))
        return score(entry)

    slowpoke = StreamConsumer(
        standalone, stream=stream, group=group, handler=slow, consumer="slowpoke", block_ms=0,
        min_idle_ms=idle_ms, batch_size=2,
    )  # fmt: skip
    for _ in range(2):  # two batches, each held past min_idle_ms
        for u, p in (("a", 1), ("b", 2)):
            standalone.xadd(stream, {"user": u, "points": p})
        assert {r.status for r in slowpoke.run_once()} == {APPLIED}
    assert [tried for _, tried in seen] == [[], []]  # the rival got nothing, either time
    (first, _), (second, _) = seen
    assert first is not None
    assert first is second  # the same thread beat for both batches
    assert (points(standalone, user, "a"), points(standalone, user, "b")) == (2, 4)
    first.join(timeout=30)  # a beat's time (200 ms) without a batch: it ends
    assert not first.is_alive()
    assert slowpoke._heartbeat._thread is None
    other.close()


def test_the_heartbeat_never_takes_back_an_entry_claimed_by_another(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, _, _, group = names()
    ids = [client.xadd(stream, {"n": n}).decode() for n in (1, 2)]
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "a", {stream: ">"})  # both on a, delivery 1
    client.xclaim(stream, group, "b", 0, [ids[0]])  # the first taken by b: delivery 2
    config = ConsumerConfig(stream, group, consumer="a")
    extended = run_call(client, stream_scripts.extend_call(config, [(i, 1) for i in ids]))
    assert extended == 1  # the second only
    rows = client.xpending_range(stream, group, min="-", max="+", count=10)
    owners = [(r["consumer"].decode(), r["times_delivered"]) for r in rows]
    assert owners == [("b", 2), ("a", 1)]  # JUSTID: a's count unchanged, so a's commit holds
