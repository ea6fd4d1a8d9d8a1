"""The JMESPath functions of key selection: ``from_json``, ``from_base64``, ``from_base64_gzip``.

Powertools' names (``powertools_json``, ``powertools_base64``,
``powertools_base64_gzip``) are the same functions. Base64 is decoded
strictly (one canonical spelling), gzip up to :data:`MAX_GUNZIP_BYTES`; a
user's own ``custom_functions`` are combined with these. ``keys.select``
turns the two exceptions here into the documented errors.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from typing import Any

import jmespath
from jmespath import functions as jp_functions

__all__ = [
    "JMESPATH_OPTIONS",
    "MAX_GUNZIP_BYTES",
    "BoundExpression",
    "InvalidBase64",
    "Undecodable",
    "jmespath_options",
]


class InvalidBase64(Exception):
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
        raise InvalidBase64(function) from None
    return raw


# The most from_base64_gzip may decompress to. A CloudWatch Logs event carries at
# most 1 MB of log data, so 10 MiB is generous; without a bound a few hundred KB
# of crafted gzip would fill memory (a 259 KB payload made 200 MB).
MAX_GUNZIP_BYTES = 10 * 1024 * 1024


class Undecodable(ValueError):
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
            raise Undecodable(f"{function}() got data that is not valid gzip") from None
        if len(out) > MAX_GUNZIP_BYTES:
            raise Undecodable(
                f"{function}() would decompress to more than {MAX_GUNZIP_BYTES} bytes, "
                "the limit (onceonly.keys.MAX_GUNZIP_BYTES)"
            )
        if not member.eof:
            raise Undecodable(f"{function}() got gzip data that ends before its end")
        data = member.unused_data.lstrip(b"\0")
    return bytes(out)


def _text(raw: bytes, function: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise Undecodable(
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
            raise Undecodable(
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
