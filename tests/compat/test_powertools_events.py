"""Events that are objects, not dicts (issue 11, item 2).

A handler that receives a Powertools event data class (anything with
``raw_event``) or any ``Mapping`` is keyed on the mapping's data, as
Powertools does: the same key, fingerprint and replay as the plain dict gives.
"""

from __future__ import annotations

import collections.abc
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from onceonly import IdempotencyConfig, IdempotencyKeyReuseError, idempotent, idempotent_function
from onceonly.keys import Keyer, canonical_json
from onceonly.stores import MemoryStore
from testkit import load_event

ORDER = {"id": "o-1", "amount": 5, "lines": [{"sku": "a", "meta": {"x": 1}}], "note": None}


class EventWrapper:
    """The shape of Powertools' data classes: ``raw_event`` plus item access."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def raw_event(self) -> dict[str, Any]:
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]


class ReadOnlyMapping(collections.abc.Mapping[str, Any]):
    """A Mapping that is not a dict, holding further Mappings."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = {k: ReadOnlyMapping(v) if isinstance(v, dict) else v for k, v in data.items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def proxy(data: dict[str, Any]) -> types.MappingProxyType[str, Any]:
    return types.MappingProxyType(
        {k: proxy(v) if isinstance(v, dict) else v for k, v in data.items()}
    )


WRAPS: list[Callable[[dict[str, Any]], Any]] = [EventWrapper, ReadOnlyMapping, proxy]
IDS = ["raw_event", "Mapping", "MappingProxyType"]
EXPRESSIONS = [
    (None, None),
    ("id", None),
    ("lines[0].meta", "[id, amount]"),
    (None, "lines[0].meta.x"),
    ("keys(@)", "length(lines)"),
]


@pytest.mark.parametrize("wrap", WRAPS, ids=IDS)
@pytest.mark.parametrize(("key_path", "validation_path"), EXPRESSIONS)
def test_an_event_object_gives_the_key_of_its_dict(
    wrap: Callable[[dict[str, Any]], Any], key_path: str | None, validation_path: str | None
) -> None:
    config = IdempotencyConfig(
        event_key_jmespath=key_path, payload_validation_jmespath=validation_path
    )
    keyer = Keyer("p", "md5", config._key_expr, config._validation_expr)
    assert keyer.key_and_fingerprint(wrap(ORDER)) == keyer.key_and_fingerprint(ORDER)


@pytest.mark.parametrize("wrap", WRAPS, ids=IDS)
def test_canonical_json_of_an_event_object_is_that_of_its_dict(
    wrap: Callable[[dict[str, Any]], Any],
) -> None:
    assert canonical_json(wrap(ORDER)) == canonical_json(ORDER)
    assert canonical_json([wrap(ORDER)]) == canonical_json([ORDER])


@pytest.mark.parametrize("wrap", WRAPS, ids=IDS)
def test_an_empty_event_object_has_no_key_like_an_empty_dict(
    wrap: Callable[[dict[str, Any]], Any],
) -> None:
    keyer = Keyer("p", "md5", None, None)
    assert keyer.key_and_fingerprint(wrap({})) == keyer.key_and_fingerprint({}) == (None, None)


@pytest.mark.parametrize("wrap", WRAPS, ids=IDS)
def test_a_handler_of_event_objects_runs_once_and_checks_the_payload(
    wrap: Callable[[dict[str, Any]], Any],
) -> None:
    store = MemoryStore()
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="amount")
    calls: list[Any] = []

    @idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"id": event["id"]}

    assert handler(wrap(ORDER), None) == {"id": "o-1"}
    assert handler(wrap(ORDER), None) == {"id": "o-1"}
    assert handler(ORDER, None) == {"id": "o-1"}  # the plain dict meets the same record
    assert len(calls) == 1
    with pytest.raises(IdempotencyKeyReuseError):
        handler(wrap({**ORDER, "amount": 6}), None)


def test_idempotent_function_takes_a_mapping_argument() -> None:
    store = MemoryStore()
    calls: list[Any] = []

    @idempotent_function(store=store, data="order")
    def process(order: Any) -> str:
        calls.append(order)
        return str(order["id"])

    assert process(proxy(ORDER)) == "o-1"
    assert process(order=ReadOnlyMapping(ORDER)) == "o-1"
    assert len(calls) == 1


def test_the_real_powertools_event_class_is_keyed_on_its_raw_event() -> None:
    raw = load_event("apiGatewayProxyV2Event.json")
    store = MemoryStore()
    config = IdempotencyConfig(
        event_key_jmespath="requestContext.requestId",
        payload_validation_jmespath="[requestContext.http.method, rawPath, body]",
    )
    calls: list[str] = []

    @idempotent(store=store, config=config)
    def handler(event: APIGatewayProxyEventV2, context: Any) -> dict[str, Any]:
        calls.append(event.request_context.request_id)
        return {"statusCode": 200, "body": event.raw_path}

    first = handler(APIGatewayProxyEventV2(raw), None)
    assert handler(APIGatewayProxyEventV2(load_event("apiGatewayProxyV2Event.json")), None) == first
    assert handler(raw, None) == first
    assert calls == [raw["requestContext"]["requestId"]]
    keyer = Keyer("p", "md5", config._key_expr, config._validation_expr)
    assert keyer.key_and_fingerprint(APIGatewayProxyEventV2(raw)) == keyer.key_and_fingerprint(raw)
