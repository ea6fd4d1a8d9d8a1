"""Powertools' functional idempotency tests, ported (issue 11): results, async, failures.

What comes back on a replay (plain values, falsy ones, dataclass and pydantic
results through serializers, a custom serializer pair), ``async def``
functions on the async twins of every store, the switch that turns
idempotency off, what a failing store does to a call, a DynamoDB table with a
sort key, and the record a ``response_hook`` gets. The inventory of what was
ported from which Powertools test is in test_powertools_functional.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from port_support import Api, AsyncRunner, Context

from dynamodb_harness import closed_port
from onceonly import IdempotencyConfig, idempotent
from onceonly.records import Status
from onceonly.serializers import CustomSerializer, DataclassSerializer, PydanticSerializer
from testkit import ManualClock

# What the warnings of an unprotected call say, in onceonly's words and in Powertools'.
WARNS = "(?i)idempotency"

# -- plain results -------------------------------------------------------------------

RESULTS = [
    None,
    0,
    False,
    "",
    [],
    {},
    "a string",
    ["a", 1, None, {"b": [True]}],
    {"message": "Foo", "items": [1, 2.5, None]},
    {"statusCode": 200, "decimal_val": Decimal("2.5"), "decimal_NaN": Decimal("NaN")},
]


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types at every depth (NaN Decimals equal by their digits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return bool(a == b)


@pytest.mark.parametrize("result", RESULTS, ids=repr)
def test_a_result_replays_as_itself(api: Api, pt_store: Any, result: Any) -> None:
    # Powertools replays 0, False, "", [] and {} as None, and Decimals as str.
    runs: list[int] = []

    @api.idempotent(store=pt_store)
    def handler(event: dict[str, Any], context: Any) -> Any:
        runs.append(1)
        return result

    assert same(handler({"data": 1}, Context()), result)
    assert same(handler({"data": 1}, Context()), result)
    assert runs == [1]


@pytest.mark.parametrize(
    "result",
    [float("nan"), float("inf"), {"ratio": float("-inf"), "mean": float("nan")}],
    ids=["nan", "inf", "nested"],
)
def test_a_float_nan_or_infinity_result_replays(api: Api, pt_store: Any, result: Any) -> None:
    # Powertools writes results with Python's json (NaN and Infinity allowed) and
    # even turns a Decimal NaN into a float NaN on purpose; its conftest's
    # response holds Decimal("NaN") and replays as float NaN. A handler that
    # returns a float NaN or Infinity runs once and replays there.
    runs: list[int] = []

    @api.idempotent(store=pt_store)
    def handler(event: dict[str, Any], context: Any) -> Any:
        runs.append(1)
        return result

    first = handler({"data": 1}, Context())
    second = handler({"data": 1}, Context())

    assert json.dumps(first) == json.dumps(second) == json.dumps(result)
    assert runs == [1]


# -- serializers ----------------------------------------------------------------------


@dataclasses.dataclass
class PaymentInput:
    customer_id: str
    transaction_id: str


@dataclasses.dataclass
class PaymentOutput:
    customer_id: str
    transaction_id: str


class ModelInput(pydantic.BaseModel):
    customer_id: str
    transaction_id: str


class ModelOutput(pydantic.BaseModel):
    customer_id: str
    transaction_id: str


PAYMENT = {"customer_id": "fake", "transaction_id": "fake-id"}


@pytest.mark.parametrize(
    "serializer",
    [DataclassSerializer(PaymentOutput), DataclassSerializer, None],
    ids=["explicit", "deduced", "annotation"],
)
def test_a_dataclass_result_replays_as_the_dataclass(
    api: Api, pt_store: Any, serializer: Any
) -> None:
    runs: list[int] = []

    @api.idempotent_function(
        store=pt_store, data="payment", config=IdempotencyConfig(), output_serializer=serializer
    )
    def collect_payment(payment: PaymentInput) -> PaymentOutput:
        runs.append(1)
        return PaymentOutput(**dataclasses.asdict(payment))

    first = collect_payment(payment=PaymentInput(**PAYMENT))
    second = collect_payment(payment=PaymentInput(**PAYMENT))

    assert isinstance(second, PaymentOutput)
    assert first == second == PaymentOutput(**PAYMENT)
    assert runs == [1]


@pytest.mark.parametrize(
    "serializer",
    [PydanticSerializer(ModelOutput), PydanticSerializer, None],
    ids=["explicit", "deduced", "annotation"],
)
def test_a_pydantic_result_replays_as_the_model(api: Api, pt_store: Any, serializer: Any) -> None:
    runs: list[int] = []

    @api.idempotent_function(store=pt_store, data="payment", output_serializer=serializer)
    def collect_payment(payment: ModelInput) -> ModelOutput:
        runs.append(1)
        return ModelOutput(**payment.model_dump())

    first = collect_payment(payment=ModelInput(**PAYMENT))
    second = collect_payment(payment=ModelInput(**PAYMENT))

    assert isinstance(second, ModelOutput)
    assert first == second == ModelOutput(**PAYMENT)
    assert runs == [1]


def test_a_custom_serializer_stores_on_the_first_run_and_rebuilds_on_a_replay(
    api: Api, pt_store: Any
) -> None:
    calls: list[tuple[str, Any]] = []

    def to_dict(value: Any) -> Any:
        calls.append(("to", value))
        return {"wrapped": value}

    def from_dict(data: Any) -> Any:
        calls.append(("from", data))
        return data["wrapped"]

    config = IdempotencyConfig(use_local_cache=True)

    @api.idempotent_function(
        store=pt_store,
        data="record",
        config=config,
        output_serializer=CustomSerializer(to_dict, from_dict),
    )
    def record_handler(record: dict[str, str]) -> dict[str, str]:
        return {"message": "Foo"}

    assert record_handler(record=PAYMENT) == {"message": "Foo"}
    assert calls == [("to", {"message": "Foo"})]
    assert record_handler(record=PAYMENT) == {"message": "Foo"}
    assert calls[1:] == [("from", {"wrapped": {"message": "Foo"}})]


def test_a_custom_serializer_is_not_called_for_none(api: Api, pt_store: Any) -> None:
    calls: list[str] = []

    def to_dict(value: Any) -> Any:
        calls.append("to")
        return value

    def from_dict(data: Any) -> Any:
        calls.append("from")
        return data

    @api.idempotent_function(
        store=pt_store, data="record", output_serializer=CustomSerializer(to_dict, from_dict)
    )
    def record_handler(record: dict[str, str]) -> None:
        return None

    assert record_handler(record=PAYMENT) is None
    assert record_handler(record=PAYMENT) is None
    assert calls == []


# -- async functions ---------------------------------------------------------------------


def test_an_async_function_replays(api: Api, pt_async: AsyncRunner) -> None:
    runs: list[int] = []

    @api.idempotent_function(store=pt_async.store, data="order")
    async def charge(order: dict[str, int]) -> dict[str, int]:
        runs.append(1)
        await asyncio.sleep(0)
        return {"charged": order["id"]}

    assert pt_async.run(charge(order={"id": 1})) == {"charged": 1}
    assert pt_async.run(charge({"id": 1})) == {"charged": 1}
    assert pt_async.run(charge(order={"id": 2})) == {"charged": 2}
    assert runs == [1, 1]


def test_an_async_handler_failure_releases_and_a_duplicate_is_in_progress(
    api: Api, pt_async: AsyncRunner
) -> None:
    runs: list[int] = []

    @api.idempotent(store=pt_async.store)
    async def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("Something went wrong!")
        with pytest.raises(api.errors.IdempotencyAlreadyInProgressError):
            await handler(event, context)
        return "ok"

    with pytest.raises(RuntimeError, match="Something went wrong!"):
        pt_async.run(handler({"data": 1}, Context()))
    assert pt_async.run(handler({"data": 1}, Context())) == "ok"
    assert pt_async.run(handler({"data": 1}, Context())) == "ok"
    assert runs == [1, 1]


def test_an_async_handler_leases_the_remaining_time(
    api: Api, pt_async: AsyncRunner, clock: ManualClock
) -> None:
    runs: list[int] = []

    @api.idempotent(store=pt_async.store)
    async def handler(event: dict[str, Any], context: Any) -> int:
        run = len(runs)
        runs.append(run)
        if run == 0:
            clock.advance(4_999)
            with pytest.raises(api.errors.IdempotencyAlreadyInProgressError):
                await handler(event, context)
            clock.advance(2)
            assert await handler(event, context) == 1
        return run

    assert pt_async.run(handler({"data": 1}, Context(5_000))) == 0
    assert pt_async.run(handler({"data": 1}, Context(5_000))) == 1
    assert runs == [0, 1]


# -- switching idempotency off ---------------------------------------------------


@pytest.mark.parametrize("value", ["1", "y", "yes", "t", "true", "on"])
def test_the_switch_runs_every_call_and_stores_nothing(
    api: Api, pt_store: Any, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    runs: list[str] = []

    @api.idempotent_function(store=pt_store, data="data")
    def dummy(data: dict[str, Any]) -> dict[str, str]:
        runs.append("function")
        return {"message": "hello"}

    @api.idempotent(store=pt_store)
    def dummy_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        runs.append("handler")
        return {"message": "hi"}

    event = {"data": "value"}
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", value)
    for _ in range(2):
        # Powertools warns only outside POWERTOOLS_DEV; onceonly always does.
        with pytest.warns(UserWarning, match=WARNS):
            dummy(data=event)
        with pytest.warns(UserWarning, match=WARNS):
            dummy_handler(event, Context())
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED")
    for _ in range(2):  # nothing was stored while off: one more run each, then replays
        dummy(data=event)
        dummy_handler(event, Context())

    assert runs == ["function", "handler"] * 3


@pytest.mark.parametrize("value", ["0", "n", "no", "f", "false", "off"])
def test_a_false_switch_keeps_idempotency_on(
    api: Api, pt_store: Any, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", value)
    runs: list[int] = []

    @api.idempotent(store=pt_store)
    def dummy_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        runs.append(1)
        return {"message": "hi"}

    dummy_handler({"data": "value"}, Context())
    dummy_handler({"data": "value"}, Context())
    assert runs == [1]


# -- a failing store ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis", "dynamodb"])
def unreachable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A store whose every call fails: a dropped table, a closed port, a missing table."""
    if request.param == "sqlite":
        from onceonly.stores import SQLiteStore

        sqlite = SQLiteStore(tmp_path / "broken.sqlite3")
        drop_sqlite_table(tmp_path / "broken.sqlite3")
        yield sqlite
        sqlite.close()
    elif request.param == "redis":
        import redis

        from onceonly.stores.redis import RedisStore

        client = redis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=5)
        yield RedisStore(client)
        client.close()
    else:
        from onceonly.stores.dynamodb import DynamoDBStore

        client = request.getfixturevalue("moto_server").shared_client
        yield DynamoDBStore(f"missing-{uuid.uuid4().hex[:12]}", client=client)


def drop_sqlite_table(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE onceonly")
    conn.close()


def test_a_store_failing_before_the_run_raises_and_the_handler_does_not_run(
    api: Api, unreachable_store: Any
) -> None:
    runs: list[int] = []

    @api.idempotent(store=unreachable_store)
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        runs.append(1)
        return {}

    with pytest.raises(api.errors.IdempotencyPersistenceLayerError) as caught:
        handler({"data": "some"}, Context())
    assert caught.value.__cause__ is not None  # the store's own error, chained
    assert runs == []


@pytest.fixture(params=["sqlite", "dynamodb"])
def breakable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A working store and a function that breaks it (drops its table)."""
    if request.param == "sqlite":
        from onceonly.stores import SQLiteStore

        path = tmp_path / "breakable.sqlite3"
        sqlite = SQLiteStore(path)
        yield sqlite, lambda: drop_sqlite_table(path)
        sqlite.close()
    else:
        from onceonly.stores.dynamodb import DynamoDBStore

        moto = request.getfixturevalue("moto_server")
        table = moto.fresh_table(moto.shared_client)
        yield (
            DynamoDBStore(table, client=moto.shared_client),
            lambda: moto.shared_client.delete_table(TableName=table),
        )


def test_a_store_failing_after_the_run_returns_the_result_with_a_warning(
    api: Api, breakable: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Powertools raises IdempotencyPersistenceLayerError here, though the work is done.
    store, break_store = breakable

    @api.idempotent(store=store)
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        break_store()
        return {"message": "success!"}

    with caplog.at_level(logging.WARNING, logger="onceonly"):
        assert handler({"data": "some"}, Context()) == {"message": "success!"}
    assert "could not store its outcome" in caplog.text


def test_a_store_failing_on_release_keeps_the_handlers_exception(
    api: Api, breakable: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Powertools raises IdempotencyPersistenceLayerError instead of the handler's error.
    store, break_store = breakable

    @api.idempotent(store=store)
    def handler(event: dict[str, Any], context: Any) -> None:
        break_store()
        raise ValueError("Something went wrong!")

    with (
        caplog.at_level(logging.WARNING, logger="onceonly"),
        pytest.raises(ValueError, match="Something went wrong!"),
    ):
        handler({"data": "some"}, Context())
    assert "could not release" in caplog.text


# -- a DynamoDB table with a sort key --------------------------------------------------------


@pytest.mark.parametrize("static_pk_value", [None, "static-value"])
def test_a_table_with_a_sort_key_replays(
    api: Api, moto_server: Any, clock: ManualClock, static_pk_value: str | None
) -> None:
    from onceonly.stores.dynamodb import DynamoDBStore

    client = moto_server.shared_client
    table = moto_server.fresh_table(client, key_attr="id", sort_key_attr="sk")
    try:
        store = DynamoDBStore(
            table,
            client=client,
            key_attr="id",
            sort_key_attr="sk",
            static_pk_value=static_pk_value,
            clock=clock,
            clock_skew_ms=0,
        )
        runs: list[int] = []

        @api.idempotent(store=store)
        def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
            runs.append(1)
            return {"statusCode": 200}

        assert handler({"data": 1}, Context()) == handler({"data": 1}, Context())
        items = client.scan(TableName=table)["Items"]
        expected_pk = static_pk_value or f"idempotency#{table}"
        assert [item["id"]["S"] for item in items] == [expected_pk]
        assert runs == [1]
    finally:
        client.delete_table(TableName=table)


# -- the record a response hook gets (onceonly's Record) --------------------------------------


def test_the_response_hook_gets_the_completed_record_with_its_expiry(
    pt_store: Any, clock: ManualClock
) -> None:
    # Powertools passes its DataRecord (get_expiration_datetime()); onceonly its Record.
    records: list[Any] = []

    def hook(result: Any, record: Any) -> Any:
        records.append(record)
        return result

    config = IdempotencyConfig(response_hook=hook, expires_after_seconds=120)

    @idempotent(store=pt_store, config=config)
    def handler(event: dict[str, Any], context: Any) -> str:
        return "done"

    handler({"data": 1}, Context())
    completed_at = clock.now
    clock.advance(1_000)
    assert handler({"data": 1}, Context()) == "done"

    (record,) = records
    assert record.status is Status.COMPLETED
    assert record.deadline_ms == completed_at + 120_000
