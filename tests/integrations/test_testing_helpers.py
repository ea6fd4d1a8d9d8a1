"""onceonly.testing with a Lambda handler, on MemoryStore and on DynamoDB through moto's server.

The first test is the "Testing your handlers" example of docs/testing.md, run on both
stores.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from dynamodb_harness import MotoServer
from onceonly import IdempotencyConfig, Status, idempotent, idempotent_function
from onceonly.records import new_token
from onceonly.stores import AsyncMemoryStore, MemoryStore
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore
from onceonly.testing import (
    LambdaContext,
    Twice,
    aassert_one_record,
    ainvoke_twice,
    assert_once,
    assert_one_record,
    assert_ran_once,
    invoke_twice,
)

EVENT = {"order_id": "o-1", "amount": 42}


@pytest.fixture(params=["memory", "dynamodb"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync store: in memory, or DynamoDB (a fresh table on moto's server)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    moto: MotoServer = request.getfixturevalue("moto_server")
    table = f"idempotency-{uuid.uuid4().hex[:8]}"
    DynamoDBStore.create_table(table, client=moto.shared_client)
    yield DynamoDBStore(table, client=moto.shared_client)


@pytest.fixture(params=["memory", "dynamodb"])
def async_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An async store: in memory, or DynamoDB on moto's server."""
    if request.param == "memory":
        yield AsyncMemoryStore()
        return
    moto: MotoServer = request.getfixturevalue("moto_server")
    table = f"idempotency-{uuid.uuid4().hex[:8]}"
    AsyncDynamoDBStore.create_table(table, client=moto.shared_client)
    yield AsyncDynamoDBStore(table, client=moto.shared_client)


def test_a_lambda_handler_charges_once(store: Any) -> None:
    charges: list[str] = []

    @idempotent(store=store, config=IdempotencyConfig(event_key_jmespath="order_id"))
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        charges.append(event["order_id"])
        return {"statusCode": 200, "charged": event["amount"]}

    context = LambdaContext()
    first, second = invoke_twice(handler, EVENT, context)

    assert first == second == {"statusCode": 200, "charged": 42}
    assert_once(charges)
    assert_ran_once(handler)
    record = assert_one_record(store, handler.key_for(EVENT, context), result=first)
    assert record.status is Status.COMPLETED


def test_invoke_twice_calls_a_one_argument_function_with_the_payload(store: Any) -> None:
    sent = mock.Mock()

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="order_id")
    )
    def send_receipt(order: dict[str, Any]) -> str:
        sent(order["order_id"])
        return "sent"

    assert invoke_twice(send_receipt, EVENT) == Twice("sent", "sent")
    assert_once(sent, what="receipt")
    assert_one_record(store, send_receipt.key_for(EVENT), result="sent")


def test_each_delivery_gets_its_own_copy_of_the_event(store: Any) -> None:
    @idempotent(store=store, config=IdempotencyConfig(event_key_jmespath="order_id"))
    def handler(event: dict[str, Any], context: Any) -> int:
        event["amount"] = 0  # a handler that changes its event
        return 1

    event = dict(EVENT)
    assert invoke_twice(handler, event) == (1, 1)
    assert event == EVENT
    assert_ran_once(handler)


def test_async_handlers_and_stores(async_store: Any) -> None:
    charges: list[str] = []

    @idempotent(store=async_store, config=IdempotencyConfig(event_key_jmespath="order_id"))
    async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        charges.append(event["order_id"])
        return {"charged": event["amount"]}

    async def scenario() -> Twice:
        twice = await ainvoke_twice(handler, EVENT, LambdaContext())
        await aassert_one_record(async_store, handler.key_for(EVENT), result=twice.first)
        with pytest.raises(TypeError, match="aassert_one_record"):
            assert_one_record(async_store, handler.key_for(EVENT))
        return twice

    first, second = asyncio.run(scenario())
    assert first == second == {"charged": 42}
    assert_once(charges)
    with pytest.raises(TypeError, match="ainvoke_twice"):
        invoke_twice(handler, EVENT)


# -- what the helpers report when the code under test is wrong ----------------


def test_assert_once_counts_collections_counts_and_mocks() -> None:
    assert_once(["charged"])
    assert_once(1)
    called = mock.Mock()
    called()
    assert_once(called)
    with pytest.raises(AssertionError, match="exactly once, it happened 2 times"):
        assert_once(["a", "b"], what="charge")
    with pytest.raises(AssertionError, match="it happened 0 times"):
        assert_once(mock.Mock())
    with pytest.raises(TypeError):
        assert_once(True)
    with pytest.raises(TypeError):
        assert_once(object())


def test_assert_ran_once_reads_the_functions_counters(store: Any) -> None:
    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="order_id")
    )
    def process(order: dict[str, Any]) -> int:
        return 1

    with pytest.raises(AssertionError, match="counted 0"):
        assert_ran_once(process)
    process({"order_id": "a"})
    process({"order_id": "b"})
    with pytest.raises(AssertionError, match="counted 2"):
        assert_ran_once(process)
    with pytest.raises(TypeError, match="not decorated"):
        assert_ran_once(lambda: None)


def test_assert_one_record_reports_what_it_found(store: Any) -> None:
    with pytest.raises(AssertionError, match="no live record"):
        assert_one_record(store, "orders:never")
    store.claim("orders:held", token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    with pytest.raises(AssertionError, match="IN_PROGRESS, expected COMPLETED"):
        assert_one_record(store, "orders:held")
    assert assert_one_record(store, "orders:held", status=Status.IN_PROGRESS).outcome is None

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="order_id")
    )
    def process(order: dict[str, Any]) -> int:
        return 7

    process({"order_id": "c"})
    with pytest.raises(AssertionError, match="holds 7, expected 8"):
        assert_one_record(store, process.key_for({"order_id": "c"}), result=8)


def test_the_lambda_context_counts_down_from_its_timeout() -> None:
    context = LambdaContext(function_name="payments", timeout_ms=5_000)
    assert 0 < context.get_remaining_time_in_millis() <= 5_000
    assert context.invoked_function_arn.endswith(":function:payments")
    assert context.aws_request_id != LambdaContext().aws_request_id
