from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import uuid
from typing import Any, Optional

import pydantic
import pytest
from unit_support import FALSY_VALUES

from onceonly.errors import IdempotencyConfigError, IdempotencySerializationError
from onceonly.records import decode_outcome, encode_outcome
from onceonly.serializers import (
    CustomSerializer,
    DataclassSerializer,
    JsonSerializer,
    PydanticSerializer,
    Serializer,
    serializer_for,
)


@dataclasses.dataclass
class Receipt:
    order_id: str
    total: int
    tags: list[str] = dataclasses.field(default_factory=list)


class Invoice(pydantic.BaseModel):
    number: uuid.UUID
    issued: datetime.datetime
    amount: decimal.Decimal
    paid: bool = False


INVOICE = Invoice(
    number=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    issued=datetime.datetime(2024, 3, 1, 12, 0, tzinfo=datetime.timezone.utc),
    amount=decimal.Decimal("19.99"),
)


def round_trip(serializer: Serializer, value: Any) -> Any:
    """Store a result as the engine does and read it back."""
    return serializer.from_json(decode_outcome(encode_outcome(serializer.to_json(value))))


@pytest.mark.parametrize(
    "value",
    [*FALSY_VALUES, {"a": [1, 2.5, None, True]}, "text", -3, [[], {}]],
    ids=repr,
)
def test_json_serializer_round_trip_keeps_value_and_type(value: Any) -> None:
    replayed = round_trip(JsonSerializer(), value)
    assert replayed == value
    assert type(replayed) is type(value)


def test_json_serializer_replays_a_tuple_as_a_list() -> None:
    assert round_trip(JsonSerializer(), (1, "a")) == [1, "a"]


def test_json_serializer_does_not_convert_non_json_results() -> None:
    with pytest.raises(IdempotencySerializationError):
        encode_outcome(JsonSerializer().to_json(Receipt("o-1", 5)))


@pytest.mark.parametrize(
    "value", [Receipt("o-1", 5, ["x"]), Receipt("", 0), None], ids=["full", "falsy", "none"]
)
def test_dataclass_serializer_round_trip(value: Receipt | None) -> None:
    replayed = round_trip(DataclassSerializer(Receipt), value)
    assert replayed == value
    assert type(replayed) is type(value)


def test_dataclass_serializer_stores_asdict() -> None:
    assert DataclassSerializer(Receipt).to_json(Receipt("o-2", 3)) == {
        "order_id": "o-2",
        "total": 3,
        "tags": [],
    }


@pytest.mark.parametrize("bad", [dict, Receipt("o", 1), "Receipt", None], ids=repr)
def test_dataclass_serializer_needs_a_dataclass_type(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="DataclassSerializer needs a dataclass"):
        DataclassSerializer(bad)


@pytest.mark.parametrize("value", [INVOICE, INVOICE.model_copy(update={"paid": True}), None])
def test_pydantic_serializer_round_trip(value: Invoice | None) -> None:
    replayed = round_trip(PydanticSerializer(Invoice), value)
    assert replayed == value
    assert type(replayed) is type(value)


def test_pydantic_serializer_stores_json_mode_dump() -> None:
    assert PydanticSerializer(Invoice).to_json(INVOICE) == {
        "number": "12345678-1234-5678-1234-567812345678",
        "issued": "2024-03-01T12:00:00Z",
        "amount": "19.99",
        "paid": False,
    }


@pytest.mark.parametrize(
    "bad", [Receipt, INVOICE, dict, 3], ids=["dataclass", "model-instance", "dict", "number"]
)
def test_pydantic_serializer_needs_a_model_class(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="PydanticSerializer needs"):
        PydanticSerializer(bad)


def test_custom_serializer_round_trip() -> None:
    serializer = CustomSerializer(
        to_json=lambda z: [z.real, z.imag], from_json=lambda data: complex(*data)
    )
    replayed = round_trip(serializer, complex(1.5, -2))
    assert replayed == complex(1.5, -2)
    assert type(replayed) is complex


@pytest.mark.parametrize(
    ("to_json", "from_json"), [(None, str), (str, None), ("to", "from")], ids=["to", "from", "str"]
)
def test_custom_serializer_needs_two_callables(to_json: Any, from_json: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="two callables"):
        CustomSerializer(to_json, from_json)


# -- serializer_for ------------------------------------------------------------------


def returns_receipt(order: Any) -> Receipt:
    return Receipt(order, 1)


def returns_invoice() -> Invoice:
    return INVOICE


def returns_dict() -> dict[str, int]:
    return {}


def returns_optional_receipt() -> Receipt | None:
    return None


def returns_optional_invoice() -> Optional[Invoice]:  # noqa: UP045
    return None


def returns_union() -> int | str:
    return 0


def not_annotated(x):  # type: ignore[no-untyped-def]
    return x


def unresolvable() -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
    return None


@functools.wraps(returns_receipt)
def wrapped(*args: Any, **kwargs: Any) -> Any:
    return returns_receipt(*args, **kwargs)


async def async_returns_invoice() -> Invoice:
    return INVOICE


def test_serializer_for_picks_dataclass_from_return_annotation() -> None:
    picked = serializer_for(returns_receipt)
    assert isinstance(picked, DataclassSerializer)
    assert picked.cls is Receipt


@pytest.mark.parametrize("func", [returns_invoice, async_returns_invoice])
def test_serializer_for_picks_pydantic_from_return_annotation(func: Any) -> None:
    picked = serializer_for(func)
    assert isinstance(picked, PydanticSerializer)
    assert picked.cls is Invoice


def test_serializer_for_sees_through_optional_return_annotations() -> None:
    dataclass_picked = serializer_for(returns_optional_receipt)
    assert isinstance(dataclass_picked, DataclassSerializer)
    assert dataclass_picked.cls is Receipt
    pydantic_picked = serializer_for(returns_optional_invoice)
    assert isinstance(pydantic_picked, PydanticSerializer)
    assert pydantic_picked.cls is Invoice
    assert round_trip(dataclass_picked, None) is None
    assert round_trip(dataclass_picked, Receipt("o-9", 9)) == Receipt("o-9", 9)


def test_serializer_for_reads_the_annotation_through_functools_wraps() -> None:
    picked = serializer_for(wrapped)
    assert isinstance(picked, DataclassSerializer)
    assert picked.cls is Receipt


@pytest.mark.parametrize(
    "func",
    [returns_dict, returns_union, not_annotated, unresolvable, len],
    ids=["dict", "union", "none", "unresolvable", "builtin"],
)
def test_serializer_for_falls_back_to_json(func: Any) -> None:
    assert type(serializer_for(func)) is JsonSerializer


def test_serializer_for_given_class_overrides_the_annotation() -> None:
    picked = serializer_for(returns_receipt, Invoice)
    assert isinstance(picked, PydanticSerializer)
    assert picked.cls is Invoice
    picked = serializer_for(returns_dict, Receipt)
    assert isinstance(picked, DataclassSerializer)
    assert picked.cls is Receipt


def test_serializer_for_given_serializer_object_is_used_as_is() -> None:
    custom = CustomSerializer(str, int)
    assert serializer_for(returns_receipt, custom) is custom


@pytest.mark.parametrize(
    "bad",
    [int, dict, "json", 42, Receipt("o", 1), INVOICE],
    ids=["int", "dict", "str", "number", "dataclass-instance", "model-instance"],
)
def test_serializer_for_rejects_bad_output_serializer(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="output_serializer must be"):
        serializer_for(returns_dict, bad)


# -- nested rebuild plans (issue 9, item 7) -------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Stamp:
    at: datetime.datetime
    day: datetime.date
    ref: uuid.UUID
    amount: decimal.Decimal
    colour: Colour
    when: Optional[datetime.time] = None  # noqa: UP045


@dataclasses.dataclass
class Batch:
    stamps: list[Stamp]
    latest: Stamp | None
    by_ref: dict[str, tuple[Stamp, ...]]


STAMP = Stamp(
    at=datetime.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc),
    day=datetime.date(2024, 3, 1),
    ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    amount=decimal.Decimal("19.990"),
    colour=Colour.BLUE,
    when=datetime.time(23, 59, 1),
)


def test_dataclass_serializer_rebuilds_text_typed_and_nested_fields() -> None:
    batch = Batch(stamps=[STAMP, STAMP], latest=None, by_ref={"r": (STAMP,)})
    replayed = round_trip(DataclassSerializer(Batch), batch)
    assert replayed == batch
    assert type(replayed.stamps[0]) is Stamp
    assert type(replayed.by_ref["r"]) is tuple
    assert replayed.stamps[1].colour is Colour.BLUE
    assert str(replayed.stamps[0].amount) == "19.990"
    assert replayed.stamps[0].at.tzinfo == datetime.timezone.utc


@dataclasses.dataclass
class SubReceipt(Receipt):
    extra: str = ""


def test_dataclass_serializer_refuses_a_subclass_instance_it_would_replay_as_the_base() -> None:
    with pytest.raises(TypeError, match="SubReceipt where Receipt is annotated"):
        DataclassSerializer(Receipt).to_json(SubReceipt("o", 1))
    with pytest.raises(TypeError, match="where Stamp is annotated"):
        DataclassSerializer(Batch).to_json(Batch([{"at": 1}], None, {}))  # type: ignore[list-item]


def test_dataclass_serializer_refuses_annotations_that_do_not_resolve() -> None:
    @dataclasses.dataclass
    class Local:
        part: Missing  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(IdempotencyConfigError, match=r"annotations of .*Local do not resolve"):
        DataclassSerializer(Local)


@dataclasses.dataclass
class HasFrozenSet:
    tags: frozenset[str]


def returns_frozen_set() -> HasFrozenSet:
    return HasFrozenSet(frozenset())


def test_serializer_for_names_the_function_and_field_it_refuses() -> None:
    with pytest.raises(IdempotencyConfigError) as caught:
        serializer_for(returns_frozen_set)
    message = str(caught.value)
    assert message.startswith("returns_frozen_set: HasFrozenSet cannot be replayed")
    assert "field HasFrozenSet.tags is frozenset[str]" in message
    assert "output_serializer=" in message
