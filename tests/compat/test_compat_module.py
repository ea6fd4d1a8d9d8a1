"""``onceonly.compat.powertools``: Powertools' names over onceonly (issue 11, items 6 and 7).

Keys and fingerprints are checked against Powertools' own persistence layer
computing them for the same payloads and options; the names (decorators,
config, serializers, exceptions) are checked by using them as a Powertools
user writes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import uuid
import warnings
from typing import Any

import pydantic
import pytest
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PtConfig
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.serialization.dataclass import (
    DataclassSerializer as PtDataclassSerializer,
)
from hypothesis import given
from hypothesis import strategies as st

from onceonly import errors
from onceonly.compat import powertools as pt
from onceonly.stores import AsyncMemoryStore, MemoryStore


class PowertoolsHashes(BasePersistenceLayer):
    """Powertools' base layer with no storage: only its key and payload hashing is used."""

    def _get_record(self, idempotency_key: str) -> Any:
        raise NotImplementedError

    def _put_record(self, data_record: Any) -> None:
        raise NotImplementedError

    def _update_record(self, data_record: Any) -> None:
        raise NotImplementedError

    def _delete_record(self, data_record: Any) -> None:
        raise NotImplementedError


def powertools_key(
    func: Any, data: Any, key_prefix: str | None = None, **options: Any
) -> tuple[str | None, str]:
    """(key, payload hash) as Powertools computes them for ``func`` and ``data``."""
    layer = PowertoolsHashes()
    layer.configure(
        PtConfig(**options),
        function_name=f"{func.__module__}.{func.__qualname__}",
        key_prefix=key_prefix,
    )
    with warnings.catch_warnings():
        # Powertools warns of a payload without a key: the test compares the None.
        warnings.simplefilter("ignore", UserWarning)
        return layer._get_hashed_idempotency_key(data), layer._get_hashed_payload(data)


def ours(func: Any, data: Any, key_prefix: str | None = None, **options: Any) -> Any:
    wrapped = pt.idempotent_function(
        data_keyword_argument="order",
        persistence_store=MemoryStore(),
        config=pt.IdempotencyConfig(**options),
        key_prefix=key_prefix,
    )(func)
    return wrapped.guard.keyer.key_and_fingerprint(data)


def charge(order: Any) -> Any:
    return order


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    id: str
    total: decimal.Decimal
    at: datetime.date


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(payload=st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4))
def test_keys_of_whole_payloads_are_powertools_keys(payload: dict[str, Any]) -> None:
    key, _ = ours(charge, payload)
    expected, _ = powertools_key(charge, payload)
    assert key == expected


@pytest.mark.parametrize(
    ("payload", "options"),
    [
        ({"body": '{"id": 7, "ü": "é"}'}, {"event_key_jmespath": "powertools_json(body)"}),
        ({"id": "a", "user": {"n": 1}}, {"event_key_jmespath": "[id, user.n]"}),
        ({"id": "a", "user": {"n": 1}}, {"event_key_jmespath": "{i: id, n: user.n}"}),
        ({"id": 0}, {"event_key_jmespath": "id"}),
        ({"id": False}, {"event_key_jmespath": "id"}),
        ({"id": "x", "amount": 5}, {"event_key_jmespath": "id", "hash_function": "sha256"}),
        (
            {"id": "x", "amount": decimal.Decimal("1.10")},
            {"event_key_jmespath": "id", "payload_validation_jmespath": "amount"},
        ),
        (
            {"id": "x", "items": [{"sku": "a"}]},
            {"payload_validation_jmespath": "items", "event_key_jmespath": "id"},
        ),
    ],
)
def test_selected_keys_and_fingerprints_are_powertools_hashes(
    payload: dict[str, Any], options: dict[str, Any]
) -> None:
    key, fingerprint = ours(charge, payload, **options)
    expected_key, expected_hash = powertools_key(charge, payload, **options)
    assert key == expected_key
    assert (fingerprint or "") == expected_hash


@pytest.mark.parametrize(
    "payload",
    [
        Line("a", 2),
        Order(id="o", total=decimal.Decimal("9.99"), at=datetime.date(2026, 1, 2)),
        {"colour": Colour.RED, "id": uuid.UUID(int=7), "n": decimal.Decimal("1E+2")},
        {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "line": Line("b", 1)},
    ],
    ids=["dataclass", "pydantic", "enum-uuid-decimal", "datetime-nested-dataclass"],
)
def test_objects_key_as_powertools_keys_them(payload: Any) -> None:
    prepared = payload
    if dataclasses.is_dataclass(payload):
        prepared = dataclasses.asdict(payload)  # type: ignore[arg-type]
    elif isinstance(payload, pydantic.BaseModel):
        prepared = payload.model_dump(mode="json")
    assert ours(charge, payload)[0] == powertools_key(charge, prepared)[0]


def test_key_prefix_and_lambda_function_name_as_in_powertools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = {"id": "x"}
    assert (
        ours(charge, payload, key_prefix="payments")[0]
        == powertools_key(charge, payload, key_prefix="payments")[0]
    )
    assert str(ours(charge, payload)[0]).startswith(f"test-func.{__name__}.charge#")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders-api")
    key = ours(charge, payload)[0]
    assert str(key).startswith(f"orders-api.{__name__}.charge#")
    assert key == powertools_key(charge, payload)[0]


@pytest.mark.parametrize("selected", [None, [None, None], {"a": None}, "", [], {}])
def test_a_missing_key_is_what_powertools_calls_missing(selected: Any) -> None:
    assert ours(charge, {"k": selected}, event_key_jmespath="k") == (None, None)
    assert powertools_key(charge, {"k": selected}, event_key_jmespath="k")[0] is None


def test_blank_text_is_a_key_as_in_powertools() -> None:
    # onceonly's own keys call a whitespace-only string missing; Powertools hashes it.
    key = ours(charge, {"k": " "}, event_key_jmespath="k")[0]
    assert key is not None
    assert key == powertools_key(charge, {"k": " "}, event_key_jmespath="k")[0]


# -- the decorators ------------------------------------------------------------------


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def test_idempotent_handler_runs_once_and_replays() -> None:
    runs: list[int] = []
    store = MemoryStore()

    @pt.idempotent(persistence_store=store, config=pt.IdempotencyConfig("id"))
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(1)
        return {"statusCode": 200, "n": len(runs)}

    assert handler({"id": 1}, Context()) == {"statusCode": 200, "n": 1}
    assert handler({"id": 1}, Context()) == {"statusCode": 200, "n": 1}
    assert runs == [1]
    assert str(handler.key_for({"id": 1}, None)).startswith("test-func.")


def test_idempotent_function_async_with_keyword_payload() -> None:
    runs: list[str] = []

    @pt.idempotent_function(data_keyword_argument="order", persistence_store=AsyncMemoryStore())
    async def process(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return order["id"]

    async def twice() -> list[str]:
        return [await process(order={"id": "a"}), await process(order={"id": "a"})]

    assert asyncio.run(twice()) == ["a", "a"]
    assert runs == ["a"]


def test_missing_arguments_say_what_is_missing() -> None:
    with pytest.raises(TypeError, match="persistence_store"):
        pt.idempotent(config=pt.IdempotencyConfig())
    with pytest.raises(errors.IdempotencyConfigError, match="data_keyword_argument"):
        pt.idempotent_function(persistence_store=MemoryStore())
    with pytest.raises(errors.IdempotencyConfigError, match="key_prefix"):
        pt.idempotent(persistence_store=MemoryStore(), key_prefix="")
    with pytest.raises(errors.IdempotencyConfigError, match="not a named parameter"):
        pt.idempotent_function(data_keyword_argument="nope", persistence_store=MemoryStore())(
            charge
        )


# -- serializers -----------------------------------------------------------------------


@dataclasses.dataclass
class Receipt:
    id: str
    total: decimal.Decimal


class Payment(pydantic.BaseModel):
    id: str
    cents: int


@pytest.mark.parametrize(
    ("serializer", "result"),
    [
        (pt.DataclassSerializer(model=Receipt), Receipt("r", decimal.Decimal("1.50"))),
        (pt.PydanticSerializer(model=Payment), Payment(id="p", cents=150)),
        (pt.DataclassSerializer, Receipt("r", decimal.Decimal("2"))),
        (PtDataclassSerializer(model=Receipt), Receipt("r", decimal.Decimal("3"))),
        (
            pt.CustomDictSerializer(
                to_dict=lambda r: {"id": r.id, "total": str(r.total)},
                from_dict=lambda d: Receipt(d["id"], decimal.Decimal(d["total"])),
            ),
            Receipt("r", decimal.Decimal("4.00")),
        ),
    ],
    ids=["dataclass-model", "pydantic-model", "dataclass-class", "powertools-object", "custom"],
)
def test_serializers_under_powertools_names_replay_the_same_object(
    serializer: Any, result: Any
) -> None:
    runs: list[int] = []
    kind = type(result)

    def make(order: dict[str, Any]) -> Any:
        runs.append(1)
        return result

    make.__annotations__["return"] = kind
    wrapped = pt.idempotent_function(
        data_keyword_argument="order", persistence_store=MemoryStore(), output_serializer=serializer
    )(make)
    assert wrapped(order={"id": 1}) == result
    replayed = wrapped(order={"id": 1})
    assert replayed == result
    assert type(replayed) is kind
    assert runs == [1]


def test_a_serializer_without_a_model_is_refused_when_applied() -> None:
    def untyped(order: dict[str, Any]):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(pt.IdempotencyModelTypeError, match="return annotation"):
        pt.idempotent_function(
            data_keyword_argument="order",
            persistence_store=MemoryStore(),
            output_serializer=pt.DataclassSerializer,
        )(untyped)
    with pytest.raises(pt.IdempotencyPersistenceConfigError, match="dataclass"):
        pt.DataclassSerializer(model=Payment)


# -- exceptions ------------------------------------------------------------------------


def test_powertools_exception_names_catch_what_onceonly_raises() -> None:
    store = MemoryStore()
    config = pt.IdempotencyConfig(
        event_key_jmespath="id",
        payload_validation_jmespath="amount",
        raise_on_no_idempotency_key=True,
    )

    @pt.idempotent(persistence_store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> str:
        if event.get("nested"):
            return str(handler({"id": event["id"], "amount": event["amount"]}, context))
        return "ok"

    assert handler({"id": 1, "amount": 5}, None) == "ok"
    with pytest.raises(pt.IdempotencyValidationError):
        handler({"id": 1, "amount": 6}, None)
    with pytest.raises(pt.IdempotencyKeyError):
        handler({"amount": 6}, None)
    with pytest.raises(pt.IdempotencyAlreadyInProgressError):
        handler({"id": 2, "amount": 1, "nested": True}, None)
    assert issubclass(pt.IdempotencyPersistenceLayerError, pt.BaseError)
    assert pt.IdempotencyPersistenceLayerError is errors.IdempotencyStoreError
    assert pt.IdempotencyPersistenceConsistencyError is errors.CorruptRecordError


@pytest.mark.parametrize(
    "name",
    [
        "IdempotencyItemAlreadyExistsError",
        "IdempotencyItemNotFoundError",
        "IdempotencyInconsistentStateError",
        "IdempotencyInvalidStatusError",
    ],
)
def test_internal_powertools_errors_exist_and_catch_nothing_of_ours(name: str) -> None:
    cls = getattr(pt, name)
    assert issubclass(cls, errors.IdempotencyError)
    for ours_ in (
        errors.IdempotencyKeyError,
        errors.IdempotencyKeyReuseError,
        errors.IdempotencyAlreadyInProgressError,
        errors.IdempotencyStoreError,
        errors.IdempotencyConfigError,
    ):
        assert not issubclass(ours_, cls)


def test_every_public_powertools_idempotency_name_is_here() -> None:
    from aws_lambda_powertools.utilities.idempotency import exceptions

    powertools_errors = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == exceptions.__name__
    }
    missing = sorted(
        n for n in powertools_errors | {"idempotent", "idempotent_function"} if not hasattr(pt, n)
    )
    assert missing == []


# -- persistence layers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("status_attr", "state"),
        ("data_attr", "payload"),
        ("validation_key_attr", "hash"),
        ("in_progress_expiry_attr", "lease"),
    ],
)
def test_layers_refuse_attribute_names_whose_records_they_could_not_read(
    option: str, value: str
) -> None:
    with pytest.raises(errors.IdempotencyConfigError, match=f"{option}={value!r}"):
        pt.DynamoDBPersistenceLayer("table", **{option: value})
    with pytest.raises(errors.IdempotencyConfigError, match=f"{option}={value!r}"):
        pt.RedisCachePersistenceLayer(host="127.0.0.1", **{option: value})


def test_redis_layer_needs_a_server() -> None:
    with pytest.raises(errors.IdempotencyConfigError, match="url=, host= or client="):
        pt.RedisCachePersistenceLayer()
    with pytest.raises(errors.IdempotencyConfigError, match="mode"):
        pt.RedisCachePersistenceLayer(host="127.0.0.1", mode="sentinel")


def test_redis_layer_from_url_and_cluster_mode(redis_farm: Any, redis_engine: Any) -> None:
    server = redis_farm.standalone(redis_engine)
    by_url = pt.RedisCachePersistenceLayer(url=f"redis://{server.client_host()}:{server.port}/0")
    node = redis_farm.cluster(redis_engine).primaries()[0]
    on_cluster = pt.RedisCachePersistenceLayer(
        host=node.client_host(), port=node.port, mode="cluster", ssl=False
    )
    for layer in (by_url, on_cluster):
        runs: list[int] = []

        @pt.idempotent_function(data_keyword_argument="order", persistence_store=layer)
        def charge(order: dict[str, Any], runs: list[int] = runs) -> int:
            runs.append(1)
            return len(runs)

        order = {"id": uuid.uuid4().hex}
        assert charge(order=order) == 1
        assert charge(order=order) == 1
        key = charge.key_for(order=order)
        assert layer.client.exists(key) == 1  # stored as Powertools stores it: no prefix
        layer.client.close()
