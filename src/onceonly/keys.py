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
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jmespath
from jmespath import functions as jp_functions

from .errors import IdempotencyConfigError, IdempotencyKeyError, IdempotencySerializationError
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


class _InvalidBase64(Exception):
    """A base64 JMESPath function got text that is not canonical base64."""

    def __init__(self, function: str) -> None:
        super().__init__(function)
        self.function = function


def _strict_b64decode(value: str, function: str) -> bytes:
    # Strict: the standard alphabet, padding required, nothing else (no
    # whitespace, no url-safe characters, no data after the padding), and the
    # one canonical spelling (unused low bits zero). So one text decodes to one
    # byte string and one byte string has one text: two different payloads
    # can never meet in one key through a lenient decoder.
    try:
        raw = base64.b64decode(value, validate=True)
        canonical = base64.b64encode(raw).decode("ascii") == value
    except ValueError:  # binascii.Error and non-ASCII text are ValueErrors
        canonical = False
    if not canonical:
        raise _InvalidBase64(function) from None
    return raw


# The most from_base64_gzip may decompress to. A CloudWatch Logs event carries at
# most 1 MB of log data, so 10 MiB is generous; without a bound a few hundred KB
# of crafted gzip would fill memory (a 259 KB payload made 200 MB).
MAX_GUNZIP_BYTES = 10 * 1024 * 1024


class _Undecodable(ValueError):
    """Embedded data that cannot be decoded; the message quotes none of it."""


def _gunzip(raw: bytes, function: str) -> bytes:
    # As gzip.decompress (members one after another, zero padding between them,
    # CRC and length checked by zlib), but never past MAX_GUNZIP_BYTES.
    out = bytearray()
    data = raw
    while data:
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
        try:
            out += member.decompress(data, MAX_GUNZIP_BYTES + 1 - len(out))
        except zlib.error:
            raise _Undecodable(f"{function}() got data that is not valid gzip") from None
        if len(out) > MAX_GUNZIP_BYTES:
            raise _Undecodable(
                f"{function}() would decompress to more than {MAX_GUNZIP_BYTES} bytes, "
                "the limit (onceonly.keys.MAX_GUNZIP_BYTES)"
            )
        if not member.eof:
            raise _Undecodable(f"{function}() got gzip data that ends before its end")
        data = member.unused_data.lstrip(b"\0")
    return bytes(out)


def _text(raw: bytes, function: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise _Undecodable(
            f"{function}() decoded to bytes that are not UTF-8 text (at byte {exc.start})"
        ) from None


class _Functions(jp_functions.Functions):
    """JMESPath functions that decode data embedded in events.

    ``from_json`` parses a JSON string (an API Gateway or SQS body),
    ``from_base64`` decodes base64 text (a Kinesis record), ``from_base64_gzip``
    decodes and gunzips (CloudWatch Logs). The Powertools names are accepted
    too so existing expressions keep working. Base64 is decoded strictly
    (standard alphabet with padding, canonical form); other text raises
    :class:`IdempotencyKeyError` from :func:`select`.
    """

    @jp_functions.signature({"types": ["string"]})
    def _func_from_json(self, value: str) -> Any:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:  # its text and .doc are the payload: keep neither
            raise _Undecodable(
                f"from_json() got text that is not JSON ({exc.msg} at character {exc.pos})"
            ) from None

    @jp_functions.signature({"types": ["string"]})
    def _func_from_base64(self, value: str) -> str:
        return _text(_strict_b64decode(value, "from_base64"), "from_base64")

    @jp_functions.signature({"types": ["string"]})
    def _func_from_base64_gzip(self, value: str) -> str:
        name = "from_base64_gzip"
        return _text(_gunzip(_strict_b64decode(value, name), name), name)

    @jp_functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        return _text(_strict_b64decode(value, "powertools_base64"), "powertools_base64")

    @jp_functions.signature({"types": ["string"]})
    def _func_powertools_base64_gzip(self, value: str) -> str:
        name = "powertools_base64_gzip"
        return _text(_gunzip(_strict_b64decode(value, name), name), name)

    _func_powertools_json = _func_from_json


JMESPATH_OPTIONS = jmespath.Options(custom_functions=_Functions())


def _bind(owner: jp_functions.Functions, function: Callable[..., Any]) -> Callable[..., Any]:
    # jmespath calls table entries as function(functions_instance, *args); a
    # user's function gets the user's own instance (its state) as self.
    def call(_combined: Any, *args: Any) -> Any:
        return function(owner, *args)

    return call


class _Combined(_Functions):
    """Our decode functions and a user's custom functions in one table; theirs win on a clash."""

    def __init__(self, custom: jp_functions.Functions) -> None:
        table = dict(_Functions.FUNCTION_TABLE)
        builtin = jp_functions.Functions.FUNCTION_TABLE
        for name, spec in custom.FUNCTION_TABLE.items():
            if name in builtin and builtin[name]["function"] is spec["function"]:
                continue  # jmespath's own, inherited unchanged: ours is the same
            table[name] = {
                "function": _bind(custom, spec["function"]),
                "signature": spec["signature"],
            }
        self.FUNCTION_TABLE = table  # this instance's table, read by call_function


def jmespath_options(custom_functions: jp_functions.Functions | None) -> Any:
    """The JMESPath options for searches: our functions, plus a user's custom functions.

    Built once per config (the search is a hot path); the user's functions
    override ours where names clash.

    Args:
        custom_functions: An instance of a ``jmespath.functions.Functions``
            subclass, or None for ours alone.

    Returns:
        ``jmespath.Options``.
    """
    if custom_functions is None:
        return JMESPATH_OPTIONS
    return jmespath.Options(custom_functions=_Combined(custom_functions))


class BoundExpression(jmespath.parser.ParsedResult):
    """A compiled expression that carries its own JMESPath options (custom functions).

    Args:
        parsed: The expression compiled by ``jmespath.compile``.
        options: What :func:`jmespath_options` returned.
    """

    def __init__(self, parsed: Any, options: Any) -> None:
        super().__init__(parsed.expression, parsed.parsed)
        self.options = options


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
    except _InvalidBase64 as exc:
        # The message names the function and the expression, never the text.
        raise IdempotencyKeyError(
            f"JMESPath expression {expression.expression!r}: {exc.function}() got a value that "
            "is not valid base64 (standard alphabet, padded, canonical); send the data base64 "
            "encoded as AWS does, or select the key with another expression"
        ) from None
    except _Undecodable as exc:
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
