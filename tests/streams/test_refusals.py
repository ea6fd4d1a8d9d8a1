"""Effects that would fail are refused before any write (Lua has no rollback).

Two guards: keys outside the stream's hash slot (the consumer names the key
before sending; the script refuses it on a standalone server too; a cluster
refuses it as CROSSSLOT), and writes that Redis would refuse half way
(a wrong type, a value that is not an integer, an overflow): the script walks
the effects first and writes nothing if one would fail.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams_support import names, pending_ids, tag

from onceonly.errors import IdempotencyStoreError
from onceonly.streams import ConsumerConfig, Effects, EntryStatus, StreamConsumer, StreamEntry
from onceonly.streams import scripts as stream_scripts
from onceonly.streams.config import key_slot
from onceonly.streams.redis_io import run_call

FAILED, APPLIED = EntryStatus.FAILED, EntryStatus.APPLIED
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def _run_with(client: Any, stream: str, group: str, effects: Effects, **options: Any) -> Any:
    """Append one entry and run a consumer whose handler returns ``effects``; its one result."""
    client.xadd(stream, {"n": "1"})
    consumer = StreamConsumer(
        client,
        stream=stream,
        group=group,
        handler=lambda entry: effects,
        consumer="c1",
        block_ms=0,
        **options,
    )
    (result,) = consumer.run_once()
    return result, consumer


# -- hash slots ------------------------------------------------------------------------


def test_a_key_in_another_slot_is_named_and_nothing_is_written(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, user, lb, group = names()
    stray = "{elsewhere}:leaderboard"
    effects = Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a").zincrby(stray, 1, "a")
    result, consumer = _run_with(client, stream, group, effects)
    assert result.status is FAILED
    assert result.error is not None
    assert "'{elsewhere}:leaderboard'" in result.error
    assert "hash tag" in result.error
    assert client.exists(user + "a") == 0
    assert client.exists(lb) == 0
    assert client.exists(stray) == 0
    assert pending_ids(client, stream, group) == [result.id]
    assert client.get(consumer.config.error_key(result.id)).decode() == result.error


def test_on_standalone_same_slot_false_lets_effects_name_any_key(standalone: redis.Redis) -> None:
    stream, _, _, group = names()
    stray = f"elsewhere:{tag()}"  # no hash tag: another slot
    assert key_slot(stray) != key_slot(stream)
    result, _ = _run_with(standalone, stream, group, Effects().incrby(stray, 2), same_slot=False)
    assert result.status is APPLIED
    assert standalone.get(stray) == b"2"


def test_same_slot_false_is_refused_with_a_cluster_client(cluster: redis.RedisCluster) -> None:
    from onceonly.errors import IdempotencyConfigError

    with pytest.raises(IdempotencyConfigError, match="same_slot=False needs a standalone"):
        StreamConsumer(cluster, stream="{a}:s", group="g", handler=print, same_slot=False)


def _pending_entry(client: Any, stream: str, group: str, consumer: str) -> str:
    """One entry appended and read by ``consumer`` (delivery 1): pending on it."""
    client.xgroup_create(stream, group, id="0", mkstream=True)
    entry_id = client.xadd(stream, {"n": "1"}).decode()
    client.xreadgroup(group, consumer, {stream: ">"}, count=1)
    return str(entry_id)


def test_the_commit_script_itself_refuses_a_key_in_another_slot(standalone: redis.Redis) -> None:
    # The consumer's own check is bypassed: the script is the last guard.
    stream, user, _, group = names()
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    entry_id = _pending_entry(standalone, stream, group, "c1")
    effects = Effects().hincrby(user + "a", "points", 1).zincrby("{elsewhere}:lb", 1, "a")
    call = stream_scripts.commit_call(config, entry_id, 1, entry_id, effects)
    code, why = stream_scripts.script_reply(run_call(standalone, call))
    assert code is stream_scripts.Code.REFUSED
    assert why == f"key {{elsewhere}}:lb is not in the hash slot of {stream}"
    assert standalone.exists(user + "a", "{elsewhere}:lb") == 0
    assert pending_ids(standalone, stream, group) == [entry_id]


def test_a_cluster_refuses_the_mixed_call_before_the_script_runs(
    cluster: redis.RedisCluster,
) -> None:
    stream, user, _, group = names()
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    entry_id = _pending_entry(cluster, stream, group, "c1")
    effects = Effects().hincrby(user + "a", "points", 1).zincrby("{elsewhere}:lb", 1, "a")
    call = stream_scripts.commit_call(config, entry_id, 1, entry_id, effects)
    # redis-py's cluster client refuses to route it ...
    with pytest.raises(IdempotencyStoreError, match="same key slot"):
        run_call(cluster, call)
    # ... and the node that owns the stream refuses it when sent there anyway.
    node = cluster.get_node_from_key(stream).redis_connection
    with pytest.raises(redis.exceptions.ResponseError, match="don't hash to the same slot"):
        node.execute_command(*call.wire(by_sha=False))
    assert cluster.exists(user + "a") == 0
    assert pending_ids(cluster, stream, group) == [entry_id]


# -- wrong types and integers ---------------------------------------------------------------

# (what the key holds before, the failing effect, the words of the refusal)
WRONG: dict[str, tuple[Any, Any, str]] = {
    "hincrby-on-a-string": (
        lambda c, k: c.set(k, "x"),
        lambda e, k: e.hincrby(k, "f", 1),
        "HINCRBY needs a hash at {k}, which holds a string",
    ),
    "incrby-on-text": (
        lambda c, k: c.set(k, "abc"),
        lambda e, k: e.incrby(k, 1),
        "INCRBY at {k}: the key holds a value that is not a 64-bit integer",
    ),
    "incrby-on-a-leading-zero": (
        lambda c, k: c.set(k, "007"),
        lambda e, k: e.incrby(k, 1),
        "INCRBY at {k}: the key holds a value that is not a 64-bit integer",
    ),
    "incrby-overflow": (
        lambda c, k: c.set(k, INT64_MAX - 5),
        lambda e, k: e.incrby(k, 3).incrby(k, 3),
        "INCRBY at {k}: the key would overflow a 64-bit integer",
    ),
    "incrby-underflow": (
        lambda c, k: c.set(k, INT64_MIN + 1),
        lambda e, k: e.incrby(k, -2),
        "INCRBY at {k}: the key would overflow a 64-bit integer",
    ),
    "set-then-incrby-in-one-list": (
        lambda c, k: None,
        lambda e, k: e.set(k, "text").incrby(k, 1),
        "INCRBY at {k}: the key holds a value that is not a 64-bit integer",
    ),
    "hincrby-on-a-float-field": (
        lambda c, k: c.hset(k, "f", "1.5"),
        lambda e, k: e.hincrby(k, "f", 1),
        "HINCRBY at {k}: the field holds a value that is not a 64-bit integer",
    ),
    "zadd-on-a-set": (
        lambda c, k: c.sadd(k, "m"),
        lambda e, k: e.zadd(k, {"m": 1}),
        "ZADD needs a zset at {k}, which holds a set",
    ),
    "xadd-on-a-hash": (
        lambda c, k: c.hset(k, "f", "v"),
        lambda e, k: e.xadd(k, {"f": "v"}),
        "XADD needs a stream at {k}, which holds a hash",
    ),
    "set-over-a-hash": (
        lambda c, k: c.hset(k, "f", "v"),
        lambda e, k: e.set(k, "v"),
        "SET needs a string at {k}, which holds a hash",
    ),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_an_effect_that_would_fail_is_refused_before_the_writes_before_it(
    standalone: redis.Redis, case: str
) -> None:
    before, failing, words = WRONG[case]
    stream, user, lb, group = names()
    key = stream.replace(":events", ":target")
    before(standalone, key)
    held = standalone.dump(key)
    # The 1st and 2nd writes would succeed; the 3rd would fail in Redis.
    effects = failing(Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a"), key)
    result, consumer = _run_with(standalone, stream, group, effects)
    assert result.status is FAILED
    assert result.error == words.format(k=key)
    assert standalone.exists(user + "a") == 0
    assert standalone.exists(lb) == 0
    assert standalone.dump(key) == held  # untouched (or still absent)
    assert pending_ids(standalone, stream, group) == [result.id]
    assert standalone.get(consumer.config.error_key(result.id)) == (
        f"effects refused: {result.error}".encode()
    )


def test_a_wrong_type_is_refused_on_a_cluster_too(cluster: redis.RedisCluster) -> None:
    stream, user, lb, group = names()
    key = stream.replace(":events", ":target")
    cluster.set(key, "x")
    effects = Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a").hincrby(key, "f", 1)
    result, _ = _run_with(cluster, stream, group, effects)
    assert (result.status, result.error) == (
        FAILED,
        f"HINCRBY needs a hash at {key}, which holds a string",
    )
    assert cluster.exists(user + "a") == 0
    assert cluster.exists(lb) == 0


def test_increments_right_at_the_64_bit_limits_are_applied(standalone: redis.Redis) -> None:
    stream, _, _, group = names()
    high, low = stream.replace(":events", ":high"), stream.replace(":events", ":low")
    standalone.set(high, INT64_MAX - 2)
    standalone.hset(low, "f", INT64_MIN + 2)
    effects = Effects().incrby(high, 1).incrby(high, 1).hincrby(low, "f", -2)
    result, _ = _run_with(standalone, stream, group, effects)
    assert result.status is APPLIED
    assert int(standalone.get(high)) == INT64_MAX
    assert int(standalone.hget(low, "f")) == INT64_MIN


EDGES = [INT64_MAX, INT64_MAX - 1, INT64_MIN, INT64_MIN + 1, 0, -1, 1, 10**9, -(10**9), 999_999_999]
INT64 = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from(EDGES))


# The client fixture is shared by the examples on purpose: each example uses fresh keys.
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.one_of(st.none(), INT64), steps=st.lists(INT64, min_size=1, max_size=4))
def test_the_scripts_integer_check_agrees_with_redis(
    standalone: redis.Redis, start: int | None, steps: list[int]
) -> None:
    """The Lua check refuses exactly the increments Redis would refuse (exact int64 math)."""
    stream, _, _, group = names()
    key = stream.replace(":events", ":n")
    mirror = stream.replace(":events", ":mirror")
    if start is not None:
        standalone.set(key, start)
        standalone.set(mirror, start)
    effects = Effects()
    for step in steps:
        effects.incrby(key, step)
    # What Redis itself does with the same increments, one by one.
    redis_refuses = False
    for step in steps:
        try:
            standalone.incrby(mirror, step)
        except redis.exceptions.ResponseError:
            redis_refuses = True
            break
    consumer = StreamConsumer(
        standalone,
        stream=stream,
        group=group,
        handler=lambda entry: effects,
        consumer="c1",
        block_ms=0,
    )
    standalone.xadd(stream, {"n": "1"})
    (result,) = consumer.run_once()
    if redis_refuses:
        assert result.status is FAILED
        assert standalone.get(key) == (None if start is None else str(start).encode())
    else:
        assert result.status is APPLIED
        assert int(standalone.get(key)) == (start or 0) + sum(steps)


def test_a_handler_error_is_not_a_refusal_of_the_effects(standalone: redis.Redis) -> None:
    stream, _, _, group = names()

    def handler(entry: StreamEntry) -> Effects:
        return Effects().hset(stream.replace(":events", ":h"), {"a": object()})  # type: ignore[dict-item]

    standalone.xadd(stream, {"n": "1"})
    consumer = StreamConsumer(
        standalone, stream=stream, group=group, handler=handler, consumer="c1", block_ms=0
    )
    (result,) = consumer.run_once()
    assert result.status is FAILED
    assert result.error is not None
    assert result.error.startswith("TypeError: hset: the value of 'a' must be str, bytes")
