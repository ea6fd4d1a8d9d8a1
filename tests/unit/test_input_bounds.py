"""Inputs without a natural bound (issue 10, item 10 and the gzip bound).

- a payload nested deeper than Python can recurse is an ``IdempotencySerializationError``;
- ``from_base64_gzip`` stops decompressing at a documented bound, and a bad
  gzip stream is an ``IdempotencySerializationError`` that quotes none of it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import traceback
from typing import Any

import jmespath
import pytest

from onceonly import (
    IdempotencyConfig,
    IdempotencySerializationError,
    idempotent,
    idempotent_function,
)
from onceonly.keys import MAX_GUNZIP_BYTES, select
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import load_event

CARD = "4111111111111111"


def everything_said(exc: BaseException) -> str:
    """The error as a logger or a traceback would show it: every chained cause and context."""
    return "".join(traceback.format_exception(exc))


# -- item 10: payloads nested deeper than Python recurses ----------------------------------

DEPTH = 10_000


def deep_body() -> str:
    """A JSON text of about 200 KB nested 10 000 deep."""
    return '{"nested_level_key":' * DEPTH + "1" + "}" * DEPTH


def deep_dict() -> Any:
    value: Any = 1
    for _ in range(DEPTH):
        value = {"a": value}
    return value


def api_gateway_event() -> dict[str, Any]:
    event = load_event("apiGatewayProxyEvent.json")
    event["body"] = deep_body()
    assert len(event["body"]) > 200_000
    return event


@pytest.mark.parametrize(
    "config",
    [
        IdempotencyConfig(event_key_jmespath="from_json(body).id"),
        IdempotencyConfig(event_key_jmespath="from_json(body)"),
        IdempotencyConfig(event_key_jmespath="body", payload_validation_jmespath="from_json(body)"),
        IdempotencyConfig(event_key_jmespath="powertools_json(body).id"),
    ],
    ids=["key-field", "key-whole-body", "validation", "powertools-name"],
)
def test_deep_api_gateway_body_is_a_serialization_error(config: IdempotencyConfig) -> None:
    ran: list[int] = []

    @idempotent(store=MemoryStore(), config=config)
    def handler(event: dict[str, Any], context: Any) -> int:
        ran.append(1)
        return 1

    with pytest.raises(IdempotencySerializationError, match="nested too deeply") as info:
        handler(api_gateway_event(), None)
    assert ran == []
    assert "nested_level_key" not in str(info.value)


def test_deep_api_gateway_body_async() -> None:
    config = IdempotencyConfig(event_key_jmespath="from_json(body).id")

    @idempotent(store=AsyncMemoryStore(), config=config)
    async def handler(event: dict[str, Any], context: Any) -> int:
        return 1

    with pytest.raises(IdempotencySerializationError, match="nested too deeply"):
        asyncio.run(handler(api_gateway_event(), None))


@pytest.mark.parametrize(
    "config",
    [IdempotencyConfig(), IdempotencyConfig(event_key_jmespath="a.a")],
    ids=["whole-payload", "expression"],
)
def test_deep_payload_of_a_function_is_a_serialization_error(config: IdempotencyConfig) -> None:
    store = MemoryStore()

    @idempotent_function(store=store, data="order", config=config)
    def process(order: Any) -> int:
        return 1

    with pytest.raises(IdempotencySerializationError, match="nested too deeply"):
        process(deep_dict())
    assert process({"a": {"a": 1}}) == 1  # the same function still works


@pytest.mark.parametrize("search", ["a == b", "to_string(@)", "length(to_string(a))"])
def test_deep_selection_through_jmespath_search_is_a_serialization_error(search: str) -> None:
    # These walk the whole selection: the search itself recurses.
    with pytest.raises(IdempotencySerializationError, match="nested too deeply"):
        select(jmespath.compile(search), {"a": deep_dict(), "b": deep_dict()})


# -- from_base64_gzip's bound -----------------------------------------------------------------


def b64gzip(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw)).decode()


@pytest.mark.parametrize("function", ["from_base64_gzip", "powertools_base64_gzip"])
def test_gzip_bomb_stops_at_the_bound(function: str) -> None:
    assert MAX_GUNZIP_BYTES == 10 * 1024 * 1024
    bomb = b64gzip(b"0" * (MAX_GUNZIP_BYTES + 1))
    assert len(bomb) < 100_000
    expression = jmespath.compile(f"{function}(data)")
    with pytest.raises(IdempotencySerializationError) as info:
        select(expression, {"data": bomb})
    assert "10485760 bytes" in str(info.value)
    assert function in str(info.value)


def test_gzip_at_the_bound_decodes() -> None:
    text = json.dumps({"id": "x" * (MAX_GUNZIP_BYTES - 20)})
    text += " " * (MAX_GUNZIP_BYTES - len(text))
    expression = jmespath.compile("from_json(from_base64_gzip(data)).id")
    assert len(select(expression, {"data": b64gzip(text.encode())})) == MAX_GUNZIP_BYTES - 20


def test_gzip_of_several_members_decodes_as_gzip_does() -> None:
    data = base64.b64encode(gzip.compress(b'{"id": ') + gzip.compress(b'"two"}')).decode()
    assert select(jmespath.compile("from_json(from_base64_gzip(data)).id"), {"data": data}) == "two"


@pytest.mark.parametrize(
    "raw",
    [
        b"card 4111111111111111, not gzip",
        gzip.compress(b"card 4111111111111111")[:-3],
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03card 4111111111111111",
        gzip.compress(b"\xffcard 4111111111111111"),
        gzip.compress(b"card 4111111111111111") + b"trailing card 4111111111111111",
    ],
    ids=["not-gzip", "truncated", "bad-deflate", "not-utf8", "trailing-garbage"],
)
def test_bad_gzip_is_a_serialization_error_that_quotes_nothing(raw: bytes) -> None:
    expression = jmespath.compile("from_base64_gzip(data)")
    with pytest.raises(IdempotencySerializationError) as info:
        select(expression, {"data": base64.b64encode(raw).decode()})
    said = everything_said(info.value)
    assert CARD not in said, said
    assert "card" not in str(info.value)
