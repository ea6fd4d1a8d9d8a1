"""Rebuild plans for stored results: how a dataclass's fields are stored and rebuilt.

Worked out once, when a decorator is applied, from the type hints of the
return annotation: nested dataclasses, pydantic models, lists, tuples, dicts
and optionals of them, and the standard scalar types that JSON cannot carry
as they are. A field type that cannot come back as it was is refused then.
A stored value that no longer fits its type is reported without quoting it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from .errors import CorruptRecordError, IdempotencyConfigError

__all__ = ["Planner", "misfit"]


# -- stored data that no longer fits ------------------------------------------------
#
# A replay rebuilds what an older version of the code stored. When it no longer
# fits, the error names the type, the field path and the kind of misfit: never
# the exception's own text, which quotes the stored value (pydantic's does,
# and so do datetime.fromisoformat's and Enum's).

_MAX_LISTED = 5


class _Misfit(Exception):
    """Stored data that does not fit a dataclass field: where, and what kind of misfit."""

    def __init__(self, path: list[str], kind: str) -> None:
        super().__init__(kind)
        self.path = path
        self.kind = kind


def _loc_part(part: Any) -> str:
    # Field names and list indexes; a dict key of the stored data may be data.
    if isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and len(part) <= 64):
        return str(part)
    return "<key>"


def _kind(exc: BaseException) -> str:
    """What went wrong, in words that quote no stored value."""
    if isinstance(exc, _Misfit):
        where = ".".join(exc.path)  # a bare class name: the root dataclass itself
        return f"field {where}: {exc.kind}" if "." in where else exc.kind
    errors = getattr(exc, "errors", None)
    title = getattr(exc, "title", None)
    if callable(errors) and isinstance(title, str):  # a pydantic ValidationError
        found = errors(include_url=False, include_context=False, include_input=False)
        listed = [
            f"{'.'.join(_loc_part(p) for p in e['loc']) or '(the model)'} ({e['type']})"
            for e in found[:_MAX_LISTED]
        ]
        more = f" and {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
        return f"{title} fields {', '.join(listed)}{more}"
    return type(exc).__name__


def misfit(root: str, exc: BaseException) -> CorruptRecordError:
    kind = _kind(exc).removeprefix(f"{root} ")  # a pydantic root names itself once
    return CorruptRecordError(f"the stored result does not fit {root}: {kind}")


def _field_misfit(cls: type, data: Any, exc: BaseException) -> _Misfit:
    """Why ``cls(**fields)`` refused the stored data: the names of the fields, no values."""
    if isinstance(exc, TypeError) and isinstance(data, dict):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unexpected = sorted(_loc_part(k) for k in data if k not in fields)
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        said = [f"unexpected field {', '.join(unexpected)}"] if unexpected else []
        said += [f"missing field {', '.join(missing)}"] if missing else []
        if said:
            return _Misfit([cls.__qualname__], "; ".join(said))
    if not isinstance(data, dict):
        return _Misfit([cls.__qualname__], f"stored a {type(data).__name__}, not an object")
    return _Misfit([cls.__qualname__], _kind(exc))


def _at_field(cls: type, name: str, exc: BaseException) -> _Misfit:
    """``exc`` raised while rebuilding field ``name`` of ``cls``, as a misfit at that path."""
    if isinstance(exc, _Misfit):
        return _Misfit([f"{cls.__qualname__}.{name}", *exc.path[1:]], exc.kind)
    return _Misfit([f"{cls.__qualname__}.{name}"], _kind(exc))


# -- rebuild plans ---------------------------------------------------------------
#
# A plan is a pair of converters (dump: value -> JSON data, load: data -> value)
# for one annotated type; None stands for "as it is" (JSON-native already), so a
# field of plain data costs nothing. Plans are built once per serializer.

_Convert = Callable[[Any], Any]
_Plan = tuple[_Convert | None, _Convert | None]
_AS_IS: _Plan = (None, None)
_JSON_SCALARS = (str, int, float, bool, type(None))
_LISTS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_UNIONS = (typing.Union, types.UnionType)
# Leaf types written as JSON strings, each with its one exact reading back.
_TEXT_TYPES: dict[Any, tuple[_Convert, _Convert]] = {
    datetime.datetime: (datetime.datetime.isoformat, datetime.datetime.fromisoformat),
    datetime.date: (datetime.date.isoformat, datetime.date.fromisoformat),
    datetime.time: (datetime.time.isoformat, datetime.time.fromisoformat),
    uuid.UUID: (str, uuid.UUID),
    decimal.Decimal: (str, decimal.Decimal),
}


class _Refused(Exception):
    """A type that cannot be rebuilt faithfully; says why."""


def _name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _exact(cls: type, dump: _Convert) -> _Convert:
    # A subclass would replay as ``cls``, losing what it adds: refuse it.
    def checked(value: Any) -> Any:
        if type(value) is not cls:
            raise TypeError(
                f"a {type(value).__qualname__} where {cls.__qualname__} is annotated would "
                f"replay as {cls.__qualname__}"
            )
        return dump(value)

    return checked


def _optional(plan: _Plan) -> _Plan:
    dump, load = plan
    if dump is None and load is None:
        return _AS_IS
    return (
        None if dump is None else (lambda v: None if v is None else dump(v)),
        None if load is None else (lambda d: None if d is None else load(d)),
    )


class Planner:
    """Builds the plan of a result type; one per serializer, memoizing dataclasses.

    Args:
        root: The result type's name, for messages.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._classes: dict[type, tuple[_Convert, _Convert]] = {}

    def refuse(self, where: str, tp: Any, why: str) -> IdempotencyConfigError:
        return IdempotencyConfigError(
            f"{self.root} cannot be replayed as it was returned: field {where} is "
            f"{_name(tp)} ({why}); change the field's type, or pass output_serializer= "
            "(a pydantic model, or CustomSerializer(to_json, from_json)) to store it your way"
        )

    def dataclass(self, cls: type) -> tuple[_Convert, _Convert]:
        """The (dump, load) pair of a dataclass (neither is None).

        Raises:
            IdempotencyConfigError: A field's type cannot be rebuilt (named), or
                the annotations do not resolve.
        """
        known = self._classes.get(cls)
        if known is not None:
            return known
        # A recursive type (a Node with children: list[Node]) meets itself while
        # planned: it gets converters that call the finished ones, filled in below.
        done: list[_Convert] = []
        self._classes[cls] = (lambda v: done[0](v), lambda d: done[1](d))
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:  # NameError, TypeError: annotations that do not resolve
            raise IdempotencyConfigError(
                f"{self.root} cannot be replayed as it was returned: the annotations of "
                f"{cls.__qualname__} do not resolve ({type(exc).__name__}: {exc}); define the "
                "types they name at module level, or pass output_serializer="
            ) from exc
        fields: list[tuple[str, _Convert | None, _Convert | None, bool]] = []
        for field in dataclasses.fields(cls):
            where = f"{cls.__qualname__}.{field.name}"
            try:
                dump, load = self.plan(hints.get(field.name, Any), where)
            except _Refused as exc:
                raise self.refuse(where, hints.get(field.name), str(exc)) from None
            fields.append((field.name, dump, load, field.init))
        made = cls
        init = [(name, load) for name, _, load, is_init in fields if is_init]
        later = [(name, load) for name, _, load, is_init in fields if not is_init]
        dumps = [(name, dump) for name, dump, _, _ in fields]

        def dump_dataclass(value: Any) -> Any:
            return {
                name: getattr(value, name) if dump is None else dump(getattr(value, name))
                for name, dump in dumps
            }

        def load_field(name: str, load: _Convert, value: Any) -> Any:
            try:
                return load(value)
            except Exception as exc:
                raise _at_field(made, name, exc) from None

        def load_dataclass(data: Any) -> Any:
            # Only the keys present: a field added since the record was written
            # takes its default, as cls(**data) always did.
            try:
                kwargs = {
                    name: data[name] if load is None else load_field(name, load, data[name])
                    for name, load in init
                    if name in data
                }
                obj = made(**kwargs)
            except _Misfit:
                raise
            except Exception as exc:
                raise _field_misfit(made, data, exc) from None
            for name, load in later:  # init=False fields hold what was stored
                if name in data:
                    value = data[name] if load is None else load_field(name, load, data[name])
                    object.__setattr__(obj, name, value)
            return obj

        if not later and all(load is None for _, load in init):
            # Plain data all through: the constructor alone rebuilds it.
            def load_dataclass(data: Any) -> Any:
                try:
                    return made(**data)
                except Exception as exc:
                    raise _field_misfit(made, data, exc) from None

        plan = (_exact(cls, dump_dataclass), load_dataclass)
        done.extend(plan)
        self._classes[cls] = plan
        return plan

    def plan(self, tp: Any, where: str) -> _Plan:
        """The plan of one annotated type.

        Raises:
            _Refused: The type cannot be rebuilt faithfully.
            IdempotencyConfigError: A nested dataclass is refused (named there).
        """
        if tp is Any or tp is object or tp in _JSON_SCALARS or tp is None:
            return _AS_IS
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated or origin is typing.Final:
            return self.plan(args[0], where)
        if origin is typing.Literal:
            if all(type(arg) in _JSON_SCALARS for arg in args):
                return _AS_IS
            raise _Refused("a Literal of values that are not JSON scalars")
        if origin in _UNIONS:
            return self._union(args, where)
        if isinstance(tp, typing.NewType):
            return self.plan(tp.__supertype__, where)
        if origin in _LISTS or (origin is None and tp in _LISTS):
            return self._list(args, where)
        if origin is tuple or tp is tuple:
            return self._tuple(args, where)
        if origin in _DICTS or (origin is None and tp in _DICTS):
            return self._dict(args, where)
        if isinstance(tp, type):
            return self._class(tp)
        raise _Refused("not a type that JSON data can be rebuilt into")

    def _class(self, tp: type) -> _Plan:
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp)
        if callable(getattr(tp, "model_validate", None)) and callable(
            getattr(tp, "model_dump", None)
        ):
            model: Any = tp
            return (_exact(tp, lambda v: v.model_dump(mode="json")), model.model_validate)
        if tp in _TEXT_TYPES:
            dump, load = _TEXT_TYPES[tp]
            return (_exact(tp, dump), load)
        if issubclass(tp, enum.Enum):
            values = [member.value for member in tp]
            if all(type(value) in _JSON_SCALARS for value in values):
                return (lambda v: v.value, tp)
            raise _Refused("an Enum whose values are not JSON scalars")
        if typing.is_typeddict(tp):
            hints = typing.get_type_hints(tp)
            if all(self.plan(hint, "") == _AS_IS for hint in hints.values()):
                return _AS_IS
            raise _Refused("a TypedDict of values that need rebuilding")
        raise _Refused("JSON has no such type")

    def _union(self, args: tuple[Any, ...], where: str) -> _Plan:
        members = [arg for arg in args if arg is not type(None)]
        plans = [self.plan(arg, where) for arg in members]
        if len(members) == 1:
            return _optional(plans[0]) if len(args) > 1 else plans[0]
        if all(plan == _AS_IS for plan in plans):
            return _AS_IS  # int | str: JSON keeps which it was
        raise _Refused("a Union whose members JSON data cannot tell apart")

    def _list(self, args: tuple[Any, ...], where: str) -> _Plan:
        dump, load = self.plan(args[0], where) if args else _AS_IS
        return (
            None if dump is None else (lambda v: [dump(x) for x in v]),
            None if load is None else (lambda d: [load(x) for x in d]),
        )

    def _tuple(self, args: tuple[Any, ...], where: str) -> _Plan:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            dump, load = self.plan(args[0], where) if args else _AS_IS
            return (
                None if dump is None else (lambda v: [dump(x) for x in v]),
                tuple if load is None else (lambda d: tuple([load(x) for x in d])),
            )
        if args == ((),):  # tuple[()]
            return (None, tuple)
        plans = [self.plan(arg, where) for arg in args]
        dumps = [dump for dump, _ in plans]
        loads = [load for _, load in plans]

        def dump_tuple(value: Any) -> Any:
            return [x if f is None else f(x) for f, x in zip(dumps, value, strict=True)]

        def load_tuple(data: Any) -> Any:
            return tuple([x if f is None else f(x) for f, x in zip(loads, data, strict=True)])

        return (dump_tuple, load_tuple)

    def _dict(self, args: tuple[Any, ...], where: str) -> _Plan:
        if not args:
            return _AS_IS
        key, value = args
        if key is not str and key is not Any:
            raise _Refused("JSON keeps only str keys")
        dump, load = self.plan(value, where)
        return (
            None if dump is None else (lambda v: {k: dump(x) for k, x in v.items()}),
            None if load is None else (lambda d: {k: load(x) for k, x in d.items()}),
        )
