"""A crash between any two steps leaves the effects applied exactly once after recovery.

The steps of one entry: read -> handler -> commit script (effects + dedup
record + XACK, atomically) -> reply. The crash points:

- the handler is done, the script not sent: a real process SIGKILLs itself;
  the entries stay pending, nothing is written; the restarted consumer (or
  one that claimed them) applies them once;
- the script ran, its reply was lost (a proxy closes the connection in place
  of the reply): the client's retry, or the next pass, finds them DUPLICATE
  or gone, and the state is applied once;
- the script ran and the process is SIGKILLed after it: nothing is pending,
  the state is applied once and stays so.

And fencing: an entry another consumer claimed while its first reader was
busy is refused (FENCED) to the late commit of that first reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from streams_support import (
    ScoreHandler,
    board,
    names,
    pending_ids,
    points,
    run_crash_worker,
    worker_address,
)

import redis_harness as harness
from faults.proxy import ReplyDropProxy
from onceonly.errors import IdempotencyStoreError
from onceonly.streams import EntryStatus, StreamConsumer, StreamEntry
from testkit import RedisFarm

APPLIED, DUPLICATE, FENCED = EntryStatus.APPLIED, EntryStatus.DUPLICATE, EntryStatus.FENCED
EVENTS = [("a", 5), ("b", 3), ("a", 2)]


def _consumer(client: Any, stream: str, group: str, handler: Any, name: str) -> StreamConsumer:
    return StreamConsumer(
        client, stream=stream, group=group, handler=handler, consumer=name, block_ms=0
    )


def _applied_once(client: Any, user: str, lb: str) -> None:
    assert (points(client, user, "a"), points(client, user, "b")) == (7, 3)
    scores = board(client, lb)
    scores.pop("warm", None)  # the warm-up entry of the lost-reply tests
    assert scores == {"a": 7.0, "b": 3.0}


@pytest.mark.parametrize("recovery", ["restart", "claimed"])
def test_killed_after_the_handler_before_the_script_then_recovered_once(
    client: Any,
    topology: str,
    recovery: str,
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
) -> None:
    stream, user, lb, group = names()
    ids = [client.xadd(stream, {"user": u, "points": p}).decode() for u, p in EVENTS]

    address = worker_address(topology, redis_engine, redis_farm)
    run_crash_worker(topology, address, stream, group, "w1", "handled")

    # Read, handled (the first), never committed: all pending on w1, nothing written.
    assert pending_ids(client, stream, group) == ids
    assert client.exists(user + "a", user + "b", lb) == 0
    handler = ScoreHandler(user, lb)
    if recovery == "restart":
        consumer = _consumer(client, stream, group, handler, "w1")  # the same name again
        expected_deliveries = 2
    else:
        client.xclaim(stream, group, "w2", 0, ids)  # what a reclaim loop does
        consumer = _consumer(client, stream, group, handler, "w2")
        expected_deliveries = 3  # read by w1, claimed by w2, re-read by w2
    results = consumer.run_once()
    assert [(r.id, r.status, r.deliveries) for r in results] == [
        (i, APPLIED, expected_deliveries) for i in ids
    ]
    _applied_once(client, user, lb)
    assert pending_ids(client, stream, group) == []


def test_killed_after_the_commit_leaves_nothing_pending_and_state_once(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    stream, user, lb, group = names()
    for u, p in EVENTS:
        client.xadd(stream, {"user": u, "points": p})

    address = worker_address(topology, redis_engine, redis_farm)
    run_crash_worker(topology, address, stream, group, "w1", "acked")

    _applied_once(client, user, lb)
    assert pending_ids(client, stream, group) == []
    handler = ScoreHandler(user, lb)
    assert _consumer(client, stream, group, handler, "w1").run_once() == []
    assert handler.calls == []
    _applied_once(client, user, lb)


# -- lost replies ------------------------------------------------------------------------


@pytest.fixture
def proxy(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[ReplyDropProxy]:
    """A reply-dropping proxy in front of the engine's standalone server."""
    with ReplyDropProxy(redis_farm.standalone(redis_engine).port) as p:
        yield p


def _warm(consumer: StreamConsumer, client: Any, stream: str) -> None:
    """One entry through first: the scripts are cached and the drain is done."""
    client.xadd(stream, {"user": "warm", "points": 1})
    assert [r.status for r in consumer.run_once()] == [APPLIED]


def test_a_lost_commit_reply_retried_by_the_client_is_a_duplicate(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, user, lb, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port, retry=Retry(NoBackoff(), 3))
    consumer = _consumer(client, stream, group, ScoreHandler(user, lb), "c1")
    _warm(consumer, client, stream)
    for u, p in EVENTS:
        client.xadd(stream, {"user": u, "points": p})

    proxy.drop_replies(1, commands={"EVALSHA"})  # the batch's first commit reply
    results = consumer.run_once()
    assert proxy.dropped == 1
    # The pipeline was sent again on a new connection: the commits that had run
    # find their own dedup record (DUPLICATE), any that had not run apply now.
    assert results[0].status is DUPLICATE
    assert {r.status for r in results} <= {APPLIED, DUPLICATE}
    _applied_once(standalone, user, lb)
    assert pending_ids(standalone, stream, group) == []
    assert consumer.stats.applied + consumer.stats.duplicates == 4
    client.close()


def test_a_lost_commit_reply_without_retry_raises_and_the_next_pass_recovers_once(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, user, lb, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port, retry=Retry(NoBackoff(), 0))
    handler = ScoreHandler(user, lb)
    consumer = _consumer(client, stream, group, handler, "c1")
    _warm(consumer, client, stream)
    for u, p in EVENTS:
        client.xadd(stream, {"user": u, "points": p})

    proxy.drop_replies(1, commands={"EVALSHA"})
    with pytest.raises(IdempotencyStoreError, match="cannot reach Redis"):
        consumer.run_once()
    assert proxy.dropped == 1
    _applied_once(standalone, user, lb)  # the server ran the scripts
    # The next pass re-reads this consumer's pending entries: none are left.
    assert consumer.run_once() == []
    # A restarted process with the same name finds none either.
    assert _consumer(standalone, stream, group, handler, "c1").run_once() == []
    _applied_once(standalone, user, lb)
    assert pending_ids(standalone, stream, group) == []
    client.close()


# -- fencing -------------------------------------------------------------------------------


@pytest.mark.parametrize("claimer_commits_first", [False, True], ids=["claimed", "claimed+applied"])
def test_a_reclaimed_entrys_late_commit_is_fenced_and_applies_nothing(
    client: Any, claimer_commits_first: bool
) -> None:
    stream, user, lb, group = names()
    entry_id = client.xadd(stream, {"user": "a", "points": 5}).decode()
    b_results: list[Any] = []
    b = _consumer(client, stream, group, ScoreHandler(user, lb), "b")
    score = ScoreHandler(user, lb)

    def slow(entry: StreamEntry) -> Any:
        # While "a" works on it, "b" reclaims the entry (XAUTOCLAIM would do this
        # once it is idle past min_idle_ms), and perhaps applies it.
        client.xclaim(stream, group, "b", 0, [entry.id])
        if claimer_commits_first:
            b_results.extend(b.run_once())
        return score(entry)

    a = _consumer(client, stream, group, slow, "a")
    (late,) = a.run_once()
    assert (late.id, late.status) == (entry_id, FENCED)
    assert late.error is not None
    if claimer_commits_first:
        assert late.error == "not pending"
        assert [(r.status, r.deliveries) for r in b_results] == [(APPLIED, 3)]
        assert points(client, user, "a") == 5
    else:
        assert late.error == "pending on b at delivery 2"
        assert points(client, user, "a") == 0  # nothing of the late commit
        assert pending_ids(client, stream, group) == [entry_id]
        assert [(r.status, r.deliveries) for r in b.run_once()] == [(APPLIED, 3)]
    assert points(client, user, "a") == 5
    assert board(client, lb) == {"a": 5.0}
    assert pending_ids(client, stream, group) == []
    assert a.stats.fenced == 1


def test_an_entry_claimed_away_and_back_is_fenced_by_its_delivery_count(client: Any) -> None:
    stream, user, lb, group = names()
    entry_id = client.xadd(stream, {"user": "a", "points": 5}).decode()
    score = ScoreHandler(user, lb)

    def slow(entry: StreamEntry) -> Any:
        client.xclaim(stream, group, "b", 0, [entry.id])  # delivery 2, on b
        client.xclaim(stream, group, "a", 0, [entry.id])  # delivery 3, back on a
        return score(entry)

    (late,) = _consumer(client, stream, group, slow, "a").run_once()
    assert (late.status, late.deliveries, late.error) == (FENCED, 1, "pending on a at delivery 3")
    assert points(client, user, "a") == 0
    (result,) = _consumer(client, stream, group, score, "a").run_once()  # a restarted
    assert (result.id, result.status, result.deliveries) == (entry_id, APPLIED, 4)
    assert points(client, user, "a") == 5
