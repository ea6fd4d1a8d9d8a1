"""Powertools' functional idempotency tests, ported (issue 11): keys, JMESPath, validation.

Which part of a payload makes the key (``event_key_jmespath``, incl.
``powertools_json`` and multi-selects), what counts as no key, payload
validation, and the payloads of ``idempotent_function`` (by keyword or
position, among other arguments, dataclasses and pydantic models, key order,
falsy values, ``key_prefix``, ``hash_function``). Observed through replays,
never through key strings. The inventory of what was ported from which
Powertools test is in test_powertools_functional.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pydantic
import pytest
from port_support import Api, Context

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.stores import MemoryStore
from testkit import load_event

# What the warnings of an unprotected call say, in onceonly's words and in Powertools'.
WARNS = "(?i)idempotency"


def counting_handler(api: Api, store: Any, config: IdempotencyConfig | None = None) -> Any:
    """A handler that returns how many times it has run; ``.runs`` lists the events."""
    runs: list[Any] = []

    @api.idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> int:
        runs.append(copy.deepcopy(event))
        return len(runs)

    handler.runs = runs  # type: ignore[attr-defined]
    return handler


# -- event_key_jmespath ----------------------------------------------------------


def test_the_key_is_the_selected_part_of_the_event(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath="[body, queryStringParameters]")
    handler = counting_handler(api, pt_store, config)
    event = load_event("apiGatewayProxyV2Event.json")
    other_headers = load_event("apiGatewayProxyV2Event.json")
    other_headers["headers"]["header1"] = "changed"  # not selected
    other_body = load_event("apiGatewayProxyV2Event.json")
    other_body["body"] = json.dumps({"message": "hello world", "username": "ann"})

    assert handler(event, Context()) == 1
    assert handler(other_headers, Context()) == 1
    assert handler(other_body, Context()) == 2


def test_powertools_json_in_a_multi_select_list(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(
        event_key_jmespath="[requestContext.authorizer.claims.sub, powertools_json(body).id]"
    )
    handler = counting_handler(api, pt_store, config)

    def event(sub: str, pk: str, noise: int) -> dict[str, Any]:
        body = json.dumps({"id": pk, "noise": noise})
        return {"requestContext": {"authorizer": {"claims": {"sub": sub}}}, "body": body}

    assert handler(event("cognito_user", "some_key", 1), Context()) == 1
    assert handler(event("cognito_user", "some_key", 2), Context()) == 1
    assert handler(event("cognito_user", "other_key", 1), Context()) == 2
    assert handler(event("another_user", "some_key", 1), Context()) == 3


def test_powertools_json_of_the_body_selects_one_field(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath='powertools_json(body).["user_id"]')
    handler = counting_handler(api, pt_store, config)

    assert handler({"body": '{"user_id":"xyz","time":"1234"}'}, Context()) == 1
    assert handler({"body": '{"user_id":"xyz","time":"2345"}'}, Context()) == 1
    assert handler({"body": '{"user_id":"abc","time":"1234"}'}, Context()) == 2


def test_a_multi_select_dict_selects_its_values(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath="{order: detail.order, shop: detail.shop}")
    handler = counting_handler(api, pt_store, config)

    assert handler({"detail": {"order": 1, "shop": "a", "at": 1}}, Context()) == 1
    assert handler({"detail": {"order": 1, "shop": "a", "at": 2}}, Context()) == 1
    assert handler({"detail": {"order": 1, "shop": "b", "at": 1}}, Context()) == 2


def test_the_same_data_in_another_key_order_is_the_same_key(api: Api, pt_store: Any) -> None:
    runs: list[int] = []

    @api.idempotent_function(store=pt_store, data="payload")
    def dummy(payload: dict[str, str]) -> dict[str, str]:
        runs.append(1)
        return {"message": "hello"}

    dummy(payload={"data": "test message 1", "more_data": "more data 1"})
    dummy(payload={"more_data": "more data 1", "data": "test message 1"})
    assert runs == [1]


# -- no key in the payload -------------------------------------------------------


def test_a_missing_key_raises_when_asked_and_the_handler_does_not_run(
    api: Api, pt_store: Any
) -> None:
    config = IdempotencyConfig(event_key_jmespath="idemKey", raise_on_no_idempotency_key=True)
    handler = counting_handler(api, pt_store, config)

    with pytest.raises(api.errors.IdempotencyKeyError):
        handler({}, Context())
    with pytest.raises(api.errors.IdempotencyKeyError):
        handler({"other": 1}, Context())
    assert handler.runs == []


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_a_missing_key_runs_every_time_with_a_warning(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    # Powertools' e2e optional-key handler: a header that only some requests carry.
    config = IdempotencyConfig(
        event_key_jmespath='headers."X-Idempotency-Key"', use_local_cache=use_local_cache
    )
    handler = counting_handler(api, pt_store, config)

    assert handler({"headers": {"X-Idempotency-Key": "here"}}, Context()) == 1
    for expected in (2, 3):  # neither stored nor cached: each one runs
        with pytest.warns(UserWarning, match=WARNS):
            assert handler({"headers": {}}, Context()) == expected
    assert handler({"headers": {"X-Idempotency-Key": "here"}}, Context()) == 1


MISSING = [None, "", [], {}, [None, None], {"a": None}]
PRESENT = [True, False, 0, 0.0, "Value", "False", 1000, 10.01, [None, "Value"]]


@pytest.mark.parametrize("selected", MISSING, ids=repr)
def test_a_blank_selection_is_no_key(api: Api, pt_store: Any, selected: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath="key", raise_on_no_idempotency_key=True)
    handler = counting_handler(api, pt_store, config)

    with pytest.raises(api.errors.IdempotencyKeyError):
        handler({"key": selected}, Context())


@pytest.mark.parametrize("selected", PRESENT, ids=repr)
def test_a_falsy_or_partial_selection_is_a_key(api: Api, pt_store: Any, selected: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath="key", raise_on_no_idempotency_key=True)
    handler = counting_handler(api, pt_store, config)

    assert handler({"key": selected}, Context()) == 1
    assert handler({"key": selected, "noise": 1}, Context()) == 1


@pytest.mark.parametrize("data", [0, False])
def test_a_falsy_payload_is_a_key_of_its_own(api: Api, pt_store: Any, data: Any) -> None:
    runs: list[Any] = []

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(record: Any) -> dict[str, str]:
        runs.append(record)
        return {"message": "Foo"}

    assert record_handler(record=data) == {"message": "Foo"}
    assert record_handler(record=data) == {"message": "Foo"}
    assert runs == [data]


def test_a_none_payload_runs_unprotected_with_a_warning(api: Api, pt_store: Any) -> None:
    # In Powertools too, None is "no key": it warns and skips the store.
    runs: list[Any] = []

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(record: Any) -> dict[str, str]:
        runs.append(record)
        return {"message": "Foo"}

    for _ in range(2):
        with pytest.warns(UserWarning, match=WARNS):
            assert record_handler(record=None) == {"message": "Foo"}
    assert runs == [None, None]


@pytest.mark.parametrize("data", [None, 0, False])
def test_a_falsy_payload_has_no_selected_key_and_raises_when_asked(
    api: Api, pt_store: Any, data: Any
) -> None:
    config = IdempotencyConfig(event_key_jmespath="idemKey", raise_on_no_idempotency_key=True)
    runs: list[Any] = []

    @api.idempotent_function(store=pt_store, data="record", config=config)
    def record_handler(record: Any) -> None:
        runs.append(record)

    with pytest.raises(api.errors.IdempotencyKeyError):
        record_handler(record=data)
    assert runs == []


# -- payload validation ------------------------------------------------------------


def refund(amount: int = 100, currency: str = "Turkish Lira") -> dict[str, Any]:
    return {
        "refund_id": "ffd11882-d476-4598-bbf1-643f2be5addf",
        "customer_id": "9e9fc440-9e65-49b5-9e71-1382ea1b1658",
        "amount": amount,
        "details": [{"company_name": "Parker, Johnson and Rath", "currency": currency}],
    }


REFUND_KEY = '["refund_id", "customer_id"]'


@pytest.mark.parametrize("use_local_cache", [False, True])
@pytest.mark.parametrize("validated", ["amount", "details"])
def test_a_tampered_validated_part_raises_and_the_original_still_replays(
    api: Api, pt_store: Any, use_local_cache: bool, validated: str
) -> None:
    config = IdempotencyConfig(
        event_key_jmespath=REFUND_KEY,
        payload_validation_jmespath=validated,
        use_local_cache=use_local_cache,
    )
    handler = counting_handler(api, pt_store, config)
    tampered = refund(amount=10_000) if validated == "amount" else refund(currency="Euro")

    assert handler(refund(), Context()) == 1
    for _ in range(2):  # the refused payload is never cached as if it had replayed
        with pytest.raises(api.errors.IdempotencyValidationError):
            handler(tampered, Context())
    assert handler(refund(), Context()) == 1
    assert len(handler.runs) == 1


def test_a_change_outside_the_validated_part_replays(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath=REFUND_KEY, payload_validation_jmespath="amount")
    handler = counting_handler(api, pt_store, config)

    assert handler(refund(currency="Turkish Lira"), Context()) == 1
    assert handler(refund(currency="Euro"), Context()) == 1


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_an_identical_retry_with_validation_replays(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    # Powertools' Redis layer drops the validation hash when it completes a
    # record, so there the identical retry raises IdempotencyValidationError.
    config = IdempotencyConfig(
        event_key_jmespath="user_id",
        payload_validation_jmespath="time",
        use_local_cache=use_local_cache,
    )
    handler = counting_handler(api, pt_store, config)

    assert handler({"user_id": "xyz", "time": "1234"}, Context()) == 1
    assert handler({"user_id": "xyz", "time": "1234"}, Context()) == 1
    with pytest.raises(api.errors.IdempotencyValidationError):
        handler({"user_id": "xyz", "time": "2345"}, Context())


def test_validation_of_a_whole_api_gateway_event_part(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(
        event_key_jmespath="[body, queryStringParameters]",
        payload_validation_jmespath="requestContext",
    )
    handler = counting_handler(api, pt_store, config)
    tampered = load_event("apiGatewayProxyV2Event.json")
    tampered["requestContext"]["accountId"] += "1"

    assert handler(load_event("apiGatewayProxyV2Event.json"), Context()) == 1
    assert handler(load_event("apiGatewayProxyV2Event.json"), Context()) == 1
    with pytest.raises(api.errors.IdempotencyValidationError):
        handler(tampered, Context())


# -- idempotent_function: where the payload comes from -------------------------------


def test_the_payload_is_the_data_argument_among_others(api: Api, pt_store: Any) -> None:
    runs: list[tuple[Any, ...]] = []

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(arg_one: str, arg_two: str, record: dict[str, str], is_record: bool) -> str:
        runs.append((arg_one, arg_two, is_record))
        return "Foo"

    assert record_handler("foo", "bar", record={"data": "value"}, is_record=True) == "Foo"
    # The other arguments are not part of the key (as in Powertools).
    assert record_handler("baz", "qux", record={"data": "value"}, is_record=False) == "Foo"
    assert runs == [("foo", "bar", True)]


def test_the_data_argument_by_position_is_the_same_payload(api: Api, pt_store: Any) -> None:
    # Powertools raises RuntimeError when the data argument is passed by position.
    runs: list[int] = []

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(record: dict[str, str]) -> str:
        runs.append(1)
        return "Foo"

    assert record_handler({"data": "value"}) == "Foo"
    assert record_handler(record={"data": "value"}) == "Foo"
    assert runs == [1]


def test_a_data_name_that_is_no_parameter_is_refused_when_applied(api: Api, pt_store: Any) -> None:
    # Powertools raises RuntimeError("Unable to extract 'payload'...") at the first call.
    decorate = api.idempotent_function(store=pt_store, data="payload")

    def record_handler(record: dict[str, str]) -> str:
        return "Foo"

    with pytest.raises(api.errors.IdempotencyConfigError, match="payload"):
        decorate(record_handler)


def test_two_functions_on_one_payload_keep_their_own_records(api: Api, pt_store: Any) -> None:
    config = IdempotencyConfig(use_local_cache=True)

    @api.idempotent_function(store=pt_store, data="data", config=config)
    def one(data: dict[str, str]) -> str:
        return "one"

    @api.idempotent_function(store=pt_store, data="data", config=config)
    def two(data: dict[str, str]) -> str:
        return "two"

    assert one(data={"data": "value"}) == "one"
    assert two(data={"data": "value"}) == "two"
    assert one(data={"data": "value"}) == "one"


def test_functions_sharing_a_key_prefix_share_records(api: Api, pt_store: Any) -> None:
    @api.idempotent_function(store=pt_store, data="order", key_prefix="orders")
    def charge(order: dict[str, int]) -> str:
        return "charged"

    @api.idempotent_function(store=pt_store, data="order", key_prefix="orders")
    def charge_renamed(order: dict[str, int]) -> str:
        return "charged again"

    assert charge(order={"id": 1}) == "charged"
    assert charge_renamed(order={"id": 1}) == "charged"  # e.g. after a rename
    assert charge_renamed(order={"id": 2}) == "charged again"


@pytest.mark.parametrize("hash_function", ["md5", "sha256", "blake2b"])
def test_another_hash_function_still_keys_the_payload(
    api: Api, pt_store: Any, hash_function: str
) -> None:
    config = IdempotencyConfig(event_key_jmespath="id", hash_function=hash_function)
    handler = counting_handler(api, pt_store, config)

    assert handler({"id": 1, "at": 1}, Context()) == 1
    assert handler({"id": 1, "at": 2}, Context()) == 1
    assert handler({"id": 2, "at": 1}, Context()) == 2


def test_a_hash_function_makes_keys_of_its_digest_length() -> None:
    # onceonly's key format ("prefix:hexdigest"); the compat module forms its own.
    def key(name: str) -> str:
        config = IdempotencyConfig(hash_function=name)

        @idempotent_function(store=MemoryStore(), data="order", config=config)
        def charge(order: dict[str, int]) -> None:
            pass

        return str(charge.key_for({"id": 1}))

    assert len(key("md5").rsplit(":", 1)[1]) == 32
    assert len(key("sha256").rsplit(":", 1)[1]) == 64


# -- dataclass and pydantic payloads ------------------------------------------------


@dataclasses.dataclass
class PaymentData:
    customer_id: str
    transaction_id: str


class PaymentModel(pydantic.BaseModel):
    customer_id: str
    transaction_id: str


PAYMENT = {"customer_id": "fake", "transaction_id": "fake-id"}


@pytest.mark.parametrize("kind", [PaymentData, PaymentModel], ids=["dataclass", "pydantic"])
def test_a_payload_object_is_keyed_as_its_dict(api: Api, pt_store: Any, kind: Any) -> None:
    runs: list[Any] = []

    @api.idempotent_function(store=pt_store, data="payment")
    def collect_payment(payment: Any) -> str:
        runs.append(payment)
        return "collected"

    assert collect_payment(payment=kind(**PAYMENT)) == "collected"
    assert collect_payment(payment=kind(**PAYMENT)) == "collected"
    assert collect_payment(payment=dict(PAYMENT)) == "collected"  # Powertools: _prepare_data
    assert len(runs) == 1


@pytest.mark.parametrize("kind", [PaymentData, PaymentModel], ids=["dataclass", "pydantic"])
def test_a_payload_object_with_a_key_expression(api: Api, pt_store: Any, kind: Any) -> None:
    config = IdempotencyConfig(event_key_jmespath="transaction_id", use_local_cache=True)
    runs: list[Any] = []

    @api.idempotent_function(store=pt_store, data="payment", config=config)
    def collect_payment(payment: Any) -> str:
        runs.append(payment)
        return str(payment.transaction_id)

    assert collect_payment(payment=kind(**PAYMENT)) == "fake-id"
    assert collect_payment(payment=kind(customer_id="other", transaction_id="fake-id")) == "fake-id"
    assert collect_payment(payment=kind(customer_id="fake", transaction_id="id-2")) == "id-2"
    assert len(runs) == 2
