"""Records as stores hold them, claim results, and the outcome envelope.

A record is either IN_PROGRESS (a claim, held until ``deadline_ms``, the lease)
or COMPLETED (an outcome, kept until ``deadline_ms``, the retention). All times
are integer milliseconds since the epoch, by the store's clock.
"""

from __future__ import annotations

import decimal
import enum
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import CorruptRecordError, IdempotencySerializationError

__all__ = [
    "Acquired",
    "ClaimResult",
    "Found",
    "Record",
    "Status",
    "decode_outcome",
    "encode_outcome",
    "new_token",
]


class Status(enum.Enum):
    """Where a record stands."""

    IN_PROGRESS = "P"
    COMPLETED = "C"


@dataclass(frozen=True, slots=True)
class Record:
    """One idempotency record.

    Attributes:
        status: IN_PROGRESS or COMPLETED.
        token: The fencing token (32 lowercase hex digits) of the claim that
            wrote it.
        deadline_ms: Lease end while IN_PROGRESS, retention end once COMPLETED.
        fingerprint: Hex digest of the validated part of the payload, or None.
        outcome: The outcome envelope once COMPLETED, else None.
    """

    status: Status
    token: str
    deadline_ms: int
    fingerprint: str | None = None
    outcome: bytes | None = None


@dataclass(frozen=True, slots=True)
class Acquired:
    """The claim took the key; the caller may run.

    Attributes:
        takeover: True when the store replaced an orphan (an IN_PROGRESS record
            of another token whose lease had passed). Stores whose orphans
            vanish by themselves (Redis ``PX``) report False for those.
    """

    takeover: bool = False


@dataclass(frozen=True, slots=True)
class Found:
    """The key is held by a live record; nothing was written.

    Attributes:
        record: The record as the store held it.
        now_ms: The store's clock when it answered, so that time left on a
            lease is judged by one clock. The Redis store's native claim
            answers a COMPLETED record without reading a clock: there it is
            the caller's clock, capped below the record's deadline (the
            server held the record, so it was live then).
    """

    record: Record
    now_ms: int


ClaimResult = Acquired | Found


def new_token() -> str:
    """Return a fresh 128-bit fencing token as 32 lowercase hex digits."""
    return os.urandom(16).hex()


def one_shot_encoder(encoder: json.JSONEncoder) -> Callable[[Any], str] | None:
    """A faster twin of ``encoder.encode`` for values it can write, or None.

    ``JSONEncoder.encode`` builds a new C encoder on every call. The one made
    here is built once, without the circular-reference bookkeeping (a dict per
    call, which is what makes it unsafe to share): a circular value ends in a
    RecursionError instead. So it only serves the success path; on any error the
    caller runs ``encoder.encode`` itself, which raises exactly what it always did.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or encoder.indent is not None:  # pragma: no cover - no C accelerator
        return None
    encoding = json.encoder
    quote = encoding.encode_basestring_ascii if encoder.ensure_ascii else encoding.encode_basestring
    try:
        chunks = make(
            None,
            encoder.default,
            quote,
            None,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # pragma: no cover - another interpreter's signature
        return None

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


# The envelope is a tag byte and compact JSON. The tag leaves room for other
# kinds (an HTTP response) and makes a stray value fail loudly.
#
#   b"j"  plain JSON: every result without a Decimal (and every record written
#         before Decimal support).
#   b"e"  JSON with extension objects, written only for a result that holds a
#         Decimal or a float JSON cannot write (NaN, Infinity): a Decimal is
#         ``{"$d": "<str(d)>"}``, such a float ``{"$f": "nan" | "inf" | "-inf"}``,
#         and every user dict key that starts with "$" is written with one more
#         "$" in front. So a stored key "$" + non-"$" is always ours, "$$..."
#         always the user's: no user data can be read as an extension object,
#         whatever keys it uses.
_JSON_TAG = b"j"
_EXT_TAG = b"e"
_DECIMAL_KEY = "$d"
_FLOAT_KEY = "$f"
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _HoldsDecimal(TypeError):
    """The value holds a Decimal: write the extended envelope instead."""


def _no_decimal(value: Any) -> Any:
    # The encoders' default(): json calls it only for what it cannot write.
    if isinstance(value, decimal.Decimal):
        raise _HoldsDecimal
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_no_decimal
)
_FAST_ENCODE = one_shot_encoder(_ENCODER)
_DECODER = json.JSONDecoder()


def _bad_key(value: Any) -> tuple[str, list[str]] | None:
    # The first dict key that is not a str, depth first: (its type, the path
    # to its dict, innermost segment first). Only the path is built on the way
    # back out, so a clean value costs one pass and no strings.
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return type(key).__name__, []
        for position, item in enumerate(value.values()):
            if isinstance(item, (dict, list, tuple)):
                found = _bad_key(item)
                if found is not None:
                    # The key's position, not its name: names are the caller's data.
                    found[1].append(f".<key {position}>")
                    return found
    else:
        for index, item in enumerate(value):
            if isinstance(item, (dict, list, tuple)):
                found = _bad_key(item)
                if found is not None:
                    found[1].append(f"[{index}]")
                    return found
    return None


# What json writes for an int, float, bool or None dict key: the key as a
# string. A str key that looks the same ("1", "null") also matches; the walk
# below then tells them apart, so a match costs time, never a wrong answer.
_COERCED_KEY = re.compile(r'"(?:-?[0-9][0-9.eE+-]*|null|true|false)":')


def _check_keys(text: str, value: Any) -> None:
    # json writes {1: "a"} as {"1":"a"} and {None: 0} as {"null":0}, so a replay
    # would differ from the first result: refuse such a value. Walking every
    # result in Python would cost more than encoding it; a regex over the text
    # (C speed) finds every key that could be one, and only then do we walk.
    if _COERCED_KEY.search(text) is None:
        return
    try:
        found = _bad_key(value)
    except RecursionError as exc:
        raise IdempotencySerializationError(
            "the result is nested too deeply to be stored; return flatter data"
        ) from exc
    if found is not None:
        key_type, path = found
        where = "$" + "".join(reversed(path))
        raise IdempotencySerializationError(
            f"the result has a {key_type} key in a dict at {where}: JSON keeps only str "
            "keys, so a replay would return it changed (as a str); use str keys, or pass "
            "output_serializer=CustomSerializer(to_json, from_json) to convert them"
        )


def _extend(value: Any) -> Any:
    # The value as the b"e" envelope writes it: Decimals as extension objects,
    # user keys that start with "$" escaped. Tuples become lists, as json writes them.
    if isinstance(value, dict):
        return {
            ("$" + key if isinstance(key, str) and key[:1] == "$" else key): _extend(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_extend(item) for item in value]
    if isinstance(value, decimal.Decimal):
        # str() is exact: digits, exponent, sign of zero, NaN payloads.
        return {_DECIMAL_KEY: str(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_KEY: repr(value)}  # "nan", "inf" or "-inf"
    return value


def _unsupported(value: Any, exc: BaseException) -> IdempotencySerializationError:
    return IdempotencySerializationError(
        f"the result ({type(value).__name__}) cannot be stored as JSON: {exc}; "
        "return JSON-native data or pass output_serializer= (a dataclass or pydantic "
        "class, or CustomSerializer(to_json, from_json))"
    )


def _encode_extended(value: Any) -> bytes:
    try:
        text = _ENCODER.encode(_extend(value))
        data = text.encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _unsupported(value, exc) from exc
    # The escaped copy keeps non-str keys as they are, so the text shows them.
    _check_keys(text, value)
    return _EXT_TAG + data


def encode_outcome(value: Any) -> bytes:
    """Wrap a JSON-native value in the outcome envelope.

    ``Decimal`` values (boto3's DynamoDB numbers), at any depth, are kept
    exactly: they replay as the same ``Decimal`` (digits, exponent, sign,
    ``NaN``/``Infinity``), not as floats or strings. Float ``nan``, ``inf``
    and ``-inf`` (which JSON cannot write) replay as those floats.

    Args:
        value: Anything ``json`` can write without help (falsy values
            included) or a ``Decimal``, whose dicts have ``str`` keys only.

    Returns:
        The envelope bytes.

    Raises:
        IdempotencySerializationError: The value is not JSON-native, or a dict
            in it has a key that is not a ``str`` (JSON would turn ``1`` into
            ``"1"`` and ``None`` into ``"null"``, so the replay would differ).
    """
    if _FAST_ENCODE is not None:
        try:
            text = _FAST_ENCODE(value)
            data = text.encode()
        except _HoldsDecimal:
            return _encode_extended(value)
        except Exception:  # the full encoder below raises the documented error
            pass
        else:
            _check_keys(text, value)
            return _JSON_TAG + data
    try:
        # Encoded inside the try: a lone surrogate fails there (UnicodeEncodeError).
        text = _ENCODER.encode(value)
        data = text.encode()
    except _HoldsDecimal:
        return _encode_extended(value)
    except ValueError as exc:
        # NaN or Infinity (allow_nan=False) fit the extended envelope; anything
        # else that json refuses (a circle, a lone surrogate) fails there too.
        try:
            return _encode_extended(value)
        except IdempotencySerializationError:
            raise _unsupported(value, exc) from exc
    except (TypeError, RecursionError) as exc:
        raise _unsupported(value, exc) from exc
    _check_keys(text, value)
    return _JSON_TAG + data


class _BadExtension(ValueError):
    """A b"e" envelope whose extension objects or escaped keys are malformed."""


def _restore(obj: dict[str, Any]) -> Any:
    # object_hook of the b"e" decoder: undoes _extend for one dict.
    if len(obj) == 1 and _FLOAT_KEY in obj:
        text = obj[_FLOAT_KEY]
        if type(text) is str and text in _FLOATS:
            return _FLOATS[text]
        raise _BadExtension
    if len(obj) == 1 and _DECIMAL_KEY in obj:
        text = obj[_DECIMAL_KEY]
        if type(text) is str:
            try:
                number = decimal.Decimal(text)
            except decimal.DecimalException:
                raise _BadExtension from None
            if str(number) == text:  # the one spelling _extend writes
                return number
        raise _BadExtension
    for key in obj:
        if key[:1] == "$":
            break
    else:
        return obj
    restored = {}
    for key, item in obj.items():
        if key[:1] == "$":
            if key[:2] != "$$":  # an extension object where none can be
                raise _BadExtension
            key = key[1:]
        restored[key] = item
    return restored


_EXT_DECODER = json.JSONDecoder(object_hook=_restore)


def decode_outcome(data: bytes) -> Any:
    """Unwrap an outcome envelope.

    Args:
        data: Bytes written by :func:`encode_outcome`.

    Returns:
        The value, exactly as it was stored (Decimals as Decimals).

    Raises:
        CorruptRecordError: The bytes are not an outcome envelope.
    """
    tag = bytes(data[:1]) if isinstance(data, (bytes, bytearray, memoryview)) else None
    if tag == _JSON_TAG:
        decoder = _DECODER
    elif tag == _EXT_TAG:
        decoder = _EXT_DECODER
    else:
        raise CorruptRecordError(
            "stored outcome has an unknown envelope tag; delete the key (onceonly purge) "
            "or upgrade onceonly if a newer version wrote it"
        )
    try:
        # encode_outcome writes UTF-8: decoding it directly skips json.loads's
        # encoding detection (UTF-16/32), which a stored outcome never needs.
        return decoder.decode(bytes(data[1:]).decode())
    except _BadExtension:
        raise CorruptRecordError(
            "stored outcome holds a malformed Decimal or escaped key; delete the key "
            "(onceonly purge) to let it run again"
        ) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptRecordError(
            "stored outcome is not valid JSON; delete the key (onceonly purge) to let it run again"
        ) from exc
