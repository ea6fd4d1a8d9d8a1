"""StreamConsumer on real servers: a batch applies once, a redelivery is a duplicate.

Every test here runs on standalone, a 3-primary cluster and Sentinel, for
each engine (Redis 7, Valkey 8).
"""

from __future__ import annotations

from typing import Any

from streams_support import ScoreHandler, board, names, pending_ids, points

from onceonly.streams import EntryStatus, StreamConsumer, StreamEntry, scripts

APPLIED, DUPLICATE, FAILED = EntryStatus.APPLIED, EntryStatus.DUPLICATE, EntryStatus.FAILED


def _consumer(client: Any, stream: str, group: str, handler: Any, **options: Any) -> StreamConsumer:
    options.setdefault("block_ms", 0)
    options.setdefault("consumer", "c1")
    return StreamConsumer(client, stream=stream, group=group, handler=handler, **options)


def test_a_batch_applies_once_and_a_rewound_group_gets_only_duplicates(client: Any) -> None:
    stream, user, lb, group = names()
    handler = ScoreHandler(user, lb)
    consumer = _consumer(client, stream, group, handler)
    ids = [
        client.xadd(stream, {"user": u, "points": p}).decode()
        for u, p in [("a", 5), ("b", 3), ("a", 2)]
    ]

    results = consumer.run_once()  # drains (nothing of its own pending) then reads new
    assert [(r.id, r.status) for r in results] == [(i, APPLIED) for i in ids]
    assert [r.deliveries for r in results] == [1, 1, 1]
    assert (points(client, user, "a"), points(client, user, "b")) == (7, 3)
    assert board(client, lb) == {"a": 7.0, "b": 3.0}
    assert pending_ids(client, stream, group) == []

    # The group is rewound (an operator's XGROUP SETID, a group made again):
    # every entry comes again as new, and each is only acknowledged.
    client.xgroup_setid(stream, group, "0")
    again = consumer.run_once()
    assert [(r.id, r.status) for r in again] == [(i, DUPLICATE) for i in ids]
    assert (points(client, user, "a"), points(client, user, "b")) == (7, 3)
    assert board(client, lb) == {"a": 7.0, "b": 3.0}
    assert pending_ids(client, stream, group) == []
    assert len(handler.calls) == 6  # handled again, applied once
    stats = consumer.stats
    assert (stats.read, stats.applied, stats.duplicates) == (6, 3, 3)
    assert consumer.run_once() == []


def test_the_dedup_record_names_the_delivery_that_applied_it(client: Any) -> None:
    # scripts.mark is the format the commit script writes: a retried commit
    # (its reply lost) finds its own delivery there and answers DUPLICATE 'retried'.
    stream, user, lb, group = names()
    consumer = _consumer(client, stream, group, ScoreHandler(user, lb), event_id_field="event_id")
    entry_id = client.xadd(stream, {"event_id": "e1", "user": "a", "points": 5}).decode()
    assert [r.status for r in consumer.run_once()] == [APPLIED]
    record = client.get(consumer.config.dedup_key("e1"))
    assert record.decode() == scripts.mark(entry_id, 1, "c1")
    assert 0 < client.pttl(consumer.config.dedup_key("e1")) <= consumer.config.dedup_ttl_ms


def test_an_event_appended_twice_is_applied_once_by_its_event_id(client: Any) -> None:
    stream, user, lb, group = names()
    consumer = _consumer(client, stream, group, ScoreHandler(user, lb), event_id_field="event_id")
    first = client.xadd(stream, {"event_id": "e1", "user": "a", "points": 5}).decode()
    second = client.xadd(stream, {"event_id": "e1", "user": "a", "points": 5}).decode()
    other = client.xadd(stream, {"event_id": "e2", "user": "a", "points": 1}).decode()

    results = consumer.run_once()
    assert [(r.id, r.event_id, r.status) for r in results] == [
        (first, "e1", APPLIED),
        (second, "e1", DUPLICATE),
        (other, "e2", APPLIED),
    ]
    assert points(client, user, "a") == 6
    assert pending_ids(client, stream, group) == []


def test_a_handler_that_returns_none_still_records_and_acknowledges(client: Any) -> None:
    stream, _, _, group = names()
    seen: list[str] = []

    def handler(entry: StreamEntry) -> None:
        seen.append(entry.fields["n"])

    consumer = _consumer(client, stream, group, handler)
    entry_id = client.xadd(stream, {"n": "1"}).decode()
    assert [r.status for r in consumer.run_once()] == [APPLIED]
    client.xgroup_setid(stream, group, "0")
    assert [r.status for r in consumer.run_once()] == [DUPLICATE]
    assert seen == ["1", "1"]
    assert client.exists(consumer.config.dedup_key(entry_id)) == 1


def test_a_handler_error_leaves_the_entry_pending_and_records_the_error(client: Any) -> None:
    stream, user, lb, group = names()
    score = ScoreHandler(user, lb)

    def handler(entry: StreamEntry) -> Any:
        if entry.fields["user"] == "bad":
            raise ValueError("no such user")
        return score(entry)

    consumer = _consumer(client, stream, group, handler)
    good = client.xadd(stream, {"user": "a", "points": 1}).decode()
    bad = client.xadd(stream, {"user": "bad", "points": 1}).decode()
    results = consumer.run_once()
    assert [(r.id, r.status) for r in results] == [(good, APPLIED), (bad, FAILED)]
    assert results[1].error == "ValueError: no such user"
    assert pending_ids(client, stream, group) == [bad]
    assert client.get(consumer.config.error_key(bad)) == b"ValueError: no such user"
    assert consumer.stats.failed == 1

    # A restarted process (same consumer name) drains its own pending entries
    # first: the failed one comes back as its second delivery.
    fixed = _consumer(client, stream, group, score)
    (result,) = fixed.run_once()
    assert (result.id, result.status, result.deliveries) == (bad, APPLIED, 2)
    assert points(client, user, "bad") == 1
    assert client.exists(consumer.config.error_key(bad)) == 0  # cleared by the commit
    assert pending_ids(client, stream, group) == []


def test_a_missing_event_id_field_fails_the_entry_without_calling_the_handler(
    client: Any,
) -> None:
    stream, user, lb, group = names()
    handler = ScoreHandler(user, lb)
    consumer = _consumer(client, stream, group, handler, event_id_field="event_id")
    entry_id = client.xadd(stream, {"user": "a", "points": 1}).decode()
    (result,) = consumer.run_once()
    assert (result.id, result.status) == (entry_id, FAILED)
    assert result.error is not None
    assert "'event_id'" in result.error
    assert handler.calls == []
    assert pending_ids(client, stream, group) == [entry_id]


def test_a_handler_that_returns_something_else_fails_the_entry(client: Any) -> None:
    stream, _, _, group = names()
    consumer = _consumer(client, stream, group, lambda entry: {"not": "effects"})
    entry_id = client.xadd(stream, {"n": 1}).decode()
    (result,) = consumer.run_once()
    assert (result.status, result.error) == (
        FAILED,
        "TypeError: the handler must return Effects or None, got dict",
    )
    assert pending_ids(client, stream, group) == [entry_id]


def test_a_deleted_group_is_made_again_and_its_entries_are_only_acknowledged(
    client: Any,
) -> None:
    stream, user, lb, group = names()
    handler = ScoreHandler(user, lb)
    consumer = _consumer(client, stream, group, handler)
    ids = [client.xadd(stream, {"user": "a", "points": 5}).decode() for _ in range(2)]
    assert [r.status for r in consumer.run_once()] == [APPLIED, APPLIED]

    client.xgroup_destroy(stream, group)  # an operator's mistake, or a cleanup script
    new = client.xadd(stream, {"user": "a", "points": 1}).decode()
    results = consumer.run_once()  # NOGROUP: made again from "0", read again
    assert [(r.id, r.status) for r in results] == [
        (ids[0], DUPLICATE),
        (ids[1], DUPLICATE),
        (new, APPLIED),
    ]
    assert points(client, user, "a") == 11
    assert pending_ids(client, stream, group) == []
