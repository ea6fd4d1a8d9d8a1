"""Our Redis stores read the records Powertools' idempotency utility wrote (issue 11, item 7).

Powertools' Redis layer (``RedisCachePersistenceLayer``, also named
``CachePersistenceLayer``) stores a JSON object under the bare key; our
stores meet it with ``prefix=""``. Each record is written by Powertools
itself on real Redis / Valkey servers (standalone and cluster), then read by
``RedisStore`` and ``AsyncRedisStore``: the Lua scripts judge it in the same
single call, the Python side converts the value it answers with.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PowertoolsConfig
from aws_lambda_powertools.utilities.idempotency import (
    idempotent_function as pt_idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer
from hypothesis import example, given, settings
from hypothesis import strategies as st
from powertools_writers import (
    LEASE,
    TTL,
    LambdaContext,
    check_foreign_writes_refused,
    claim,
    save_inprogress,
    wall_clock,
)

import redis_harness as harness
from onceonly import CorruptRecordError, powertools_records
from onceonly.records import Acquired, Found, Record, Status, decode_outcome, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from testkit import ManualClock, RedisFarm


def powertools_layer(client: Any) -> Any:
    """Powertools' Redis layer on ``client`` (it warns that the class is deprecated)."""
    with pytest.warns(DeprecationWarning, match="RedisCachePersistenceLayer"):
        return CachePersistenceLayer(client=client)


@pytest.fixture
def standalone(redis_farm: RedisFarm, redis_engine: harness.Engine) -> Iterator[redis.Redis]:
    client = redis_farm.standalone(redis_engine).client()
    try:
        yield client
    finally:
        client.close()


def test_redis_a_completed_record_from_powertools_replays(standalone: redis.Redis) -> None:
    layer = powertools_layer(standalone)
    config = PowertoolsConfig(event_key_jmespath="id", payload_validation_jmespath="amount")
    config.register_lambda_context(LambdaContext(30_000))
    result = {"charged": 5, "zero": 0, "empty": {}, "text": "é"}

    @pt_idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return result

    order = {"id": f"o-{uuid.uuid4().hex}", "amount": 5}
    assert charge(order=order) == result
    key = layer._get_hashed_idempotency_key(order)
    value = standalone.get(key)
    assert value is not None
    stored = json.loads(value)
    assert stored["status"] == "COMPLETED"

    clock = wall_clock()
    store = RedisStore(standalone, prefix="", clock=clock)
    found = claim(store, key)
    assert isinstance(found, Found)
    record = found.record
    assert record.status is Status.COMPLETED
    assert decode_outcome(record.outcome) == result
    # Powertools' Redis layer drops the payload hash on completion: no fingerprint.
    assert record.fingerprint is None
    assert record.deadline_ms == stored["expiration"] * 1000
    assert store.get(key) == record
    check_foreign_writes_refused(store, key)
    assert standalone.get(key) == value

    # Without an injected clock get() judges it by the server's TIME.
    assert RedisStore(standalone, prefix="").get(key) == record

    clock.advance(record.deadline_ms - clock.now)
    assert store.get(key) is None
    token = new_token()
    assert claim(store, key, token) == Acquired(takeover=False)
    assert store.complete(key, token=token, outcome=b'j"ours"', ttl_ms=TTL) is True
    mine = store.get(key)
    assert mine is not None
    assert mine.token == token
    assert standalone.get(key).startswith(b"o1|C|")  # stored as given: no prefix


@pytest.mark.parametrize("remaining_ms", [5_000, None], ids=["in-progress-expiry", "none"])
def test_redis_an_inprogress_record_holds_until_its_expiry_then_is_taken_over(
    standalone: redis.Redis, remaining_ms: int | None
) -> None:
    layer = powertools_layer(standalone)
    layer.configure(PowertoolsConfig(payload_validation_jmespath="amount"), "charge")
    key = save_inprogress(layer, {"id": uuid.uuid4().hex, "amount": 7}, remaining_ms)
    value = standalone.get(key)
    stored = json.loads(value)
    deadline = stored.get("in_progress_expiration", stored["expiration"] * 1000)

    clock = wall_clock()
    store = RedisStore(standalone, prefix="", clock=clock)
    found = claim(store, key)
    assert isinstance(found, Found)
    assert found.record == Record(
        Status.IN_PROGRESS,
        powertools_records.PLACEHOLDER_TOKEN,
        deadline,
        stored["validation"],
        None,
    )
    assert store.get(key) == found.record
    check_foreign_writes_refused(store, key)
    clock.advance(deadline - 1 - clock.now)
    assert isinstance(claim(store, key), Found)
    assert standalone.get(key) == value

    clock.advance(1)
    assert store.get(key) is None
    assert store.release(key, token=new_token()) is True  # nothing live is left
    assert standalone.get(key) == value  # and release deleted nothing
    token = new_token()
    assert claim(store, key, token) == Acquired(takeover=True)
    assert store.renew(key, token=token, lease_ms=LEASE) is True
    assert store.complete(key, token=token, outcome=b"j1", ttl_ms=TTL) is True
    assert standalone.get(key).startswith(b"o1|C|" + token.encode())
    # Powertools' orphan lock key is never written (nor read) by our stores.
    assert standalone.exists(f"{key}:lock") == 0


def test_redis_by_the_servers_clock(standalone: redis.Redis) -> None:
    # No injected clock: the scripts judge by TIME, get() asks TIME for these.
    layer = powertools_layer(standalone)
    layer.configure(PowertoolsConfig(), "charge")
    timed_out = save_inprogress(layer, {"id": uuid.uuid4().hex}, -1_000)
    running = save_inprogress(layer, {"id": uuid.uuid4().hex}, 60_000)
    store = RedisStore(standalone, prefix="")
    assert store.get(timed_out) is None
    live = store.get(running)
    assert live is not None
    assert live.status is Status.IN_PROGRESS
    found = claim(store, running)
    assert isinstance(found, Found)
    assert found.record == live
    assert claim(store, timed_out) == Acquired(takeover=True)


def test_async_redis_reads_powertools_records(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    raw = server.client()
    layer = powertools_layer(raw)
    layer.configure(PowertoolsConfig(), "charge")
    running = save_inprogress(layer, {"id": uuid.uuid4().hex}, 60_000)
    timed_out = save_inprogress(layer, {"id": uuid.uuid4().hex}, -1_000)
    config = PowertoolsConfig(event_key_jmespath="id")
    config.register_lambda_context(LambdaContext(30_000))

    @pt_idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order: dict[str, Any]) -> list[int]:
        return [1, 0]

    order = {"id": uuid.uuid4().hex}
    charge(order=order)
    done = layer._get_hashed_idempotency_key(order)

    async def scenario() -> None:
        client = redis.asyncio.Redis(host=server.client_host(), port=server.port)
        store = AsyncRedisStore(client, prefix="")
        try:
            found = await store.claim(
                done, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            assert isinstance(found, Found)
            assert decode_outcome(found.record.outcome) == [1, 0]
            assert await store.get(done) == found.record
            held = await store.claim(
                running, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            assert isinstance(held, Found)
            assert held.record.status is Status.IN_PROGRESS
            assert await store.get(timed_out) is None
            token = new_token()
            assert await store.complete(done, token=token, outcome=b"j1", ttl_ms=TTL) is False
            assert await store.release(running, token=token) is False
            assert await store.claim(
                timed_out, token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            ) == Acquired(takeover=True)
            assert await store.complete(timed_out, token=token, outcome=b"j1", ttl_ms=TTL)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    raw.close()


def test_redis_cluster_reads_powertools_records(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    client = redis_farm.cluster(redis_engine).client()
    layer = powertools_layer(client)
    layer.configure(PowertoolsConfig(), "charge")
    running = save_inprogress(layer, {"id": uuid.uuid4().hex}, 60_000)
    timed_out = save_inprogress(layer, {"id": uuid.uuid4().hex}, -1_000)
    store = RedisStore(client, prefix="")
    found = claim(store, running)
    assert isinstance(found, Found)
    assert found.record.status is Status.IN_PROGRESS
    assert store.get(timed_out) is None
    assert claim(store, timed_out) == Acquired(takeover=True)
    client.close()


def test_an_empty_prefix_stores_keys_as_given(standalone: redis.Redis) -> None:
    key = f"plain-{uuid.uuid4().hex}"
    store = RedisStore(standalone, prefix="")
    token = new_token()
    assert claim(store, key, token) == Acquired()
    assert store.complete(key, token=token, outcome=b"j1", ttl_ms=TTL) is True
    assert standalone.get(key).startswith(b"o1|C|")
    assert store.get(key) is not None
    assert store.delete(key) is True
    server = standalone.connection_pool.connection_kwargs
    url = f"redis://{server['host']}:{server['port']}/0"
    from_url = RedisStore.from_url(url, prefix="")
    assert from_url.full_key("k") == "k"
    from_url.client.close()
    assert AsyncRedisStore.from_url(url, prefix="").full_key("k") == "k"


# -- corrupt stays corrupt -----------------------------------------------------------

_PAST = 1  # an expiration long past: a claim that read these as records would take them
REDIS_CORRUPT = {
    "unknown-status": json.dumps({"status": "DONE", "expiration": _PAST}),
    "garbage": "{",
    "json-list": json.dumps(["INPROGRESS", _PAST]),
    "empty-object": "{}",
    "null-data": json.dumps({"status": "COMPLETED", "expiration": _PAST, "data": None}),
    "string-expiration": json.dumps({"status": "INPROGRESS", "expiration": str(_PAST)}),
    "bool-expiration": json.dumps({"status": "INPROGRESS", "expiration": True}),
    "fractional-expiration": json.dumps({"status": "INPROGRESS", "expiration": 1.5}),
    "negative-expiration": json.dumps({"status": "INPROGRESS", "expiration": -1}),
    "huge-in-progress-expiry": json.dumps(
        {"status": "INPROGRESS", "expiration": _PAST, "in_progress_expiration": 2**53}
    ),
    "validation-upper-case": json.dumps(
        {"status": "INPROGRESS", "expiration": _PAST, "validation": "AB"}
    ),
    "custom-data-field": json.dumps({"status": "COMPLETED", "expiration": _PAST, "result": "1"}),
    # Spellings Redis' cjson reads as numbers but JSON (and Python) do not.
    "hex-expiration": '{"status": "EXPIRED", "expiration": 0x10}',
    "leading-zero-expiration": '{"status": "EXPIRED", "expiration": 010}',
    "plus-expiration": '{"status": "EXPIRED", "expiration": +1}',
    "trailing-dot-expiration": '{"status": "EXPIRED", "expiration": 1.}',
    "nan-expiration": '{"status": "EXPIRED", "expiration": nan}',
    "nul-after-the-object": '{"status": "EXPIRED", "expiration": 1}\x00',
}


@pytest.mark.parametrize("case", sorted(REDIS_CORRUPT))
def test_redis_what_is_not_a_powertools_record_stays_corrupt(
    standalone: redis.Redis, case: str
) -> None:
    key = f"pt#{uuid.uuid4().hex}"
    value = REDIS_CORRUPT[case].encode()
    standalone.set(key, value)
    store = RedisStore(standalone, prefix="")
    try:
        with pytest.raises(CorruptRecordError, match="not an onceonly record"):
            claim(store, key)
        with pytest.raises(CorruptRecordError):
            store.get(key)
        with pytest.raises(CorruptRecordError):
            store.complete(key, token=new_token(), outcome=b"j1", ttl_ms=TTL)
        with pytest.raises(CorruptRecordError):
            store.release(key, token=new_token())
        assert standalone.get(key) == value
    finally:
        standalone.delete(key)


# -- the scripts and the Python rule agree -------------------------------------------

_NOW = 1_800_000_000_000
_NUMBERS = st.one_of(
    st.integers(-2, 3),
    st.integers(_NOW // 1000 - 2, _NOW // 1000 + 2),
    st.integers(_NOW - 2, _NOW + 2),
    st.sampled_from([10**12, 10**12 + 1, 10**15, 10**15 + 1, 2**53, -0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_FIELD_VALUES = {
    "status": st.one_of(
        st.sampled_from(["COMPLETED", "INPROGRESS", "EXPIRED", "completed", ""]), _NUMBERS
    ),
    "expiration": _NUMBERS,
    "in_progress_expiration": _NUMBERS,
    "data": st.one_of(st.text(max_size=8), st.just('{"a": 1}'), _NUMBERS),
    "validation": st.one_of(st.sampled_from(["", "ab12", "a" * 128, "a" * 129, "AB"]), _NUMBERS),
    "other": st.just(1),
}
# Records as Powertools writes them, around the clock's instant; the same with
# one field set to anything; and any mix of fields at all.
_WRITTEN = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["COMPLETED", "INPROGRESS", "EXPIRED"]),
        "expiration": st.integers(_NOW // 1000 - 2, _NOW // 1000 + 2),
    },
    optional={
        "in_progress_expiration": st.integers(_NOW - 2, _NOW + 2),
        "data": st.text(max_size=8),
        "validation": st.sampled_from(["", "ab12"]),
    },
)
_FIELDS = (
    _WRITTEN
    | st.builds(
        lambda fields, name, value: {**fields, name: value},
        _WRITTEN,
        st.sampled_from(sorted(_FIELD_VALUES)),
        _NUMBERS,
    )
    | st.fixed_dictionaries({}, optional=_FIELD_VALUES)
)


@settings(max_examples=300)
@given(fields=_FIELDS)
@example(
    fields={"status": "INPROGRESS", "expiration": _NOW // 1000 + 1, "in_progress_expiration": _NOW}
)
@example(
    fields={"status": "INPROGRESS", "expiration": _NOW // 1000, "in_progress_expiration": _NOW + 1}
)
@example(fields={"status": "COMPLETED", "expiration": _NOW // 1000 + 1, "data": ""})
@example(fields={"status": "COMPLETED", "expiration": 1e12, "validation": "a" * 128})
def test_the_scripts_and_the_python_rule_agree(
    redis_farm: RedisFarm, redis_engine: harness.Engine, fields: dict[str, Any]
) -> None:
    # Whatever the fields, the claim script answers as powertools_records reads
    # them: refused (and left as it was), answered while live, taken once ended.
    client = redis_farm.standalone(redis_engine).client()
    key = f"agree-{uuid.uuid4().hex}"
    value = json.dumps(fields).encode()
    client.set(key, value)
    store = RedisStore(client, prefix="", clock=ManualClock(_NOW))
    try:
        try:
            expected: Record | None = powertools_records.from_json(value)
        except CorruptRecordError:
            expected = None
        if expected is None:
            with pytest.raises(CorruptRecordError):
                claim(store, key)
            assert client.get(key) == value
        elif expected.deadline_ms > _NOW:
            assert claim(store, key) == Found(expected, _NOW)
            assert store.get(key) == expected
        else:
            takeover = expected.status is Status.IN_PROGRESS
            assert store.get(key) is None
            assert claim(store, key) == Acquired(takeover=takeover)
    finally:
        client.delete(key)
        client.close()
