"""Decimal results (issue 11, item 1): stored and replayed as the same Decimal.

boto3's DynamoDB resource returns numbers as ``Decimal``; a handler that
returns them must replay them exactly (same digits, same exponent), top level
and nested, through the real decorator on real stores.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.errors import CorruptRecordError, IdempotencySerializationError
from onceonly.records import decode_outcome, encode_outcome
from onceonly.stores import MemoryStore, SQLiteStore

D = decimal.Decimal


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SQLiteStore(str(tmp_path / "onceonly.sqlite3"))
    try:
        yield sqlite
    finally:
        sqlite.close()


def same(a: Any, b: Any) -> bool:
    """Equal with identical types at every depth, and Decimals with identical digits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, D):
        return a.as_tuple() == b.as_tuple() and a.is_snan() == b.is_snan()
    return bool(a == b)


DECIMAL_RESULTS = [
    D("1.10"),
    D("0"),
    D("-0"),
    D("-0.00"),
    D("1E+3"),
    D("123456789012345678901234567890.123456789"),
    D("Infinity"),
    D("-Infinity"),
    D("NaN"),
    D("sNaN"),
    {"Item": {"id": "o-1", "qty": D("3"), "price": D("19.990")}},
    [D("1"), [D("2.5"), {"x": D("0.1")}], "s", 1, 1.5, None, True],
    {"$d": "1.10", "amount": D("2")},  # a user key that looks like the tag
    {"$d": D("1.10")},
    {"$": "d", "$$": [D("1")], "a": {"$$d": "x"}},
]


@pytest.mark.parametrize("result", DECIMAL_RESULTS, ids=repr)
def test_decimal_result_replays_as_the_same_decimal(store: Any, result: Any) -> None:
    calls: list[int] = []

    @idempotent_function(store=store, data="order", config=IdempotencyConfig())
    def process(order: dict[str, Any]) -> Any:
        calls.append(1)
        return result

    first = process({"id": "o-1"})
    replay = process({"id": "o-1"})
    assert len(calls) == 1
    assert same(first, result)
    assert same(replay, result)


def test_decimal_outcome_round_trips_alone() -> None:
    back = decode_outcome(encode_outcome(D("1.10")))
    assert type(back) is D
    assert back.as_tuple() == D("1.10").as_tuple()


def test_outcomes_without_decimal_keep_the_json_envelope() -> None:
    # Records written before Decimal support (tag b"j") replay as before, and a
    # result without Decimal is still written that way.
    value = {"$d": "1.10", "a": [1, "x", None]}
    assert encode_outcome(value) == b"j" + json.dumps(value, separators=(",", ":")).encode()
    assert decode_outcome(b'j{"$d":"1.10","$$":1}') == {"$d": "1.10", "$$": 1}


def test_decimal_envelope_refuses_what_json_refuses() -> None:
    with pytest.raises(IdempotencySerializationError, match="cannot be stored as JSON"):
        encode_outcome([D("1"), object()])
    with pytest.raises(IdempotencySerializationError, match="cannot be stored as JSON"):
        encode_outcome([D("1"), "lone surrogate \udc80"])
    with pytest.raises(IdempotencySerializationError, match="int key in a dict at"):
        encode_outcome({"a": D("1"), "b": {1: "x"}})


@pytest.mark.parametrize(
    "stored",
    [
        b'e{"$d":1}',
        b'e{"$d":"abc"}',
        b'e{"$q":"1"}',
        b'e{"$d":"1","b":2}',
        b"e[1",
        b'e{"$d":"1","$$d":2}',
    ],
)
def test_a_bad_decimal_envelope_is_a_corrupt_record(stored: bytes) -> None:
    with pytest.raises(CorruptRecordError, match=r"malformed Decimal|not valid JSON"):
        decode_outcome(stored)


@dataclasses.dataclass
class Line:
    sku: str
    price: decimal.Decimal
    extra: Any = None


def test_dataclass_decimal_field_and_plain_decimal_agree(store: Any) -> None:
    @idempotent_function(store=store, data="order")
    def as_dataclass(order: dict[str, Any]) -> Line:
        return Line("a", D("1.10"), extra={"n": D("-0.00")})

    @idempotent_function(store=store, data="order")
    def as_dict(order: dict[str, Any]) -> dict[str, Any]:
        return {"sku": "a", "price": D("1.10"), "extra": {"n": D("-0.00")}}

    for _ in range(2):
        line = as_dataclass({"id": 1})
        plain = as_dict({"id": 1})
        assert type(line) is Line
        assert same(line.price, D("1.10"))
        assert same(line.price, plain["price"])
        assert same(line.extra, plain["extra"])


_decimals = st.decimals(allow_nan=False) | st.sampled_from([D("NaN"), D("-sNaN12"), D("-0")])
_keys = st.text(alphabet="$dx", max_size=4) | st.text(max_size=3)
_json_with_decimals = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | _decimals,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@given(value=_json_with_decimals)
def test_encode_then_decode_gives_the_same_values_and_types(value: Any) -> None:
    assert same(decode_outcome(encode_outcome(value)), value)
