"""The I/O-free parts: Effects' checks and encoding, the config, slots, reply shapes.

One test at the end runs the scripts' own slot arithmetic (CRC16 in Lua) on a
real server against Redis Cluster's rule.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot
from streams_support import names

from onceonly.errors import IdempotencyConfigError
from onceonly.streams import ConsumerConfig, Effects, EntryStatus, StreamConsumer
from onceonly.streams import effects as fx
from onceonly.streams import scripts as stream_scripts
from onceonly.streams.config import check_same_slot, key_slot, stream_base
from onceonly.streams.core import ReadState, new_entries
from onceonly.streams.redis_io import run_call
from onceonly.streams.scripts import fields_digest

# -- Effects ------------------------------------------------------------------------


def test_effects_encode_each_write_as_command_key_number_count_arguments() -> None:
    effects = (
        Effects()
        .hset("{p}:u", {"name": "Ann", b"raw": b"\x00\xff"})
        .hincrby("{p}:u", "points", -3)
        .zincrby("{p}:lb", 2.5, "ann")
        .set("{p}:s", 7, px=1000)
        .expire("{p}:u", 60)
        .xadd("{p}:out", {"e": "x"}, maxlen=100)
    )
    keys, flat = effects.encode(first_key_index=1)
    assert keys == ["{p}:u", "{p}:lb", "{p}:s", "{p}:out"]
    assert flat == [
        b"HSET", b"1", b"4", b"name", b"Ann", b"raw", b"\x00\xff",
        b"HINCRBY", b"1", b"2", b"points", b"-3",
        b"ZINCRBY", b"2", b"2", b"2.5", b"ann",
        b"SET", b"3", b"3", b"7", b"PX", b"1000",
        b"EXPIRE", b"1", b"1", b"60",
        b"XADD", b"4", b"6", b"MAXLEN", b"~", b"100", b"*", b"e", b"x",
    ]  # fmt: skip
    assert repr(effects) == "Effects(HSET, HINCRBY, ZINCRBY, SET, EXPIRE, XADD)"
    assert len(effects) == 6


def test_a_builder_call_without_reassignment_is_kept() -> None:
    effects = Effects()
    effects.sadd("{p}:s", "a")
    effects.srem("{p}:s", "b")
    assert [op.command for op in effects.ops] == ["SADD", "SREM"]


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda e: e.hincrby("k", "f", 1 << 63), ValueError, "signed 64-bit"),
        (lambda e: e.incrby("k", True), TypeError, "must be an int"),
        (lambda e: e.incrby("k", 1.0), TypeError, "must be an int"),
        (lambda e: e.zincrby("k", math.nan, "m"), ValueError, "finite"),
        (lambda e: e.zadd("k", {"m": math.inf}), ValueError, "finite"),
        (lambda e: e.zadd("k", {"m": 10**400}), ValueError, "finite"),
        (lambda e: e.hset("k", {}), TypeError, "non-empty mapping"),
        (lambda e: e.hset("k", {"f": None}), TypeError, "str, bytes, int or float"),
        (lambda e: e.hset("k", {"f": False}), TypeError, "str, bytes, int or float"),
        (lambda e: e.sadd("k"), TypeError, "at least one member"),
        (lambda e: e.set("", "v"), TypeError, "non-empty string"),
        (lambda e: e.set(b"k", "v"), TypeError, "non-empty string"),
        (lambda e: e.set("k" * 1025, "v"), ValueError, "at most 1024 bytes"),
        (lambda e: e.set("k", b"x" * (fx.MAX_VALUE_BYTES + 1)), ValueError, "at most"),
        (lambda e: e.set("k", "v", px=0), ValueError, "from 1"),
        (lambda e: e.expire("k", 0), ValueError, "from 1"),
        (lambda e: e.xadd("k", {"f": "v"}, maxlen=0), ValueError, "maxlen"),
        (lambda e: e.hset("k", dict.fromkeys(range(fx.MAX_ITEMS + 1), 1)), ValueError, "at most"),
        (lambda e: e.hset("k", {"f": 1}).zadd("k", {"m": 1}), ValueError, "one Redis type"),
        (lambda e: e.set("k", 1).sadd("k", "m"), ValueError, "one Redis type"),
    ],
)
def test_effects_refuse_bad_writes_when_added(build: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        build(Effects())


def test_effects_are_bounded_in_count_and_bytes() -> None:
    effects = Effects()
    for i in range(fx.MAX_EFFECTS):
        effects.incrby(f"k{i}")
    with pytest.raises(ValueError, match="at most 256 effects"):
        effects.incrby("one-more")
    big = Effects()
    for i in range(4):
        big.set(f"k{i}", b"x" * (fx.MAX_VALUE_BYTES - 10))
    with pytest.raises(ValueError, match="bytes in all"):
        big.set("k4", b"x" * 100)


def test_expire_goes_with_any_type() -> None:
    effects = Effects().hset("k", {"f": 1}).expire("k", 5).zadd("z", {"m": 1}).expire("z", 5)
    assert [op.family for op in effects.ops] == ["hash", None, "zset", None]


# -- config and slots ----------------------------------------------------------------


@given(st.binary(max_size=40))
def test_key_slot_is_redis_clusters(key: bytes) -> None:
    assert key_slot(key) == redis_key_slot(key)


def test_derived_keys_share_the_streams_slot() -> None:
    for stream in ["{p3}:events", "events", "orders:eu", "x{y", "é{x}"]:
        config = ConsumerConfig(stream=stream, group="g", consumer="c")
        check_same_slot(
            [config.dedup_key("e-1"), config.error_key("1-0"), config.dead_letters],
            stream,
            what="key",
        )
    assert stream_base("{p3}:events") == "{p3}:events"
    assert stream_base("events") == "{events}"
    for untaggable in ["a}b", "a{}b"]:
        with pytest.raises(IdempotencyConfigError, match="holds '}'"):
            stream_base(untaggable)


def test_the_slot_check_names_the_key_and_the_fix() -> None:
    with pytest.raises(IdempotencyConfigError) as info:
        check_same_slot(["{p3}:ok", "{p4}:lb"], "{p3}:events", what="the effects' key")
    text = str(info.value)
    assert "the effects' key '{p4}:lb'" in text
    assert "'{p3}:...'" in text


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"group": "a:b"}, "must not contain ':'"),
        ({"group": ""}, "non-empty"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1001}, "batch_size"),
        ({"block_ms": -1}, "block_ms"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"dedup_ttl_seconds": 0}, "dedup_ttl_seconds"),
        ({"start_id": ">"}, "start_id"),
        ({"same_slot": 1}, "same_slot"),
        ({"event_id_field": ""}, "event_id_field"),
        ({"dead_letter_stream": "{other}:dead"}, "hashes to slot"),
        ({"dead_letter_stream": "{p3}:events"}, "not be the stream"),
    ],
)
def test_the_config_refuses_bad_options(options: dict[str, Any], words: str) -> None:
    base: dict[str, Any] = {"stream": "{p3}:events", "group": "g", "consumer": "c"}
    with pytest.raises(IdempotencyConfigError, match=words):
        ConsumerConfig(**{**base, **options})


def test_the_config_is_frozen_and_fills_in_its_defaults() -> None:
    config = ConsumerConfig(stream="{p3}:events", group="g")
    assert config.dead_letters == "{p3}:events:g:dead"
    assert config.dedup_key("e1") == "{p3}:events:g:dedup:e1"
    assert "-" in config.consumer  # host-pid
    with pytest.raises(AttributeError):
        config.group = "h"  # type: ignore[misc]


def test_the_consumer_refuses_what_is_not_a_sync_client_or_a_handler() -> None:
    with pytest.raises(IdempotencyConfigError, match="redis-py client"):
        StreamConsumer(object(), stream="{a}:s", group="g", handler=print)
    with pytest.raises(IdempotencyConfigError, match="asyncio client"):
        StreamConsumer(redis.asyncio.Redis(), stream="{a}:s", group="g", handler=print)
    with pytest.raises(IdempotencyConfigError, match="handler must be callable"):
        StreamConsumer(redis.Redis(), stream="{a}:s", group="g", handler=None)  # type: ignore[arg-type]


# -- replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        [[b"s", [(b"1-0", {b"f": b"v"})]]],  # RESP2, parsed
        {b"s": [[(b"1-0", {b"f": b"v"})]]},  # RESP3, parsed
        {b"s": [(b"1-0", {b"f": b"v"})]},  # unified
        {b"s": [[b"1-0", [b"f", b"v"]]]},  # raw pairs
    ],
)
def test_new_entries_reads_every_shape_redis_py_hands_back(reply: Any) -> None:
    assert new_entries(reply) == [("1-0", {b"f": b"v"}, 1)]


def test_the_fields_digest_ignores_order_and_separates_names_from_values() -> None:
    assert fields_digest([(b"a", b"1"), (b"b", b"2")]) == fields_digest(
        [(b"b", b"2"), (b"a", b"1")]
    )
    assert fields_digest([(b"ab", b"c")]) != fields_digest([(b"a", b"bc")])


# -- the scripts' slot arithmetic on a real server ----------------------------------


def _same_slot_tag(t: str) -> str:
    """Another hash tag whose slot is the slot of ``t``."""
    home = key_slot(t)
    n = 0
    while True:
        candidate = f"o{n}"
        if candidate != t and key_slot(candidate) == home:
            return candidate
        n += 1


# The client fixture is shared by the examples on purpose: each example uses fresh keys.
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(other=st.text(min_size=1, max_size=12))
def test_the_scripts_slot_check_agrees_with_redis_cluster(
    standalone: redis.Redis, other: str
) -> None:
    # The commit script is called directly (the consumer's own check left out).
    stream, _, _, group = names()
    key = f"{{{other}}}:k"
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    standalone.xgroup_create(stream, group, id="0", mkstream=True)
    entry_id = standalone.xadd(stream, {"n": "1"}).decode()
    standalone.xreadgroup(group, "c1", {stream: ">"}, count=1)
    call = stream_scripts.commit_call(config, entry_id, 1, entry_id, Effects().incrby(key))
    code, _ = stream_scripts.script_reply(run_call(standalone, call))
    same = key_slot(key) == key_slot(stream)
    assert code is (stream_scripts.Code.APPLIED if same else stream_scripts.Code.REFUSED)


def test_a_key_with_another_tag_in_the_same_slot_is_accepted(standalone: redis.Redis) -> None:
    stream, _, _, group = names()
    t = stream[1 : stream.index("}")]
    key = f"{{{_same_slot_tag(t)}}}:counter"
    assert key_slot(key) == key_slot(stream)
    standalone.xadd(stream, {"n": "1"})
    consumer = StreamConsumer(
        standalone,
        stream=stream,
        group=group,
        handler=lambda entry: Effects().incrby(key),
        consumer="c1",
        block_ms=0,
    )
    (result,) = consumer.run_once()
    assert result.status is EntryStatus.APPLIED  # by the Lua CRC16, not string equality
    assert standalone.get(key) == b"1"


# -- the read state -------------------------------------------------------------------


def test_a_reclaim_scan_goes_page_by_page_then_waits_min_idle() -> None:
    state = ReadState()
    assert state.reclaim_due(0.0)  # the first scan: at once
    state.reclaimed("5-0", 1.0, 500)
    assert state.reclaim_due(1.0)  # under way: the next page in the next pass
    state.reclaimed("0-0", 2.0, 500)  # the scan is done
    assert not state.reclaim_due(2.4)
    assert state.reclaim_due(2.5)


def test_min_idle_ms_is_checked() -> None:
    stream, _, _, group = names()
    assert ConsumerConfig(stream, group, min_idle_ms=None).min_idle_ms is None
    for bad in (0, -1, 1.5, "200", True):
        with pytest.raises(IdempotencyConfigError, match="min_idle_ms"):
            ConsumerConfig(stream, group, min_idle_ms=bad)  # type: ignore[arg-type]
