"""status(): the group's pending count and lag from the server, with the consumer's counts.

And the warning at construction when a blocking read would outlast the
client's socket timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio
from streams_support import ScoreHandler, names

import redis_harness as harness
from onceonly.errors import IdempotencyStoreError, OnceOnlyWarning
from onceonly.naming import display_name
from onceonly.streams import AsyncStreamConsumer, Effects, StreamConsumer, StreamEntry
from testkit import RedisFarm


def test_status_reports_pending_lag_consumers_and_counts(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": "a", "points": p}).decode() for p in range(1, 6)]
    score = ScoreHandler(user, lb)

    def handler(entry: StreamEntry) -> Effects:
        if entry.id == ids[1]:
            raise RuntimeError("not now")  # stays pending
        return score(entry)

    consumer = StreamConsumer(
        client, stream=stream, group=group, handler=handler, consumer="c", block_ms=0,
        batch_size=2,
    )  # fmt: skip
    with pytest.raises(IdempotencyStoreError, match="no consumer group"):
        consumer.status()  # the group is made by the first pass
    with caplog.at_level(logging.WARNING, logger="onceonly"):
        consumer.run_once()
    # The failed entry's record: the handler's name, the outcome, the consumer's kind.
    (failed,) = [r for r in caplog.records if "handler raised" in r.getMessage()]
    assert ids[1] in failed.getMessage()
    assert failed.onceonly_function == display_name(handler)  # type: ignore[attr-defined]
    assert failed.onceonly_outcome == "failed"  # type: ignore[attr-defined]
    assert failed.onceonly_store == "StreamConsumer"  # type: ignore[attr-defined]
    assert failed.onceonly_key_digest is None  # type: ignore[attr-defined]
    status = consumer.status()
    assert (status.pending, status.lag, status.consumers) == (1, 3, 1)
    assert status.last_delivered_id == ids[1]
    assert (status.stats.read, status.stats.applied, status.stats.failed) == (2, 1, 1)


def test_the_async_status_matches(
    standalone_or_cluster: Any, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    from test_async_consumer import _async_client, _close

    client = standalone_or_cluster
    topology = "cluster" if isinstance(client, redis.RedisCluster) else "standalone"
    stream, user, lb, group = names()
    for p in (1, 2, 3):
        client.xadd(stream, {"user": "a", "points": p})

    async def main() -> Any:
        aclient = _async_client(topology, redis_engine, redis_farm)
        try:
            consumer = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=ScoreHandler(user, lb),
                consumer="c", block_ms=0, batch_size=2,
            )  # fmt: skip
            await consumer.run_once()
            return await consumer.status()
        finally:
            await _close(aclient)

    status = asyncio.run(main())
    assert (status.pending, status.lag, status.consumers, status.stats.applied) == (0, 1, 1, 2)


def test_a_socket_timeout_not_above_block_ms_warns_at_construction() -> None:
    stream, _, _, group = names()
    short = redis.Redis(socket_timeout=1)
    with pytest.warns(OnceOnlyWarning, match="socket_timeout"):
        StreamConsumer(short, stream=stream, group=group, handler=print, block_ms=1000)
    with pytest.warns(OnceOnlyWarning, match="socket_timeout"):
        AsyncStreamConsumer(
            redis.asyncio.RedisCluster(host="127.0.0.1", port=1, socket_timeout=2),
            stream=stream, group=group, handler=print, block_ms=2000,
        )  # fmt: skip
    # Above block_ms, no timeout at all, or a read that does not block: no warning.
    StreamConsumer(redis.Redis(socket_timeout=3), stream=stream, group=group, handler=print)
    StreamConsumer(redis.Redis(), stream=stream, group=group, handler=print)
    StreamConsumer(short, stream=stream, group=group, handler=print, block_ms=0)
    short.close()
