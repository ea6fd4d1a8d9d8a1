"""Dead letters (one script: copy with fields, count and error, then XACK) and LOST entries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from streams_support import names, pending_ids

import redis_harness as harness
from faults.proxy import ReplyDropProxy
from onceonly.streams import EntryStatus, StreamConsumer, StreamEntry
from onceonly.streams import scripts as stream_scripts
from onceonly.streams.redis_io import run_call
from testkit import RedisFarm

DEAD, FAILED, LOST = EntryStatus.DEAD, EntryStatus.FAILED, EntryStatus.LOST
HANDSHAKE = {"HELLO", "CLIENT", "AUTH", "SELECT"}  # what redis-py sends on a new connection


class Failing:
    """A handler that always raises, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, entry: StreamEntry) -> None:
        self.calls += 1
        raise ValueError(f"bad payload (call {self.calls})")


def _consumer(client: Any, stream: str, group: str, handler: Any, **options: Any) -> StreamConsumer:
    return StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=handler,
        consumer="c1",
        block_ms=0,
        max_deliveries=2,
        **options,
    )


def _letters(client: Any, key: str) -> list[tuple[str, list[tuple[bytes, bytes]]]]:
    """The dead-letter stream's entries, fields in order (duplicates kept)."""
    out = []
    # Through EVAL: redis-py's XRANGE parser makes a dict of the fields (and drops duplicates).
    for entry_id, flat in client.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, key):
        pairs = list(zip(flat[::2], flat[1::2], strict=True))
        out.append((entry_id.decode(), pairs))
    return out


def test_an_entry_past_max_deliveries_is_dead_lettered_with_its_fields_count_and_error(
    client: Any,
) -> None:
    stream, _, _, group = names()
    handler = Failing()
    entry_id = client.xadd(stream, {"user": "a", "points": "5"}).decode()

    # Delivery 1 (new), then 2 (a restart drains its own pending entries): both fail.
    assert [r.status for r in _consumer(client, stream, group, handler).run_once()] == [FAILED]
    assert [r.status for r in _consumer(client, stream, group, handler).run_once()] == [FAILED]
    # Delivery 3 > max_deliveries: moved without calling the handler.
    last = _consumer(client, stream, group, handler)
    (result,) = last.run_once()
    assert (result.id, result.status, result.deliveries) == (entry_id, DEAD, 3)
    assert handler.calls == 2
    assert pending_ids(client, stream, group) == []
    ((letter_id, fields),) = _letters(client, last.config.dead_letters)
    assert result.dead_letter_id == letter_id
    assert fields == [
        (b"onceonly.stream", stream.encode()),
        (b"onceonly.group", group.encode()),
        (b"onceonly.id", entry_id.encode()),
        (b"onceonly.consumer", b"c1"),
        (b"onceonly.deliveries", b"3"),
        (b"onceonly.error", b"ValueError: bad payload (call 2)"),
        (b"user", b"a"),
        (b"points", b"5"),
    ]
    assert last.config.dead_letters == stream + ":profiles:dead"
    assert last.stats.dead == 1


@pytest.fixture
def proxy(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[ReplyDropProxy]:
    """A reply-dropping proxy in front of the engine's standalone server."""
    with ReplyDropProxy(redis_farm.standalone(redis_engine).port) as p:
        yield p


def test_the_dead_letter_move_is_one_script_call(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, _, _, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port)
    client.xadd(stream, {"user": "a"})
    handler = Failing()
    for _ in range(2):
        _consumer(client, stream, group, handler).run_once()
    consumer = _consumer(client, stream, group, handler)
    consumer.ensure_group()
    proxy.commands_seen.clear()
    (result,) = consumer.run_once()
    assert result.status is DEAD
    # What went to the server: the pending read and the move, one script call
    # each; never a separate XADD or XACK that a crash could split.
    assert proxy.commands_seen == ["EVALSHA", "EVALSHA"]
    assert pending_ids(standalone, stream, group) == []
    client.close()


def test_a_dead_letter_move_whose_reply_is_lost_is_sent_again_and_moves_once(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, _, _, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port, retry=Retry(NoBackoff(), 3))
    entry_id = client.xadd(stream, {"user": "a"}).decode()
    handler = Failing()
    for _ in range(2):
        _consumer(client, stream, group, handler).run_once()  # pending on c1, delivery 2
    config = _consumer(client, stream, group, handler).config
    call = stream_scripts.dead_letter_call(config, entry_id, 2)
    proxy.commands_seen.clear()
    proxy.drop_replies(1, commands={"EVALSHA"})
    code, letter = stream_scripts.script_reply(run_call(client, call))
    assert proxy.dropped == 1
    # The move, then the client's retry (on a new connection: its handshake aside).
    assert [c for c in proxy.commands_seen if c not in HANDSHAKE] == ["EVALSHA", "EVALSHA"]
    # The retry finds the move done (the entry's tombstone) and answers with its letter.
    assert code is stream_scripts.Code.DEAD
    ((letter_id, fields),) = _letters(standalone, config.dead_letters)
    assert letter == letter_id
    assert (b"onceonly.deliveries", b"2") in fields
    assert pending_ids(standalone, stream, group) == []
    client.close()


def test_a_refused_dead_letter_move_writes_nothing_and_acknowledges_nothing(
    standalone: redis.Redis,
) -> None:
    stream, _, _, group = names()
    entry_id = standalone.xadd(stream, {"user": "a"}).decode()
    handler = Failing()
    for _ in range(2):
        _consumer(standalone, stream, group, handler).run_once()
    consumer = _consumer(standalone, stream, group, handler)
    standalone.hset(consumer.config.dead_letters, "not", "a stream")
    (result,) = consumer.run_once()
    assert result.status is FAILED
    assert result.error == f"the dead-letter stream {consumer.config.dead_letters} holds a hash"
    assert pending_ids(standalone, stream, group) == [entry_id]
    assert (
        standalone.get(consumer.config.error_key(entry_id)) == b"ValueError: bad payload (call 2)"
    )


@pytest.mark.parametrize("how", ["xdel", "xtrim"])
def test_a_pending_entry_deleted_before_it_was_handled_is_lost_and_acknowledged(
    client: Any, how: str
) -> None:
    stream, _, _, group = names()
    handler = Failing()
    gone = client.xadd(stream, {"user": "a"}).decode()
    kept = client.xadd(stream, {"user": "b"}).decode()
    _consumer(client, stream, group, handler).run_once()  # both fail: pending on c1
    if how == "xdel":
        client.xdel(stream, gone)
    else:
        client.xtrim(stream, maxlen=1, approximate=False)
    restarted = _consumer(client, stream, group, handler)
    results = restarted.run_once()
    assert [(r.id, r.status) for r in results] == [(gone, LOST), (kept, FAILED)]
    assert handler.calls == 3  # the lost entry was not handed to the handler
    assert pending_ids(client, stream, group) == [kept]
    assert restarted.stats.lost == 1
