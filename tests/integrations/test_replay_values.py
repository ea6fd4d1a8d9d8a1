"""A replay returns what the first call returned, types included (issue 9, item 7).

Dataclass results whose fields hold dataclasses, pydantic models, and lists,
tuples, dicts and optionals of them, through the real decorator on MemoryStore
and SQLiteStore. Annotations here are strings (``from __future__ import
annotations``), so the serializer must resolve them. Types it cannot rebuild
are refused when the decorator is applied.
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import pydantic
import pytest

from onceonly import IdempotencyConfigError, idempotent_function
from onceonly.serializers import DataclassSerializer
from onceonly.stores import MemoryStore, SQLiteStore


class Money(pydantic.BaseModel):
    amount: decimal.Decimal
    currency: str


@dataclasses.dataclass(frozen=True)
class Sku:
    code: str
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class Item:
    sku: Sku
    qty: int
    price: Money
    note: str | None = None


@dataclasses.dataclass
class Shipment:
    items: list[Item]
    carrier: Optional[Sku] = None  # noqa: UP045 - the typing spelling is tested too


@dataclasses.dataclass
class Order:
    id: str
    item: Item
    extra: list[Item]
    maybe: Item | None
    by_name: dict[str, Item]
    shipment: Shipment | None
    pair: tuple[Sku, Item]
    plain: dict[str, Any]
    total: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.total = self.item.qty + sum(x.qty for x in self.extra)


@dataclasses.dataclass
class Node:
    name: str
    children: list[Node] = dataclasses.field(default_factory=list)


def sku(code: str) -> Sku:
    return Sku(code, ("new", code))


def item(code: str, qty: int) -> Item:
    return Item(sku(code), qty, Money(amount=decimal.Decimal("9.95"), currency="EUR"))


def make_order(order_id: str) -> Order:
    return Order(
        id=order_id,
        item=item("a", 1),
        extra=[item("b", 2), Item(sku("c"), 3, Money(amount=decimal.Decimal("0"), currency=""))],
        maybe=None,
        by_name={"first": item("d", 4)},
        shipment=Shipment(items=[item("e", 5)], carrier=sku("ups")),
        pair=(sku("p"), item("q", 6)),
        plain={"k": [1, "x", None]},
    )


def assert_same_shape(first: Any, replayed: Any, where: str = "$") -> None:
    """Equal values of identical types at every level (dataclass fields, items)."""
    assert type(replayed) is type(first), f"{where}: {type(replayed)} is not {type(first)}"
    if dataclasses.is_dataclass(first):
        for field in dataclasses.fields(first):
            assert_same_shape(
                getattr(first, field.name), getattr(replayed, field.name), f"{where}.{field.name}"
            )
    elif isinstance(first, (list, tuple)):
        assert len(replayed) == len(first), where
        for index, (a, b) in enumerate(zip(first, replayed, strict=True)):
            assert_same_shape(a, b, f"{where}[{index}]")
    elif isinstance(first, dict):
        assert list(replayed) == list(first), where
        for key in first:
            assert_same_shape(first[key], replayed[key], f"{where}.{key}")
    else:
        assert replayed == first, where


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SQLiteStore(tmp_path / "replay.sqlite3")
    try:
        yield sqlite
    finally:
        sqlite.close()


def first_and_replay(store: Any, func: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    calls: list[Any] = []

    def counted(order_id: str) -> Any:
        calls.append(order_id)
        return func(order_id)

    counted.__annotations__ = {"order_id": "str", "return": func.__annotations__["return"]}
    counted.__module__ = func.__module__
    wrapped = idempotent_function(store=store, data="order_id")(counted)
    first = wrapped(*args)
    replayed = wrapped(*args)
    assert calls == list(args)  # the second call was a replay
    return first, replayed


def returns_order(order_id: str) -> Order:
    return make_order(order_id)


def returns_optional_order(order_id: str) -> Order | None:
    return make_order(order_id)


def returns_node(order_id: str) -> Node:
    return Node(order_id, [Node("a", [Node("a1")]), Node("b")])


@pytest.mark.parametrize(
    "func", [returns_order, returns_optional_order, returns_node], ids=lambda f: f.__name__
)
def test_nested_dataclass_result_replays_with_identical_types(
    store: Any, func: Callable[..., Any]
) -> None:
    first, replayed = first_and_replay(store, func, "o-1")
    assert replayed == first
    assert_same_shape(first, replayed)


def test_nested_values_with_optionals_filled_replay_with_identical_types(store: Any) -> None:
    def full(order_id: str) -> Order:
        order = make_order(order_id)
        order.maybe = item("m", 7)
        order.item.note = ""
        return order

    full.__module__ = __name__
    full.__annotations__["return"] = "Order"
    first, replayed = first_and_replay(store, full, "o-2")
    assert replayed == first
    assert replayed.maybe.sku.tags == ("new", "m")
    assert replayed.total == first.total == 1 + 2 + 3
    assert_same_shape(first, replayed)


def test_output_serializer_given_as_a_class_rebuilds_nested_values(store: Any) -> None:
    calls: list[str] = []

    @idempotent_function(store=store, data="order_id", output_serializer=Order)
    def untyped(order_id: str):  # type: ignore[no-untyped-def]
        calls.append(order_id)
        return make_order(order_id)

    first = untyped("o-3")
    replayed = untyped("o-3")
    assert calls == ["o-3"]
    assert_same_shape(first, replayed)


# -- types that cannot be rebuilt are refused when the decorator is applied -------


@dataclasses.dataclass
class Other:
    code: str


@dataclasses.dataclass
class HasSet:
    ids: set[int]


@dataclasses.dataclass
class HasUnion:
    part: Union[Item, Other]  # noqa: UP007 - the typing spelling is tested too


@dataclasses.dataclass
class HasNestedBad:
    shipment: list[HasUnion]


@dataclasses.dataclass
class HasIntKeys:
    by_id: dict[int, Item]


@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (HasSet, "HasSet.ids"),
        (HasUnion, "HasUnion.part"),
        (HasNestedBad, "HasUnion.part"),
        (HasIntKeys, "HasIntKeys.by_id"),
    ],
    ids=["set", "union", "nested", "int-keys"],
)
def test_a_result_type_that_cannot_be_rebuilt_is_refused_when_decorated(
    cls: type[Any], field: str
) -> None:
    def returns(order_id: str) -> Any:
        return None

    returns.__annotations__["return"] = cls
    with pytest.raises(IdempotencyConfigError, match="output_serializer=") as caught:
        idempotent_function(store=MemoryStore(), data="order_id")(returns)
    assert field in str(caught.value)
    with pytest.raises(IdempotencyConfigError, match="output_serializer="):
        DataclassSerializer(cls)
