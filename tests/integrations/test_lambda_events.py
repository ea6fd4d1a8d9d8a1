"""The decorators end to end, driven by the sample Lambda events in tests/events/.

Most tests run over four flavours: a sync handler on MemoryStore and on
SQLiteStore, and an async handler on AsyncMemoryStore and on AsyncSQLiteStore,
all on a manual clock.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydantic
import pytest

import onceonly._async
import onceonly._sync
from onceonly import (
    CustomSerializer,
    Event,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencyKeyError,
    IdempotencyKeyReuseError,
    IdempotencySerializationError,
    OnceOnlyWarning,
    Record,
    Status,
    idempotent,
    idempotent_function,
)
from onceonly.records import Acquired, Found
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore, MemoryStore, SQLiteStore
from testkit import ManualClock, VirtualAsyncHeartbeatTime, VirtualHeartbeatTime, load_event

HOUR_MS = 3_600_000


def key_of(prefix: str, selected: Any) -> str:
    """The documented key: prefix and the md5 (default hash) of the selection's canonical JSON."""
    canonical = json.dumps(selected, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{prefix}:{hashlib.md5(canonical.encode()).hexdigest()}"


def token() -> str:
    return secrets.token_hex(16)


class LambdaContext:
    """The part of the Lambda context object the decorator reads."""

    function_name = "handler"
    aws_request_id = "6f1d2a3b-request"

    def __init__(self, remaining_ms: int = 5_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def run_coro(coro: Any) -> Any:
    """Run a coroutine to its end, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Flavour:
    """A store and matching handlers: sync on a sync store, async on an async one."""

    def __init__(self, name: str, store: Any, is_async: bool, clock: Any) -> None:
        self.name = name
        self.store = store
        self.is_async = is_async
        self.clock = clock

    def handler(self, body: Callable[[Any, Any], Any], **options: Any) -> Any:
        """``@idempotent(store=..., **options)`` over ``body(event, context)``."""
        if self.is_async:

            async def async_handler(event: Any, context: Any) -> Any:
                return body(event, context)

            return idempotent(store=self.store, **options)(async_handler)

        def handler(event: Any, context: Any) -> Any:
            return body(event, context)

        return idempotent(store=self.store, **options)(handler)

    def function(self, body: Callable[[Any], Any], **options: Any) -> Any:
        """``@idempotent_function(store=..., data="payload", **options)`` over ``body(payload)``."""
        if self.is_async:

            async def async_function(payload: Any) -> Any:
                return body(payload)

            return idempotent_function(store=self.store, data="payload", **options)(async_function)

        def function(payload: Any) -> Any:
            return body(payload)

        return idempotent_function(store=self.store, data="payload", **options)(function)

    def call(self, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        return run_coro(result) if self.is_async else result

    def get(self, key: str) -> Record | None:
        return run_coro(self.store.get(key)) if self.is_async else self.store.get(key)

    def claim(self, key: str, tok: str, lease_ms: int) -> Any:
        op = self.store.claim(key, token=tok, lease_ms=lease_ms, ttl_ms=HOUR_MS, fingerprint=None)
        return run_coro(op) if self.is_async else op


@pytest.fixture(params=["memory", "sqlite", "async-memory", "async-sqlite"])
def flavour(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Flavour]:
    name = request.param
    path = tmp_path / "events.sqlite3"
    if name == "memory":
        store: Any = MemoryStore(clock=clock)
    elif name == "sqlite":
        store = SQLiteStore(path, clock=clock)
    elif name == "async-memory":
        store = AsyncMemoryStore(clock=clock)
    else:
        store = AsyncSQLiteStore(path, clock=clock)
    try:
        yield Flavour(name, store, name.startswith("async"), clock)
    finally:
        if hasattr(store, "close"):
            store.close()


class Counter:
    """Counts executions of a handler body and answers with a fixed result."""

    def __init__(self, result: Any = None) -> None:
        self.calls = 0
        self.result = result

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.result


# -- one execution per event -------------------------------------------------

SAMPLES = [
    pytest.param(
        "apiGatewayProxyV2Event.json", "powertools_json(body).message", "hello world", id="apigw-v2"
    ),
    pytest.param(
        "apiGatewayProxyV2Event.json", "from_json(body).message", "hello world", id="apigw-v2-fj"
    ),
    pytest.param("apiGatewayProxyEvent.json", "body", "Hello from Lambda!", id="apigw-v1"),
    pytest.param(
        "sqsEvent.json", "Records[0].messageId", "059f36b4-87a3-44ab-83d2-661975830a7d", id="sqs"
    ),
    pytest.param("sqsEvent.json", "powertools_json(Records[1].body).message", "foo1", id="sqs-1"),
    pytest.param(
        "eventBridgeEvent.json",
        "detail",
        {"instance_id": "i-1234567890abcdef0", "state": "terminated"},
        id="eventbridge",
    ),
    pytest.param(
        "kinesisStreamEvent.json",
        "from_base64(Records[0].kinesis.data)",
        "Hello, this is a test.",
        id="kinesis",
    ),
    pytest.param(
        "kinesisStreamEvent.json",
        "powertools_base64(Records[1].kinesis.data)",
        "This is only a test.",
        id="kinesis-1",
    ),
]


@pytest.mark.parametrize(("event_file", "expression", "selected"), SAMPLES)
def test_a_duplicate_event_replays_the_stored_result(
    flavour: Flavour, event_file: str, expression: str, selected: Any
) -> None:
    event = load_event(event_file)
    seen: list[Any] = []

    def body(event: Any, context: Any) -> Any:
        seen.append(copy.deepcopy(event))
        return {"statusCode": 200, "body": f"run {len(seen)}", "flags": [True, None, 0]}

    handler = flavour.handler(
        body, config=IdempotencyConfig(event_key_jmespath=expression, key_prefix="evt")
    )
    first = flavour.call(handler, event, LambdaContext())
    second = flavour.call(handler, copy.deepcopy(event), LambdaContext())

    assert first == {"statusCode": 200, "body": "run 1", "flags": [True, None, 0]}
    assert second == first
    assert seen == [event]
    assert handler.stats[Event.EXECUTED] == 1
    assert handler.stats[Event.REPLAYED] == 1
    record = flavour.get(key_of("evt", selected))
    assert record is not None
    assert (record.status, record.deadline_ms) == (Status.COMPLETED, flavour.clock.now + HOUR_MS)


def test_an_event_with_another_key_runs_again(flavour: Flavour) -> None:
    event = load_event("apiGatewayProxyV2Event.json")
    other = copy.deepcopy(event)
    other["body"] = json.dumps({"message": "goodbye", "username": "tom"})
    counter = Counter({"ok": True})
    handler = flavour.handler(
        counter, config=IdempotencyConfig(event_key_jmespath="powertools_json(body).message")
    )

    flavour.call(handler, event, None)
    flavour.call(handler, other, None)
    flavour.call(handler, event, None)

    assert counter.calls == 2


def test_the_whole_sqs_record_as_the_payload(flavour: Flavour) -> None:
    record = load_event("sqsEvent.json")["Records"][0]
    counter = Counter("processed")
    process = flavour.function(counter, config=IdempotencyConfig(key_prefix="sqs"))

    assert flavour.call(process, record) == "processed"
    # Dict order does not matter: the key hashes canonical JSON.
    assert flavour.call(process, dict(reversed(list(record.items())))) == "processed"
    assert counter.calls == 1
    assert flavour.get(key_of("sqs", record)) is not None


def test_the_sqs_message_id_as_the_key(flavour: Flavour) -> None:
    records = load_event("sqsEvent.json")["Records"]
    counter = Counter(7)
    process = flavour.function(
        counter, config=IdempotencyConfig(event_key_jmespath="messageId", key_prefix="sqs")
    )
    redelivered = dict(records[0], receiptHandle="another-receipt", attributes={})

    assert [flavour.call(process, r) for r in (records[0], redelivered, records[1])] == [7, 7, 7]
    assert counter.calls == 2
    assert flavour.get(key_of("sqs", records[0]["messageId"])) is not None
    assert flavour.get(key_of("sqs", records[1]["messageId"])) is not None


# -- results replay exactly --------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [0, "", [], {}, False, None, 0.0, [0, "", None, False, {}], {"a": None}],
    ids=repr,
)
def test_falsy_results_replay_as_they_were(flavour: Flavour, result: Any) -> None:
    event = load_event("eventBridgeEvent.json")
    counter = Counter(result)
    handler = flavour.handler(counter, config=IdempotencyConfig(event_key_jmespath="detail"))

    first = flavour.call(handler, event, None)
    second = flavour.call(handler, event, None)

    assert counter.calls == 1
    assert (type(first), first) == (type(result), result)
    assert (type(second), second) == (type(result), result)
    assert handler.stats[Event.REPLAYED] == 1


# -- the Lambda context ------------------------------------------------------


def test_the_lambda_context_sets_the_lease(flavour: Flavour) -> None:
    event = load_event("sqsEvent.json")
    key = key_of("ctx", event["Records"][0]["messageId"])
    during: list[Record | None] = []

    def body(event: Any, context: Any) -> str:
        during.append(flavour.get(key))
        return "done"

    handler = flavour.handler(
        body,
        config=IdempotencyConfig(
            event_key_jmespath="Records[0].messageId", key_prefix="ctx", lease_seconds=60
        ),
    )
    t0 = flavour.clock.now
    assert flavour.call(handler, event, LambdaContext(remaining_ms=5_000)) == "done"

    assert len(during) == 1
    assert during[0] is not None
    assert (during[0].status, during[0].deadline_ms) == (Status.IN_PROGRESS, t0 + 5_000)


def test_the_handler_takes_its_event_and_context_by_position_or_keyword(
    flavour: Flavour,
) -> None:
    event = load_event("sqsEvent.json")
    key = key_of("kw", event["Records"][0]["messageId"])
    seen: list[tuple[Any, Any, Record | None]] = []

    def body(event: Any, context: Any) -> str:
        seen.append((event["Records"][0]["messageId"], context, flavour.get(key)))
        return "done"

    handler = flavour.handler(
        body, config=IdempotencyConfig(event_key_jmespath="Records[0].messageId", key_prefix="kw")
    )
    context = LambdaContext(remaining_ms=4_000)
    t0 = flavour.clock.now

    assert flavour.call(handler, event, context=context) == "done"
    assert flavour.call(handler, event=event, context=context) == "done"
    assert flavour.call(handler, event) == "done"

    assert len(seen) == 1
    message_id, given, during = seen[0]
    assert (message_id, given) == (event["Records"][0]["messageId"], context)
    assert during is not None
    assert during.deadline_ms == t0 + 4_000
    assert handler.stats[Event.REPLAYED] == 2


def test_a_handler_called_with_the_event_only_gets_context_none(flavour: Flavour) -> None:
    event = load_event("eventBridgeEvent.json")
    contexts: list[Any] = []

    def body(event: Any, context: Any) -> str:
        contexts.append(context)
        return "done"

    handler = flavour.handler(body, config=IdempotencyConfig(event_key_jmespath="id"))

    assert flavour.call(handler, event) == "done"
    assert contexts == [None]


@pytest.mark.parametrize("context", [None, object()], ids=["none", "no-method"])
def test_without_a_lambda_context_the_lease_is_lease_seconds(
    flavour: Flavour, context: Any
) -> None:
    event = load_event("eventBridgeEvent.json")
    key = key_of("ctx", event["id"])
    during: list[Record | None] = []

    def body(event: Any, context: Any) -> str:
        during.append(flavour.get(key))
        return "done"

    handler = flavour.handler(
        body, config=IdempotencyConfig(event_key_jmespath="id", key_prefix="ctx", lease_seconds=7)
    )
    flavour.call(handler, event, context)

    assert during[0] is not None
    assert during[0].deadline_ms == flavour.clock.now + 7_000


# -- missing keys ------------------------------------------------------------


def test_a_missing_key_raises_and_the_handler_does_not_run(flavour: Flavour) -> None:
    event = load_event("eventBridgeEvent.json")
    counter = Counter("ran")
    handler = flavour.handler(
        counter,
        config=IdempotencyConfig(
            event_key_jmespath="detail.order_id", raise_on_no_idempotency_key=True
        ),
    )

    with pytest.raises(IdempotencyKeyError, match=r"detail\.order_id"):
        flavour.call(handler, event, None)
    assert counter.calls == 0


def test_a_missing_key_warns_and_runs_every_time(flavour: Flavour) -> None:
    event = load_event("eventBridgeEvent.json")
    counter = Counter("ran")
    handler = flavour.handler(
        counter, config=IdempotencyConfig(event_key_jmespath="detail.order_id", key_prefix="nk")
    )

    for _ in range(2):
        with pytest.warns(OnceOnlyWarning, match="no idempotency key"):
            assert flavour.call(handler, event, None) == "ran"

    assert counter.calls == 2
    assert handler.stats[Event.UNPROTECTED] == 2
    assert flavour.get(key_of("nk", None)) is None


# -- payload validation ------------------------------------------------------


def test_payload_validation_rejects_a_reused_key_and_replays_an_identical_retry(
    flavour: Flavour,
) -> None:
    event = load_event("apiGatewayProxyV2Event.json")
    reused = copy.deepcopy(event)
    reused["body"] = json.dumps({"message": "hello world", "username": "jerry"})
    retried = copy.deepcopy(event)
    retried["headers"]["header1"] = "a retry changes headers, not the validated part"
    counter = Counter({"greeting": "hi tom"})
    handler = flavour.handler(
        counter,
        config=IdempotencyConfig(
            event_key_jmespath="powertools_json(body).message",
            payload_validation_jmespath="powertools_json(body).username",
        ),
    )

    first = flavour.call(handler, event, None)
    with pytest.raises(IdempotencyKeyReuseError):
        flavour.call(handler, reused, None)
    assert flavour.call(handler, retried, None) == first
    assert flavour.call(handler, event, None) == first

    assert counter.calls == 1
    assert handler.stats[Event.KEY_REUSE] == 1
    assert handler.stats[Event.REPLAYED] == 2


# -- response hook -----------------------------------------------------------


def test_the_response_hook_sees_replays_only(flavour: Flavour) -> None:
    event = load_event("eventBridgeEvent.json")
    key = key_of("hook", event["detail"])
    hooked: list[tuple[Any, Record]] = []

    def hook(result: Any, record: Record) -> Any:
        hooked.append((result, record))
        return {**result, "replayed": True}

    handler = flavour.handler(
        Counter({"state": "terminated"}),
        config=IdempotencyConfig(
            event_key_jmespath="detail", key_prefix="hook", response_hook=hook
        ),
    )

    assert flavour.call(handler, event, None) == {"state": "terminated"}
    assert hooked == []
    assert flavour.call(handler, event, None) == {"state": "terminated", "replayed": True}
    assert hooked == [({"state": "terminated"}, flavour.get(key))]
    assert hooked[0][1].status is Status.COMPLETED


# -- failures release the key ------------------------------------------------


class PaymentDeclinedError(Exception):
    pass


def test_an_exception_releases_the_claim_and_propagates_unchanged(flavour: Flavour) -> None:
    event = load_event("sqsEvent.json")
    declined = PaymentDeclinedError("card declined")
    outcomes: list[Any] = [declined, "charged"]

    def body(event: Any, context: Any) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    handler = flavour.handler(
        body, config=IdempotencyConfig(event_key_jmespath="Records[0].messageId", key_prefix="x")
    )

    with pytest.raises(PaymentDeclinedError) as caught:
        flavour.call(handler, event, LambdaContext())
    assert caught.value is declined
    assert flavour.get(key_of("x", event["Records"][0]["messageId"])) is None

    assert flavour.call(handler, event, LambdaContext()) == "charged"
    assert flavour.call(handler, event, LambdaContext()) == "charged"
    assert outcomes == []
    assert handler.stats[Event.RELEASED] == 1


# -- a claim held elsewhere --------------------------------------------------


def test_a_live_claim_elsewhere_raises_in_progress_with_the_time_left(flavour: Flavour) -> None:
    event = load_event("kinesisStreamEvent.json")
    key = key_of("kin", "Hello, this is a test.")
    assert flavour.claim(key, token(), lease_ms=2_000) == Acquired(takeover=False)
    flavour.clock.advance(500)
    counter = Counter("ran")
    handler = flavour.handler(
        counter,
        config=IdempotencyConfig(
            event_key_jmespath="from_base64(Records[0].kinesis.data)", key_prefix="kin"
        ),
    )

    with pytest.raises(IdempotencyAlreadyInProgressError) as caught:
        flavour.call(handler, event, LambdaContext())

    assert (caught.value.key, caught.value.retry_after_ms) == (key, 1_500)
    assert counter.calls == 0
    # Once the other lease has run out, the next delivery takes the key over.
    flavour.clock.advance(1_500)
    assert flavour.call(handler, event, LambdaContext()) == "ran"
    assert handler.stats[Event.TAKEOVER] == 1


def test_a_duplicate_during_the_run_is_told_to_retry(flavour: Flavour) -> None:
    event = load_event("apiGatewayProxyV2Event.json")
    inner: list[IdempotencyAlreadyInProgressError] = []
    handlers: list[Any] = []

    def body(event: Any, context: Any) -> str:
        flavour.clock.advance(1_200)
        with pytest.raises(IdempotencyAlreadyInProgressError) as caught:
            flavour.call(handlers[0], event, LambdaContext())
        inner.append(caught.value)
        return "outer"

    handlers.append(
        flavour.handler(
            body,
            config=IdempotencyConfig(
                event_key_jmespath="powertools_json(body).message", on_in_progress="raise"
            ),
        )
    )

    assert flavour.call(handlers[0], event, LambdaContext(remaining_ms=5_000)) == "outer"
    assert [e.retry_after_ms for e in inner] == [5_000 - 1_200]


# -- switched off ------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true"])
def test_onceonly_disabled_passes_through_with_a_warning(
    flavour: Flavour, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ONCEONLY_DISABLED", value)
    event = load_event("eventBridgeEvent.json")
    counter = Counter("ran")
    handler = flavour.handler(
        counter, config=IdempotencyConfig(event_key_jmespath="detail", key_prefix="off")
    )

    for _ in range(2):
        with pytest.warns(OnceOnlyWarning, match="ONCEONLY_DISABLED"):
            assert flavour.call(handler, event, None) == "ran"

    assert counter.calls == 2
    assert flavour.get(key_of("off", event["detail"])) is None


def test_onceonly_disabled_0_protects_as_usual(
    flavour: Flavour, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_DISABLED", "0")
    event = load_event("eventBridgeEvent.json")
    counter = Counter("ran")
    handler = flavour.handler(counter, config=IdempotencyConfig(event_key_jmespath="detail"))

    flavour.call(handler, event, None)
    flavour.call(handler, event, None)

    assert counter.calls == 1


# -- local cache -------------------------------------------------------------


def test_the_local_cache_replays_without_the_store(flavour: Flavour) -> None:
    event = load_event("eventBridgeEvent.json")
    key = key_of("lc", event["detail"])
    counter = Counter({"n": 1})
    handler = flavour.handler(
        counter,
        config=IdempotencyConfig(
            event_key_jmespath="detail", key_prefix="lc", use_local_cache=True
        ),
    )
    assert flavour.call(handler, event, None) == {"n": 1}

    # Take the record out of the store: only the cache can answer now, and a
    # store call would claim the key afresh and run the handler again.
    if flavour.is_async:
        assert run_coro(flavour.store.delete(key)) is True
    else:
        assert flavour.store.delete(key) is True

    assert flavour.call(handler, event, None) == {"n": 1}
    assert counter.calls == 1
    assert handler.stats[Event.CACHE_HIT] == 1
    assert handler.stats[Event.REPLAYED] == 0
    assert flavour.get(key) is None


def test_the_local_cache_still_validates_the_payload(flavour: Flavour) -> None:
    event = load_event("apiGatewayProxyV2Event.json")
    reused = copy.deepcopy(event)
    reused["body"] = json.dumps({"message": "hello world", "username": "jerry"})
    handler = flavour.handler(
        Counter("hi"),
        config=IdempotencyConfig(
            event_key_jmespath="powertools_json(body).message",
            payload_validation_jmespath="powertools_json(body).username",
            use_local_cache=True,
        ),
    )
    flavour.call(handler, event, None)

    with pytest.raises(IdempotencyKeyReuseError):
        flavour.call(handler, reused, None)
    assert flavour.call(handler, event, None) == "hi"
    assert handler.stats[Event.CACHE_HIT] == 1


# -- output serializers ------------------------------------------------------


@dataclasses.dataclass
class Receipt:
    order_id: str
    amount_cents: int
    lines: list[str]
    note: str | None = None


class Invoice(pydantic.BaseModel):
    number: int
    issued: datetime.datetime
    items: list[str]
    paid: bool = False


RECEIPT = Receipt("o-1", 0, [], None)
INVOICE = Invoice(
    number=42, issued=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc), items=[]
)


def test_a_dataclass_return_annotation_replays_an_instance(flavour: Flavour) -> None:
    calls: list[Any] = []
    options = {"store": flavour.store, "data": "order"}
    if flavour.is_async:

        @idempotent_function(**options)
        async def make_receipt(order: dict[str, Any]) -> Receipt:
            calls.append(order)
            return Receipt(order["id"], 0, [], None)

    else:

        @idempotent_function(**options)
        def make_receipt(order: dict[str, Any]) -> Receipt:
            calls.append(order)
            return Receipt(order["id"], 0, [], None)

    first = flavour.call(make_receipt, {"id": "o-1"})
    second = flavour.call(make_receipt, {"id": "o-1"})

    assert (type(first), first) == (Receipt, RECEIPT)
    assert (type(second), second) == (Receipt, RECEIPT)
    assert len(calls) == 1


def test_a_pydantic_return_annotation_replays_an_instance(flavour: Flavour) -> None:
    calls: list[Any] = []
    options = {"store": flavour.store, "data": "number"}
    if flavour.is_async:

        @idempotent_function(**options)
        async def make_invoice(number: int) -> Invoice:
            calls.append(number)
            return INVOICE.model_copy()

    else:

        @idempotent_function(**options)
        def make_invoice(number: int) -> Invoice:
            calls.append(number)
            return INVOICE.model_copy()

    first = flavour.call(make_invoice, 42)
    second = flavour.call(make_invoice, 42)

    assert (type(first), first) == (Invoice, INVOICE)
    assert (type(second), second) == (Invoice, INVOICE)
    assert second.issued.tzinfo == datetime.timezone.utc
    assert calls == [42]


@pytest.mark.parametrize(
    ("serializer", "value"),
    [
        pytest.param(Receipt, RECEIPT, id="dataclass"),
        pytest.param(Invoice, INVOICE, id="pydantic"),
        pytest.param(
            CustomSerializer(datetime.date.isoformat, datetime.date.fromisoformat),
            datetime.date(2024, 2, 29),
            id="custom",
        ),
    ],
)
def test_an_explicit_output_serializer_replays_an_instance(
    flavour: Flavour, serializer: Any, value: Any
) -> None:
    counter = Counter(value)
    fn = flavour.function(counter, output_serializer=serializer)

    first = flavour.call(fn, {"id": 1})
    second = flavour.call(fn, {"id": 1})

    assert (type(second), second) == (type(value), value)
    assert first == value
    assert counter.calls == 1


@pytest.mark.parametrize(
    "result",
    [{1, 2}, object(), [1.5, object()], {"when": datetime.datetime(2024, 1, 1)}],
    ids=["set", "object", "list-with-object", "dict-with-datetime"],
)
def test_an_unserializable_result_raises_and_releases_the_key(
    flavour: Flavour, result: Any
) -> None:
    counter = Counter(result)
    fn = flavour.function(counter, config=IdempotencyConfig(key_prefix="ser"))

    with pytest.raises(IdempotencySerializationError):
        flavour.call(fn, {"id": 1})
    assert flavour.get(key_of("ser", {"id": 1})) is None

    with pytest.raises(IdempotencySerializationError):
        flavour.call(fn, {"id": 1})
    assert counter.calls == 2
    assert fn.stats[Event.RELEASED] == 2


# -- idempotent_function: where the key comes from ---------------------------


def test_data_by_position_or_keyword_gives_the_same_key(flavour: Flavour) -> None:
    calls: list[Any] = []
    options = {"store": flavour.store, "data": "order", "config": IdempotencyConfig(key_prefix="o")}
    if flavour.is_async:

        @idempotent_function(**options)
        async def charge(customer: str, order: dict[str, Any], *, dry_run: bool = False) -> int:
            calls.append((customer, order, dry_run))
            return len(calls)

    else:

        @idempotent_function(**options)
        def charge(customer: str, order: dict[str, Any], *, dry_run: bool = False) -> int:
            calls.append((customer, order, dry_run))
            return len(calls)

    order = {"id": 17, "amount": 300}
    results = [
        flavour.call(charge, "c-1", order),
        flavour.call(charge, "c-1", order=order),
        flavour.call(charge, customer="c-2", order=dict(order), dry_run=True),
    ]

    assert results == [1, 1, 1]
    assert calls == [("c-1", order, False)]
    assert flavour.get(key_of("o", order)) is not None


def test_key_callable_picks_the_key(flavour: Flavour) -> None:
    calls: list[Any] = []

    def idempotency_key(request: dict[str, Any]) -> str:
        return str(request["headers"]["Idempotency-Key"])

    options = {"store": flavour.store, "key": idempotency_key}
    options["config"] = IdempotencyConfig(key_prefix="http")
    if flavour.is_async:

        @idempotent_function(**options)
        async def create(request: dict[str, Any]) -> str:
            calls.append(request)
            return "created"

    else:

        @idempotent_function(**options)
        def create(request: dict[str, Any]) -> str:
            calls.append(request)
            return "created"

    a = {"headers": {"Idempotency-Key": "k-1"}, "body": "first"}
    b = {"headers": {"Idempotency-Key": "k-1"}, "body": "different body, same key"}
    c = {"headers": {"Idempotency-Key": "k-2"}, "body": "first"}

    assert [flavour.call(create, r) for r in (a, b, c)] == ["created"] * 3
    assert calls == [a, c]
    assert flavour.get(key_of("http", "k-1")) is not None


# -- mistakes caught when decorating -----------------------------------------


def _sync_fn(order: Any) -> Any:
    return order


async def _async_fn(order: Any) -> Any:
    return order


def _varargs_fn(*orders: Any) -> Any:
    return orders


@pytest.mark.parametrize(
    ("decorate", "message"),
    [
        pytest.param(
            lambda: idempotent_function(store=MemoryStore(), data="missing")(_sync_fn),
            "missing",
            id="data-not-a-parameter",
        ),
        pytest.param(
            lambda: idempotent_function(store=MemoryStore(), data="orders")(_varargs_fn),
            "orders",
            id="data-is-varargs",
        ),
        pytest.param(
            lambda: idempotent_function(store=MemoryStore())(_sync_fn),
            "data=",
            id="no-data-no-key",
        ),
        pytest.param(
            lambda: idempotent_function(store=MemoryStore(), key="order")(_sync_fn),
            "key must be callable",
            id="key-not-callable",
        ),
        pytest.param(
            lambda: idempotent_function(
                store=MemoryStore(), data="order", config={"key_prefix": "x"}
            )(_sync_fn),
            "IdempotencyConfig",
            id="config-is-a-dict",
        ),
        pytest.param(
            lambda: idempotent(store=MemoryStore(), config={"key_prefix": "x"})(_sync_fn),
            "IdempotencyConfig",
            id="handler-config-is-a-dict",
        ),
        pytest.param(
            lambda: idempotent_function(store=AsyncMemoryStore(), data="order")(_sync_fn),
            "must be sync",
            id="async-store-sync-function",
        ),
        pytest.param(
            lambda: idempotent(store=AsyncMemoryStore())(_sync_fn),
            "must be sync",
            id="async-store-sync-handler",
        ),
        pytest.param(
            lambda: idempotent_function(store=MemoryStore(), data="order")(_async_fn),
            "must be async",
            id="sync-store-async-function",
        ),
        pytest.param(
            lambda: idempotent(store=MemoryStore())(_async_fn),
            "must be async",
            id="sync-store-async-handler",
        ),
        pytest.param(
            lambda: idempotent_function(store=object(), data="order")(_sync_fn),
            "must be sync",
            id="not-a-store",
        ),
        pytest.param(
            lambda: idempotent_function(
                store=MemoryStore(),
                key=lambda order: order,
                config=IdempotencyConfig(payload_validation_jmespath="a"),
            )(_sync_fn),
            "payload_validation_jmespath",
            id="validation-without-data",
        ),
    ],
)
def test_mistakes_are_refused_when_decorating(decorate: Callable[[], Any], message: str) -> None:
    with pytest.raises(IdempotencyConfigError, match=message):
        decorate()


def test_an_async_sqlite_store_on_a_sync_function_is_refused(tmp_path: Path) -> None:
    store = AsyncSQLiteStore(tmp_path / "db.sqlite3")
    try:
        with pytest.raises(IdempotencyConfigError, match="must be sync"):
            idempotent_function(store=store, data="order")(_sync_fn)
    finally:
        store.close()


def test_a_sync_sqlite_store_on_an_async_function_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    try:
        with pytest.raises(IdempotencyConfigError, match="must be async"):
            idempotent_function(store=store, data="order")(_async_fn)
    finally:
        store.close()


# -- waiting for another execution (real clock) ------------------------------


def test_on_in_progress_wait_returns_the_other_executions_result() -> None:
    store = MemoryStore()
    started, finish = threading.Event(), threading.Event()
    calls: list[int] = []

    @idempotent_function(store=store, data="job", config=IdempotencyConfig(on_in_progress="wait"))
    def work(job: dict[str, Any]) -> dict[str, Any]:
        calls.append(job["id"])
        started.set()
        finish.wait(30)
        return {"done": job["id"]}

    results: dict[str, Any] = {}

    def deliver(name: str) -> None:
        try:
            results[name] = work({"id": 9})
        except BaseException as exc:  # reported by the assertion below
            results[name] = exc

    first = threading.Thread(target=deliver, args=("first",))
    first.start()
    try:
        assert started.wait(30) is True
        second = threading.Thread(target=deliver, args=("second",))
        second.start()
        # Let the duplicate see the live claim at least once before finishing.
        while work.stats[Event.WAITED] == 0 and second.is_alive():
            time.sleep(0.005)
    finally:
        finish.set()
        first.join()
    second.join()

    assert results == {"first": {"done": 9}, "second": {"done": 9}}
    assert calls == [9]


def test_on_in_progress_wait_gives_up_after_its_timeout() -> None:
    store = MemoryStore()
    calls: list[Any] = []

    @idempotent_function(
        store=store,
        data="job",
        config=IdempotencyConfig(
            key_prefix="w", on_in_progress="wait", wait_timeout_seconds=0.05, lease_seconds=60
        ),
    )
    def process(job: Any) -> str:
        calls.append(job)
        return "ran"

    key = key_of("w", {"id": 1})
    assert store.claim(key, token=token(), lease_ms=60_000, ttl_ms=1000, fingerprint=None) == (
        Acquired()
    )

    with pytest.raises(IdempotencyAlreadyInProgressError) as caught:
        process({"id": 1})

    assert caught.value.key == key
    assert caught.value.retry_after_ms > 0
    assert process.stats[Event.WAITED] >= 1
    assert calls == []


# -- heartbeat (virtual time: every beat at its exact instant) ---------------
#
# The store runs on a ManualClock and the heartbeat's waits move it (testkit's
# VirtualHeartbeatTime / VirtualAsyncHeartbeatTime), so a run "more than three
# leases" long takes no real time, each renewal lands at a known instant, and a
# slow machine cannot make a beat late.

LEASE_MS = 400
BEAT_MS = 133  # a third of the lease
PAST_THREE_LEASES_MS = 1300


class _RenewTimes(MemoryStore):
    """A MemoryStore that notes on its clock when each renew came, and its answer."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.renewals: list[tuple[int, bool]] = []

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        answer = super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append((self.clock.now, answer))
        return answer


def _beats(start: int) -> list[tuple[int, bool]]:
    """Every renewal due in the run: one per beat, each keeping the claim."""
    return [(start + BEAT_MS * i, True) for i in range(1, PAST_THREE_LEASES_MS // BEAT_MS + 1)]


def _run_with_a_check(
    heartbeat: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, Record | None, Any, _RenewTimes, int]:
    """Run a job past three of its 0.4 s leases; claim its key from outside meanwhile."""
    clock = ManualClock()
    start = clock.now
    store = _RenewTimes(clock)
    virtual = VirtualHeartbeatTime(clock, PAST_THREE_LEASES_MS)
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)
    config = IdempotencyConfig(key_prefix="hb", lease_seconds=0.4, heartbeat=heartbeat)
    seen: list[Any] = []

    @idempotent_function(store=store, data="job", config=config)
    def work(job: dict[str, Any]) -> dict[str, Any]:
        if heartbeat:
            assert virtual.reached.wait(30)  # the heartbeat has beaten through the run
        else:
            clock.advance(PAST_THREE_LEASES_MS)
        seen.append(
            store.claim(
                key_of("hb", {"id": 5}), token=token(), lease_ms=400, ttl_ms=1000, fingerprint=None
            )
        )
        return {"done": job["id"]}

    outcome = [work({"id": 5})]
    return outcome, seen[0], store.get(key_of("hb", {"id": 5})), work.stats, store, start


def test_heartbeat_keeps_the_claim_alive_past_its_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, seen, after, stats, store, start = _run_with_a_check(True, monkeypatch)

    # Renewed every third of the lease, on time, all through the run.
    assert store.renewals == _beats(start)
    assert type(seen) is Found
    assert seen.record.status is Status.IN_PROGRESS
    assert seen.record.deadline_ms == store.renewals[-1][0] + LEASE_MS
    assert outcome == [{"done": 5}]
    assert after is not None
    assert after.status is Status.COMPLETED
    assert after.token == seen.record.token
    assert stats[Event.LEASE_LOST] == 0


def test_without_heartbeat_the_claim_is_taken_over(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="onceonly"):
        outcome, seen, after, stats, store, _ = _run_with_a_check(False, monkeypatch)

    assert store.renewals == []
    assert seen == Acquired(takeover=True)
    # The late finisher keeps its result but does not overwrite the new claim.
    assert outcome == [{"done": 5}]
    assert after is not None
    assert after.status is Status.IN_PROGRESS
    assert stats[Event.LEASE_LOST] == 1
    assert any("losing its lease" in r.getMessage() for r in caplog.records)


class _AsyncRenewTimes(AsyncMemoryStore):
    """An AsyncMemoryStore that notes on its clock when each renew came, and its answer."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.renewals: list[tuple[int, bool]] = []

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        answer = await super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append((self.clock.now, answer))
        return answer


def test_async_heartbeat_keeps_the_claim_alive_past_its_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    start = clock.now
    store = _AsyncRenewTimes(clock)
    config = IdempotencyConfig(key_prefix="ahb", lease_seconds=0.4, heartbeat=True)
    key = key_of("ahb", {"id": 6})

    async def scenario() -> tuple[Any, Any, Record | None]:
        virtual = VirtualAsyncHeartbeatTime(clock, PAST_THREE_LEASES_MS)
        monkeypatch.setattr(onceonly._async, "asyncio", virtual)
        seen: list[Any] = []

        @idempotent_function(store=store, data="job", config=config)
        async def work(job: dict[str, Any]) -> str:
            await asyncio.wait_for(virtual.reached.wait(), 30)  # beaten through the run
            seen.append(
                await store.claim(key, token=token(), lease_ms=400, ttl_ms=1000, fingerprint=None)
            )
            return "done"

        result = await work({"id": 6})
        return result, seen[0], await store.get(key)

    result, seen, after = asyncio.run(scenario())

    assert store.renewals == _beats(start)
    assert result == "done"
    assert type(seen) is Found
    assert seen.record.status is Status.IN_PROGRESS
    assert seen.record.deadline_ms == store.renewals[-1][0] + LEASE_MS
    assert after is not None
    assert (after.status, after.token) == (Status.COMPLETED, seen.record.token)
