"""Outcome serializers: how a function's result becomes JSON and comes back.

The default keeps JSON-native results as they are (so ``None``, ``0``, ``""``,
``[]``, ``{}`` and ``False`` replay exactly; a tuple replays as a list). A
dataclass or pydantic return type is picked up from the function's return
annotation, or given with ``output_serializer=``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from .errors import IdempotencyConfigError
from .rebuild import Planner, misfit

__all__ = [
    "CustomSerializer",
    "DataclassSerializer",
    "JsonSerializer",
    "PydanticSerializer",
    "Serializer",
    "serializer_for",
]

T = TypeVar("T")


class Serializer(Protocol):
    """Turns a result into JSON-native data and back."""

    def to_json(self, value: Any) -> Any:
        """Return JSON-native data for a result."""

    def from_json(self, data: Any) -> Any:
        """Rebuild a result from what :meth:`to_json` returned."""


class JsonSerializer:
    """Results that are JSON-native already: stored and replayed as they are."""

    def to_json(self, value: Any) -> Any:
        return value

    def from_json(self, data: Any) -> Any:
        return data


class DataclassSerializer(Generic[T]):
    """A dataclass result, stored field by field and rebuilt from its type hints.

    Fields that hold dataclasses, pydantic models, and lists, tuples, dicts
    (``str`` keys) and optionals of them are rebuilt as they were, at any depth;
    so are ``datetime``/``date``/``time``, ``UUID``, ``Decimal`` and ``Enum``
    fields. The plan is made once, here (the replay is a hot path).

    Args:
        cls: The dataclass.

    Raises:
        IdempotencyConfigError: ``cls`` is not a dataclass, its annotations
            cannot be resolved, or a field's type cannot be rebuilt faithfully
            (a set, a Union of two structured types, a dict with non-str keys,
            an arbitrary class); the message names the field.
    """

    def __init__(self, cls: type[T]) -> None:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise IdempotencyConfigError(f"DataclassSerializer needs a dataclass, got {cls!r}")
        self.cls = cls
        dump, load = Planner(cls.__qualname__).dataclass(cls)
        self._dump = dump
        self._load = load

    def to_json(self, value: Any) -> Any:
        if value is None:
            return None
        return self._dump(value)

    def from_json(self, data: Any) -> Any:
        """Rebuild the dataclass.

        Raises:
            CorruptRecordError: The stored data no longer fits the dataclass;
                the message names the field, never a stored value.
        """
        if data is None:
            return None
        try:
            return self._load(data)
        except Exception as exc:
            # from None: the cause's text may quote the stored value.
            raise misfit(self.cls.__qualname__, exc) from None


class PydanticSerializer(Generic[T]):
    """A pydantic v2 model result, stored with ``model_dump(mode="json")``.

    Args:
        cls: The model class.

    Raises:
        IdempotencyConfigError: ``cls`` is not a pydantic model.
    """

    def __init__(self, cls: type[T]) -> None:
        if not (isinstance(cls, type) and callable(getattr(cls, "model_validate", None))):
            raise IdempotencyConfigError(
                f"PydanticSerializer needs a pydantic v2 model class, got {cls!r}"
            )
        self.cls = cls

    def to_json(self, value: Any) -> Any:
        if value is None:
            return None
        return value.model_dump(mode="json")

    def from_json(self, data: Any) -> Any:
        """Validate the stored data into the model.

        Raises:
            CorruptRecordError: The stored data no longer fits the model; the
                message names the fields and pydantic's error types, never a
                stored value (pydantic's own message quotes them).
        """
        if data is None:
            return None
        try:
            return self.cls.model_validate(data)  # type: ignore[attr-defined]
        except Exception as exc:
            raise misfit(self.cls.__qualname__, exc) from None


class CustomSerializer:
    """A pair of functions: ``to_json(result) -> JSON data`` and ``from_json(data) -> result``.

    Neither is called for ``None``: a ``None`` result is stored and replayed
    as ``None``, as with every other serializer here.

    Raises:
        IdempotencyConfigError: Either function is not callable.
    """

    def __init__(self, to_json: Callable[[Any], Any], from_json: Callable[[Any], Any]) -> None:
        if not callable(to_json) or not callable(from_json):
            raise IdempotencyConfigError("CustomSerializer needs two callables: to_json, from_json")
        self._to = to_json
        self._from = from_json

    def to_json(self, value: Any) -> Any:
        return None if value is None else self._to(value)

    def from_json(self, data: Any) -> Any:
        return None if data is None else self._from(data)


_JSON = JsonSerializer()


def _for_type(tp: Any) -> Serializer | None:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and (
        len(args) == 2 and type(None) in args
    ):
        # X | None: both serializers below pass None through.
        tp = args[0] if args[1] is type(None) else args[1]
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return DataclassSerializer(tp)
        if callable(getattr(tp, "model_validate", None)):
            return PydanticSerializer(tp)
    return None


def _return_hint(func: Callable[..., Any]) -> Any:
    """The function's return annotation, or None when it has none or it cannot be resolved."""
    try:
        return typing.get_type_hints(inspect.unwrap(func)).get("return")
    except Exception:  # unresolvable annotations are no reason to refuse the function
        return None


def _from_annotation(func: Callable[..., Any], kind: type) -> Serializer:
    """``output_serializer=DataclassSerializer`` (the class, as Powertools users write it)."""
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    hint = _return_hint(func)
    picked = _for_type(hint)
    if picked is None or not isinstance(picked, kind):
        wanted = "a dataclass" if kind is DataclassSerializer else "a pydantic model"
        raise IdempotencyConfigError(
            f"{name}: output_serializer={kind.__name__} (the class) takes the result type from "
            f"the return annotation, which is {'missing' if hint is None else repr(hint)}, not "
            f"{wanted}; annotate the return type or pass {kind.__name__}(YourClass)"
        )
    return picked


def serializer_for(func: Callable[..., Any], given: Any = None) -> Serializer:
    """Pick the serializer of a function's result.

    Args:
        func: The decorated function (its return annotation is read when
            nothing is given).
        given: None, a dataclass or pydantic class, an object with
            ``to_json``/``from_json``, or the class ``DataclassSerializer`` or
            ``PydanticSerializer`` itself (the type is then the return
            annotation's).

    Returns:
        The serializer.

    Raises:
        IdempotencyConfigError: ``given`` is none of those, a serializer class
            meets a return annotation of another kind (or none), or the
            dataclass (given or annotated) has a field whose type cannot be
            rebuilt.
    """
    if isinstance(given, type) and issubclass(given, (DataclassSerializer, PydanticSerializer)):
        kind = DataclassSerializer if issubclass(given, DataclassSerializer) else PydanticSerializer
        return _from_annotation(func, kind)
    if given is not None:
        if callable(getattr(given, "to_json", None)) and callable(
            getattr(given, "from_json", None)
        ):
            return typing.cast(Serializer, given)
        picked = _for_type(given)
        if picked is None:
            raise IdempotencyConfigError(
                "output_serializer must be a dataclass or pydantic class, or an object with "
                f"to_json()/from_json() (e.g. CustomSerializer), got {given!r}"
            )
        return picked
    try:
        picked = _for_type(_return_hint(func))
    except IdempotencyConfigError as exc:
        # Refused when the decorator is applied, not at the first replay.
        name = getattr(func, "__qualname__", None) or type(func).__qualname__
        raise IdempotencyConfigError(f"{name}: {exc}") from None
    return picked or _JSON
