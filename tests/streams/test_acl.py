"""ACL users limited to the stream's keys and the documented commands are enough.

A producer (``PUBLISH_ACL_COMMANDS``) and a consumer (``CONSUMER_ACL_COMMANDS``
plus the commands its effects use), each with only the key pattern of the
stream's hash tag, run every path: publish, apply, duplicate, a refused
effect (TYPE, GET, HGET inside the script), a failed entry's error record, a
dead letter (XRANGE, XADD). A consumer missing one command is told what it
needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from streams_support import ScoreHandler, board, pending_ids, points, tag

import redis_harness as harness
from onceonly.streams import Effects, EntryStatus, StreamConsumer, StreamEntry, publish
from onceonly.streams.config import CONSUMER_ACL_COMMANDS, PUBLISH_ACL_COMMANDS

EFFECT_COMMANDS = ("HINCRBY", "ZINCRBY")


def _rule(name: str, pattern: str, commands: tuple[str, ...]) -> str:
    allowed = " ".join("+" + c.lower() for c in commands)
    return f"user {name} on >pw-{name} ~{pattern} resetchannels -@all {allowed}"


@pytest.fixture
def acl(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A server of its own with a producer, a consumer and a consumer without XPENDING."""
    t = tag()
    pattern = f"{{{t}}}:*"
    consumer = (*CONSUMER_ACL_COMMANDS, *EFFECT_COMMANDS)
    rules = [
        _rule("producer", pattern, PUBLISH_ACL_COMMANDS),
        _rule("consumer", pattern, consumer),
        _rule("short", pattern, tuple(c for c in consumer if c != "XPENDING")),
    ]
    server = harness.standalone(
        redis_engine, tmp_path / "acl", extra=["user default on nopass ~* &* +@all", *rules]
    )
    try:
        yield server.port, t
    finally:
        server.stop()


def _as(port: int, user: str) -> redis.Redis:
    return redis.Redis(host=harness.HOST, port=port, username=user, password=f"pw-{user}")


def test_the_documented_commands_and_the_tags_key_pattern_are_enough(
    acl: tuple[int, str],
) -> None:
    port, t = acl
    stream, user, lb = f"{{{t}}}:events", f"{{{t}}}:user:", f"{{{t}}}:leaderboard"
    admin = redis.Redis(host=harness.HOST, port=port)
    producer, consumer_client = _as(port, "producer"), _as(port, "consumer")
    try:
        for event_id, who, p in [("e1", "a", 5), ("e2", "b", 3), ("e1", "a", 5), ("e3", "c", 1)]:
            publish(producer, stream, {"id": event_id, "user": who, "points": p}, event_id=event_id)
        publish(producer, stream, {"id": "bad", "user": "x", "points": 0}, event_id="bad")
        admin.set(user + "c", "a string, not a hash")  # e3's HINCRBY is refused
        score = ScoreHandler(user, lb)

        def handler(entry: StreamEntry) -> Effects:
            if entry.fields["id"] == "bad":
                raise ValueError("bad event")
            return score(entry)

        def run() -> list[tuple[str, EntryStatus]]:
            consumer = StreamConsumer(
                consumer_client,
                stream=stream,
                group="g",
                handler=handler,
                consumer="c1",
                block_ms=0,
                event_id_field="id",
                max_deliveries=1,
            )
            return [(str(r.event_id), r.status) for r in consumer.run_once()]

        assert run() == [
            ("e1", EntryStatus.APPLIED),
            ("e2", EntryStatus.APPLIED),
            ("e3", EntryStatus.FAILED),
            ("bad", EntryStatus.FAILED),
        ]
        admin.delete(user + "c")
        statuses = {status for _, status in run()}  # delivery 2 > max_deliveries
        assert statuses == {EntryStatus.DEAD}
        assert admin.xlen(f"{stream}:g:dead") == 2
        assert pending_ids(admin, stream, "g") == []
        # Every entry again: the applied ones are duplicates; a dead-lettered one
        # was never applied, so it runs again (and e3's key is a hash now).
        admin.xgroup_setid(stream, "g", "0")
        assert run() == [
            ("e1", EntryStatus.DUPLICATE),
            ("e2", EntryStatus.DUPLICATE),
            ("e3", EntryStatus.APPLIED),
            ("bad", EntryStatus.FAILED),
        ]
        assert [points(admin, user, u) for u in "abc"] == [5, 3, 1]
        assert board(admin, lb) == {"a": 5.0, "b": 3.0, "c": 1.0}
    finally:
        for c in (admin, producer, consumer_client):
            c.close()


def test_a_consumer_without_a_needed_command_is_told_what_it_needs(acl: tuple[int, str]) -> None:
    port, t = acl
    stream = f"{{{t}}}:events"
    admin, short = redis.Redis(host=harness.HOST, port=port), _as(port, "short")
    try:
        admin.xadd(stream, {"n": "1"})
        consumer = StreamConsumer(
            short, stream=stream, group="g", handler=lambda e: None, consumer="c1", block_ms=0
        )
        # The commit script calls XPENDING: the entry FAILED, and says why.
        (result,) = consumer.run_once()
        assert result.status is EntryStatus.FAILED
        text = str(result.error)
        assert "(ACL)" in text
        assert "+xpending" in text
        assert "+xreadgroup" in text
        assert "pw-" not in text
    finally:
        admin.close()
        short.close()
