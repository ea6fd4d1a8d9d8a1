"""A stored result never reaches a ``CorruptRecordError`` nor its chained causes (issue 10, item 9).

When the result type changed since a record was stored, the replay's error
names the type, the field path and the kind of misfit, never a stored value.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import traceback
from typing import Any

import pydantic
import pytest

from onceonly import CorruptRecordError, IdempotencyConfig, idempotent_function
from onceonly.stores import MemoryStore


def everything_said(exc: BaseException) -> str:
    """The error as a logger or a traceback would show it: every chained cause and context."""
    return "".join(traceback.format_exception(exc))


# -- item 9: stored results in messages ---------------------------------------------------

CARD = "4111111111111111"


class ReceiptV1(pydantic.BaseModel):
    order: str
    card: str


class ReceiptV2(pydantic.BaseModel):
    order: str
    card: int
    lines: list[int]


def replay_under(old: Any, new_return: Any, result: Any) -> BaseException:
    """Store ``result`` from a function returning ``old``; replay it where ``new_return`` is."""
    store = MemoryStore()
    config = IdempotencyConfig(key_prefix="receipts")

    @idempotent_function(store=store, data="order", config=config, output_serializer=old)
    def before(order: dict[str, Any]) -> Any:
        return result

    @idempotent_function(store=store, data="order", config=config, output_serializer=new_return)
    def after(order: dict[str, Any]) -> Any:
        raise AssertionError("a replay must not run the function")

    before({"id": "o-1"})
    with pytest.raises(CorruptRecordError) as info:
        after({"id": "o-1"})
    return info.value


def test_pydantic_shape_change_names_model_and_fields_never_the_stored_value() -> None:
    error = replay_under(ReceiptV1, ReceiptV2, ReceiptV1(order="ord-77", card=CARD + "x"))
    said = everything_said(error)
    assert CARD not in said, said
    assert "ord-77" not in said, said
    message = str(error)
    assert "does not fit ReceiptV2: fields card (int_parsing), lines (missing)" in message


@dataclasses.dataclass
class Paid:
    order: str
    card: str


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class PaidAt:
    order: str
    card: datetime.datetime


@dataclasses.dataclass
class PaidIn:
    order: str
    card: Colour


@dataclasses.dataclass
class Nested:
    receipt: ReceiptV2


@dataclasses.dataclass
class Fewer:
    order: str


@pytest.mark.parametrize(
    ("new", "named"),
    [
        (PaidAt, "does not fit PaidAt: field PaidAt.card: ValueError"),
        (PaidIn, "does not fit PaidIn: field PaidIn.card: ValueError"),
        (Fewer, "does not fit Fewer: unexpected field card"),
    ],
)
def test_dataclass_shape_change_never_quotes_the_stored_value(new: Any, named: str) -> None:
    error = replay_under(Paid, new, Paid(order="o-1", card=CARD))
    said = everything_said(error)
    assert CARD not in said, said
    assert named in str(error)


def test_pydantic_model_inside_a_dataclass_never_quotes_the_stored_value() -> None:
    @dataclasses.dataclass
    class Old:
        receipt: ReceiptV1

    error = replay_under(Old, Nested, Old(ReceiptV1(order="o-1", card=CARD)))
    said = everything_said(error)
    assert CARD not in said, said
    assert "Nested.receipt: ReceiptV2 fields lines (missing)" in str(error)


def test_a_replay_that_cannot_be_rebuilt_names_the_key_and_never_quotes_a_custom_error() -> None:
    # A user's from_json may put the stored value in its own error text: the
    # message names the function, the key (prefix and digest) and the error's
    # type, never that text.
    from onceonly import CustomSerializer

    def from_json(data: Any) -> Any:
        raise ValueError(f"cannot read {data!r}")

    store = MemoryStore()

    @idempotent_function(
        store=store,
        data="order",
        output_serializer=CustomSerializer(to_json=lambda v: v, from_json=from_json),
    )
    def charge(order: str) -> str:
        return "card 4111111111111111"

    charge(order="o-1")
    with pytest.raises(CorruptRecordError) as caught:
        charge(order="o-1")
    message = str(caught.value)
    assert charge.key_for(order="o-1") in message
    assert "ValueError" in message
    assert "4111" not in message
