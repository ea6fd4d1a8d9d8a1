"""publish / apublish: one entry per event id, a lost reply included."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from streams_support import ScoreHandler, names, points

import redis_harness as harness
from faults.proxy import ReplyDropProxy
from onceonly.errors import IdempotencyConfigError, IdempotencyKeyReuseError
from onceonly.streams import EntryStatus, StreamConsumer, apublish, publish
from onceonly.streams.config import published_key
from testkit import RedisFarm


def test_publishing_twice_with_one_event_id_appends_one_entry(client: Any) -> None:
    stream, _, _, _ = names()
    first = publish(client, stream, {"user": "a", "points": 5}, event_id="e1")
    again = publish(client, stream, {"points": 5, "user": "a"}, event_id="e1")  # any order
    assert again == first
    assert client.xlen(stream) == 1
    other = publish(client, stream, {"user": "a", "points": 5}, event_id="e2")
    assert other != first
    assert client.xlen(stream) == 2
    assert client.pttl(published_key(stream, "e1")) > 86_000_000  # the default day


def test_an_event_id_reused_with_other_fields_raises_and_appends_nothing(client: Any) -> None:
    stream, _, _, _ = names()
    first = publish(client, stream, {"user": "a", "points": 5}, event_id="e1")
    with pytest.raises(IdempotencyKeyReuseError, match=f"'e1' was published before .*{first}"):
        publish(client, stream, {"user": "a", "points": 6}, event_id="e1")
    with pytest.raises(IdempotencyKeyReuseError):
        publish(client, stream, {"user": "a", "points": 5, "extra": 1}, event_id="e1")
    assert client.xlen(stream) == 1


def test_published_events_are_applied_once_by_a_consumer(client: Any) -> None:
    stream, user, lb, group = names()
    for event_id, who, p in [("e1", "a", 5), ("e2", "b", 3), ("e1", "a", 5)]:
        publish(client, stream, {"id": event_id, "user": who, "points": p}, event_id=event_id)
    consumer = StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=ScoreHandler(user, lb),
        consumer="c1",
        block_ms=0,
        event_id_field="id",
    )
    assert [r.status for r in consumer.run_once()] == [EntryStatus.APPLIED] * 2
    assert (points(client, user, "a"), points(client, user, "b")) == (5, 3)


def test_maxlen_trims_the_stream_about_there(standalone: redis.Redis) -> None:
    stream, _, _, _ = names()
    for i in range(300):
        publish(standalone, stream, {"n": i}, event_id=f"e{i}", maxlen=10)
    assert 10 <= standalone.xlen(stream) < 300  # MAXLEN ~ trims whole nodes


@pytest.fixture
def proxy(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[ReplyDropProxy]:
    """A reply-dropping proxy in front of the engine's standalone server."""
    with ReplyDropProxy(redis_farm.standalone(redis_engine).port) as p:
        yield p


def test_a_publish_whose_reply_is_lost_appends_once_and_returns_the_first_id(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, _, _, _ = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port, retry=Retry(NoBackoff(), 3))
    publish(client, stream, {"warm": 1}, event_id="warm")  # the script is cached
    proxy.drop_replies(1, commands={"EVALSHA"})
    entry_id = publish(client, stream, {"user": "a"}, event_id="e1")  # retried by the client
    assert proxy.dropped == 1
    assert standalone.xlen(stream) == 2
    last = standalone.xrevrange(stream, count=1)[0]
    assert (last[0].decode(), last[1]) == (entry_id, {b"user": b"a"})
    client.close()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_apublish_appends_once_per_event_id(
    kind: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, _, _, _ = names()

    async def main() -> tuple[str, str, int]:
        if kind == "cluster":
            node = redis_farm.cluster(redis_engine).nodes[0]
            client: Any = redis.asyncio.RedisCluster(host=harness.HOST, port=node.port)
        else:
            server = redis_farm.standalone(redis_engine)
            client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        try:
            first = await apublish(client, stream, {"user": "a"}, event_id="e1")
            again = await apublish(client, stream, {"user": "a"}, event_id="e1")
            with pytest.raises(IdempotencyKeyReuseError):
                await apublish(client, stream, {"user": "b"}, event_id="e1")
            return first, again, int(await client.xlen(stream))
        finally:
            await client.aclose()

    first, again, length = asyncio.run(main())
    assert first == again
    assert length == 1


def test_bad_arguments_are_refused_before_any_call(standalone: redis.Redis) -> None:
    with pytest.raises(IdempotencyConfigError, match="event_id"):
        publish(standalone, "{a}:s", {"f": 1}, event_id="")
    with pytest.raises(IdempotencyConfigError, match="maxlen"):
        publish(standalone, "{a}:s", {"f": 1}, event_id="e", maxlen=0)
    with pytest.raises(TypeError, match="non-empty mapping"):
        publish(standalone, "{a}:s", {}, event_id="e")
    with pytest.raises(TypeError, match="must be str, bytes, int or float"):
        publish(standalone, "{a}:s", {"f": None}, event_id="e")  # type: ignore[dict-item]
    with pytest.raises(IdempotencyConfigError, match="asyncio client"):
        publish(redis.asyncio.Redis(), "{a}:s", {"f": 1}, event_id="e")
    assert standalone.exists("{a}:s") == 0
