"""Payload selection, canonical JSON and hashing: how a call becomes a key.

A key is ``"{prefix}:{digest}"`` where digest hashes the canonical JSON of the
selected payload. Canonical JSON has sorted keys and no whitespace, so two
payloads that are equal as data hash equally whatever their dict order.
A :class:`KeyScheme` can write keys another way (``onceonly.compat.powertools``
forms them as Powertools does, so that records it wrote are found).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import pathlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .errors import IdempotencyConfigError, IdempotencyKeyError, IdempotencySerializationError
from .jmespath_functions import (
    JMESPATH_OPTIONS,
    MAX_GUNZIP_BYTES,
    BoundExpression,
    InvalidBase64,
    Undecodable,
    jmespath_options,
)
from .records import one_shot_encoder

__all__ = [
    "JMESPATH_OPTIONS",
    "MAX_GUNZIP_BYTES",
    "ONCEONLY_KEYS",
    "BoundExpression",
    "KeyScheme",
    "canonical_json",
    "event_data",
    "hasher",
    "is_missing",
    "jmespath_options",
    "json_native",
    "select",
]


def _plain(value: Any) -> Any:
    # A Mapping's data as dicts and lists, at any depth (JMESPath reads dicts).
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def event_data(value: Any) -> Any:
    """The data of an event object: its ``raw_event``, or a Mapping as a dict.

    Powertools' event data classes (``APIGatewayProxyEventV2``, ``SQSRecord``,
    ...) keep the event in ``raw_event``; any other ``Mapping``
    (``MappingProxyType``, a custom class) is read as the dict it holds. Both
    are made plain dicts and lists at every depth, so that they key exactly as
    the dict they hold.

    Args:
        value: A payload; a dict is returned as it is.

    Returns:
        A dict for a Mapping or an object whose ``raw_event`` is a Mapping
        (a ``raw_event`` dict as it is), else the value itself.
    """
    if isinstance(value, dict):  # dict subclasses too: read as they always were
        return value
    raw = getattr(value, "raw_event", None)
    if isinstance(raw, dict):  # Powertools' data classes: no copy
        return raw
    if isinstance(raw, Mapping):
        value = raw
    if isinstance(value, Mapping):
        return _plain(value)
    return value


def json_native(value: Any) -> Any:
    """Turn a top-level event object, dataclass or pydantic model into plain data for JMESPath.

    Args:
        value: A payload.

    Returns:
        A dict for a Mapping, an object with a ``raw_event`` Mapping (see
        :func:`event_data`), a dataclass instance or a pydantic model, else the
        value itself.
    """
    if type(value) is dict:
        return value
    value = event_data(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    return value


def select(expression: Any, payload: Any) -> Any:
    """Apply a compiled JMESPath expression (None selects everything).

    Args:
        expression: A compiled expression from ``jmespath.compile``, a
            :class:`BoundExpression`, or None.
        payload: JSON-native data.

    Returns:
        The selected value.

    Raises:
        IdempotencyKeyError: A base64 function got text that is not valid base64.
        IdempotencySerializationError: An embedded value failed to decode.
    """
    if expression is None:
        return payload
    try:
        # A BoundExpression (a config with jmespath_options) brings its own functions.
        return expression.search(payload, options=getattr(expression, "options", JMESPATH_OPTIONS))
    except InvalidBase64 as exc:
        # The message names the function and the expression, never the text.
        raise IdempotencyKeyError(
            f"JMESPath expression {expression.expression!r}: {exc.function}() got a value that "
            "is not valid base64 (standard alphabet, padded, canonical); send the data base64 "
            "encoded as AWS does, or select the key with another expression"
        ) from None
    except Undecodable as exc:
        # from_json / from_base64 / from_base64_gzip on text that is not that.
        raise IdempotencySerializationError(
            f"JMESPath expression {expression.expression!r} could not decode the payload: {exc}"
        ) from None
    except RecursionError:
        # from_json of a body nested thousands deep, or a search that walks one.
        raise IdempotencySerializationError(
            f"JMESPath expression {expression.expression!r} could not read the payload: it is "
            f"{_TOO_DEEP}"
        ) from None


_TOO_DEEP = (
    "nested too deeply (past Python's recursion limit) to be read as a key; select a "
    "flatter part of it, or give key=callable"
)


def is_missing(selected: Any) -> bool:
    """Whether a selection holds no key: None, blank, or a multi-select of blanks.

    Blank is an empty or whitespace-only string, an empty list or dict, and a
    list or dict (a multi-select) whose items are all None or blank. ``0`` and
    ``False`` are keys: only what carries no identity at all is missing, so that
    two requests without a key never share one record.

    Args:
        selected: What the key expression (or ``key=callable``) selected.

    Returns:
        True when there is nothing to key on.
    """
    if selected is None:
        return True
    if isinstance(selected, str):
        return not selected or selected.isspace()
    if isinstance(selected, dict):
        selected = selected.values()
    elif not isinstance(selected, (list, tuple)):
        return False
    for value in selected:  # noqa: SIM110 - all() over a generator costs more per call
        if not is_missing(value):
            return False
    return True


def _default(value: Any) -> Any:
    # Called by json for anything it cannot write itself; the order of checks
    # puts the common payload types first.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=canonical_json)
    if isinstance(value, Mapping):
        return dict(value)  # json calls back here for Mappings nested in it
    raw = getattr(value, "raw_event", None)
    if isinstance(raw, Mapping):
        return raw  # a Powertools event data class: its event
    raise TypeError(f"{type(value).__qualname__} is not JSON serializable")


# One encoder for every call: json.dumps would build a new one each time.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
)
_FAST_CANONICAL = one_shot_encoder(_CANONICAL)


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON bytes of a value.

    Sorted keys, no whitespace, UTF-8, no NaN. Besides JSON types it writes
    dataclasses, pydantic models, datetime/date/time (ISO 8601), UUID, Decimal,
    Enum (its value), paths, bytes (base64), sets (sorted), any Mapping (as
    the dict it holds) and event objects with a ``raw_event`` Mapping (as
    that event).

    Args:
        value: The data to write.

    Returns:
        UTF-8 bytes.

    Raises:
        IdempotencySerializationError: The value holds something else.
    """
    if _FAST_CANONICAL is not None:
        try:
            return _FAST_CANONICAL(value).encode()
        except Exception:  # the full encoder below raises the documented error
            pass
    try:
        # Encoded to bytes inside the try: a lone surrogate fails there.
        data = _CANONICAL.encode(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise IdempotencySerializationError(
            f"payload cannot be written as canonical JSON: {exc}; pass JSON-native data, "
            "a dataclass or a pydantic model, or give key=callable"
        ) from exc
    return data


def hasher(name: str) -> Callable[[bytes], str]:
    """Return a function that hex-digests bytes with the named hashlib algorithm.

    Args:
        name: A ``hashlib`` algorithm name.

    Returns:
        ``digest(data) -> hex string``.

    Raises:
        IdempotencyConfigError: The algorithm is unknown here.
    """
    try:
        # usedforsecurity=False lets md5 work on FIPS builds; it is a key, not a MAC.
        hashlib.new(name, b"", usedforsecurity=False)
    except (ValueError, TypeError) as exc:
        raise IdempotencyConfigError(f"hash_function {name!r} is not available: {exc}") from exc
    constructor = getattr(hashlib, name, None)
    if constructor is not None:
        return lambda data: constructor(data, usedforsecurity=False).hexdigest()
    return lambda data: hashlib.new(name, data, usedforsecurity=False).hexdigest()


@dataclasses.dataclass(frozen=True)
class KeyScheme:
    """How a key is written from what the payload selected.

    Attributes:
        separator: Between the prefix and the digest.
        encode: The bytes that are hashed, for a selection (and for the
            validated part of the payload, the fingerprint).
        missing: Whether a selection holds no key.
    """

    separator: str
    encode: Callable[[Any], bytes]
    missing: Callable[[Any], bool]


# "{prefix}:{digest}" of the canonical JSON; blanks hold no key.
ONCEONLY_KEYS = KeyScheme(":", canonical_json, is_missing)

_UNSET: Any = object()


class Keyer:
    """Makes the key and fingerprint of a call from its payload.

    Args:
        prefix: The key prefix (the function's ``module.qualname`` by default).
        hash_function: A ``hashlib`` algorithm name.
        key_expr: Compiled ``event_key_jmespath`` or None.
        validation_expr: Compiled ``payload_validation_jmespath`` or None.
        scheme: How keys are written; onceonly's own by default.
    """

    def __init__(
        self,
        prefix: str,
        hash_function: str,
        key_expr: Any,
        validation_expr: Any,
        scheme: KeyScheme | None = None,
    ) -> None:
        scheme = scheme or ONCEONLY_KEYS
        self.prefix = prefix + scheme.separator
        self._encode = scheme.encode
        self._missing = scheme.missing
        self.digest = hasher(hash_function)
        self.key_expr = key_expr
        self.validation_expr = validation_expr
        # Whether the payload is made plain data (for JMESPath) without and with key material.
        self._plain = validation_expr is not None or key_expr is not None
        self._plain_with_material = validation_expr is not None

    def key_and_fingerprint(
        self, payload: Any, key_material: Any = _UNSET
    ) -> tuple[str | None, str | None]:
        """Return ``(key, fingerprint)``; key is None when the payload holds no key.

        Args:
            payload: The call's payload (event, or the ``data`` argument).
            key_material: What ``key=callable`` returned, used instead of the
                key expression when given.

        Raises:
            IdempotencySerializationError: The payload cannot be made canonical JSON,
                cannot be decoded, or is nested past Python's recursion limit.
            IdempotencyKeyError: A base64 function got text that is not valid base64.
        """
        try:
            return self._key_and_fingerprint(payload, key_material)
        except RecursionError:
            # Reading the payload (dataclasses.asdict, the blank check) recursed
            # past the limit; the selection's own recursion is named in select().
            raise IdempotencySerializationError(f"the payload is {_TOO_DEEP}") from None

    def _key_and_fingerprint(
        self, payload: Any, key_material: Any
    ) -> tuple[str | None, str | None]:
        if key_material is _UNSET:
            # Without expressions the payload is hashed as it is (a dataclass
            # through canonical JSON); an event object is still read as its dict,
            # so that an empty one holds no key, like an empty dict.
            data = json_native(payload) if self._plain else event_data(payload)
            selected = select(self.key_expr, data)
        else:
            data = json_native(payload) if self._plain_with_material else payload
            selected = key_material
        if self._missing(selected):
            return None, None
        key = self.prefix + self.digest(self._encode(selected))
        if self.validation_expr is None:
            return key, None
        return key, self.digest(self._encode(select(self.validation_expr, data)))
