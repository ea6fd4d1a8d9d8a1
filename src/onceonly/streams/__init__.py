"""Redis Streams consumers whose effects are applied exactly once, and ``publish``.

A handler returns its Redis writes as data (:class:`Effects`); the consumer
applies them in one Lua script with the event's dedup record and the entry's
``XACK``, so a crash at any point leaves all of them or none, and an entry
delivered again (to this consumer after a restart, or to another after a
reclaim) is applied once::

    import redis
    from onceonly.streams import Effects, StreamConsumer, publish

    r = redis.Redis()
    publish(r, "{p3}:profile-events", {"user": "42", "points": "5"}, event_id="evt-1")

    def on_event(entry):
        user = entry.fields["user"]
        points = int(entry.fields["points"])
        return (
            Effects()
            .hincrby(f"{{p3}}:user:{user}", "points", points)
            .zincrby("{p3}:leaderboard", points, user)
        )

    consumer = StreamConsumer(
        r, stream="{p3}:profile-events", group="profiles", handler=on_event
    )
    results = consumer.run_once()  # or consumer.run() until consumer.stop()

:class:`AsyncStreamConsumer` is the same with a ``redis.asyncio`` client; its
handler may be an ``async def``, and up to ``concurrency`` handlers of a batch
run at once.

Entries left pending on a consumer that died are taken over by the others:
each pass of a consumer drains its own pending entries (after a restart
under the same name), then, every ``min_idle_ms``, scans the group for
entries idle that long (``XAUTOCLAIM``, a page of at most ``batch_size`` per
pass) and handles them as its own; the first owner's late commit is then
FENCED. While a batch is in hand (its handlers running, its entries waiting
in the batch, its commits in flight), a heartbeat resets their idle time
every ``min_idle_ms / 3`` (``XCLAIM ... JUSTID`` to itself, which keeps the
delivery count), so a slow handler's entries are not reclaimed from under it.

``run()`` stops on ``stop()`` (from any thread) or SIGTERM / SIGINT (when
called in the main thread): the handlers running finish and their commits
are sent, the rest of the batch stays pending, nothing new is read. ``status()`` gives
the group's pending count and lag (``XINFO GROUPS``) with the counts.

Every key of one consumer (the stream, its dedup and error records, the
dead-letter stream, the effects' keys) must be in the stream's Redis Cluster
hash slot: give them the stream's hash tag (``{p3}`` above) and use one stream
per partition. The consumer checks that before anything is sent, and names
the key that breaks it.

Per entry, one of :class:`EntryStatus`: APPLIED, DUPLICATE (applied before:
acknowledged only), FENCED (reclaimed by another consumer: nothing written),
LOST (deleted while pending: acknowledged), DEAD (delivered more than
``max_deliveries`` times: moved to the dead-letter stream with its fields,
delivery count and last error, and acknowledged, in one script), FAILED (the
handler raised or an effect would fail: nothing written, it stays pending).

ACL: a consumer's user needs the key pattern of its stream's tag (e.g.
``~{p3}:*``) and ``+xgroup|create +xreadgroup +evalsha +eval +xpending
+xautoclaim +xclaim +xinfo|groups +xack +xrange +xadd +get +set +del +type
+hget`` plus the commands its effects use (``+hincrby +zincrby`` above); a
producer's needs ``+evalsha +eval +get +set +xadd`` (``CONSUMER_ACL_COMMANDS``
and ``PUBLISH_ACL_COMMANDS`` in ``onceonly.streams.config``). A ``RedisCluster``
client also sends ``CLUSTER SLOTS`` / ``CLUSTER SHARDS`` and ``COMMAND`` when
it starts.

redis-py is imported when a consumer is built or ``publish`` is called, not
by this import (``pip install 'onceonly[redis]'``).
"""

from .async_consumer import AsyncStreamConsumer
from .config import ConsumerConfig
from .consumer import StreamConsumer
from .effects import Effects
from .model import EntryResult, EntryStatus, StreamEntry, StreamStats, StreamStatus
from .publish import apublish, publish

__all__ = [
    "AsyncStreamConsumer",
    "ConsumerConfig",
    "Effects",
    "EntryResult",
    "EntryStatus",
    "StreamConsumer",
    "StreamEntry",
    "StreamStats",
    "StreamStatus",
    "apublish",
    "publish",
]
