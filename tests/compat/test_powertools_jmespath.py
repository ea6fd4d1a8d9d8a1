"""Custom JMESPath functions (issue 11, item 3): ``IdempotencyConfig(jmespath_options=...)``.

As in Powertools, ``{"custom_functions": MyFunctions()}``; onceonly's decode
functions stay available beside them, and the user's win where names clash.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from jmespath import functions

from onceonly import IdempotencyConfig, IdempotencyConfigError, IdempotencyKeyReuseError, idempotent
from onceonly.keys import Keyer
from onceonly.stores import MemoryStore


class ShopFunctions(functions.Functions):
    """A user's functions: one reads state of the instance."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @functions.signature({"types": ["string"]})
    def _func_order_ref(self, value: str) -> str:
        return f"{self.prefix}{value.split('#', 1)[0]}"

    @functions.signature({"types": ["number"]})
    def _func_cents(self, value: float) -> int:
        return round(value * 100)


class LenientJson(functions.Functions):
    """Overrides onceonly's from_json: an empty body reads as {}."""

    @functions.signature({"types": ["string"]})
    def _func_from_json(self, value: str) -> Any:
        return json.loads(value) if value else {"empty": True}


def keyer(config: IdempotencyConfig) -> Keyer:
    return Keyer("p", "md5", config._key_expr, config._validation_expr)


def test_a_custom_function_keys_and_validates_through_the_decorator() -> None:
    config = IdempotencyConfig(
        event_key_jmespath="order_ref(from_json(body).ref)",
        payload_validation_jmespath="cents(from_json(body).amount)",
        jmespath_options={"custom_functions": ShopFunctions("shop-")},
    )
    store = MemoryStore()
    calls: list[Any] = []

    @idempotent(store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> int:
        calls.append(event)
        return len(calls)

    assert handler({"body": json.dumps({"ref": "o-1#a", "amount": 1.5})}, None) == 1
    # Another suffix after '#': the custom function maps it to the same key.
    assert handler({"body": json.dumps({"ref": "o-1#b", "amount": 1.5})}, None) == 1
    with pytest.raises(IdempotencyKeyReuseError):
        handler({"body": json.dumps({"ref": "o-1#c", "amount": 1.51})}, None)
    assert len(calls) == 1
    key, fingerprint = keyer(config).key_and_fingerprint({"body": '{"ref": "o-1", "amount": 1}'})
    plain = Keyer("p", "md5", None, None)
    assert key == plain.key_and_fingerprint("shop-o-1")[0]
    assert fingerprint is not None


def test_onceonly_decode_functions_stay_available() -> None:
    config = IdempotencyConfig(
        event_key_jmespath="order_ref(powertools_json(from_base64(data)).ref)",
        jmespath_options={"custom_functions": ShopFunctions("s-")},
    )
    data = base64.b64encode(b'{"ref": "o-9#x"}').decode()
    key, _ = keyer(config).key_and_fingerprint({"data": data})
    assert key == Keyer("p", "md5", None, None).key_and_fingerprint("s-o-9")[0]


def test_the_users_function_overrides_ours_where_names_clash() -> None:
    ours = IdempotencyConfig(event_key_jmespath="from_json(body)")
    theirs = IdempotencyConfig(
        event_key_jmespath="from_json(body)",
        jmespath_options={"custom_functions": LenientJson()},
    )
    assert keyer(ours).key_and_fingerprint({"body": '{"id": 1}'}) == keyer(
        theirs
    ).key_and_fingerprint({"body": '{"id": 1}'})
    key, _ = keyer(theirs).key_and_fingerprint({"body": ""})
    assert key == Keyer("p", "md5", None, None).key_and_fingerprint({"empty": True})[0]
    # The others of ours are still there beside the override.
    both = IdempotencyConfig(
        event_key_jmespath="from_json(from_base64(data))",
        jmespath_options={"custom_functions": LenientJson()},
    )
    key, _ = keyer(both).key_and_fingerprint({"data": base64.b64encode(b"[1]").decode()})
    assert key == Keyer("p", "md5", None, None).key_and_fingerprint([1])[0]


def test_config_with_custom_functions_stays_frozen_and_hashable() -> None:
    custom = ShopFunctions("s-")
    one = IdempotencyConfig(event_key_jmespath="id", jmespath_options={"custom_functions": custom})
    two = IdempotencyConfig(event_key_jmespath="id", jmespath_options={"custom_functions": custom})
    assert one == two
    assert hash(one) == hash(two)
    assert one != IdempotencyConfig(event_key_jmespath="id")
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.jmespath_options = None  # type: ignore[misc]
    again = dataclasses.replace(one, event_key_jmespath="order_ref(id)")
    assert (
        keyer(again).key_and_fingerprint({"id": "o-1#z"})[0]
        == Keyer("p", "md5", None, None).key_and_fingerprint("s-o-1")[0]
    )


@pytest.mark.parametrize(
    "bad",
    [
        "custom",
        ["custom_functions"],
        {"custom_functions": ShopFunctions},  # the class, not an instance
        {"custom_functions": object()},
        {"custom_functions": None},
        {"custom_functions": LenientJson(), "dict_cls": dict},
        {"functions": LenientJson()},
    ],
    ids=["str", "list", "class", "object", "None", "extra-option", "other-name"],
)
def test_bad_jmespath_options_are_refused_at_construction(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="jmespath_options"):
        IdempotencyConfig(jmespath_options=bad)


def test_empty_jmespath_options_mean_ours_alone() -> None:
    config = IdempotencyConfig(event_key_jmespath="from_json(body).id", jmespath_options={})
    assert keyer(config).key_and_fingerprint({"body": '{"id": 3}'}) == keyer(
        IdempotencyConfig(event_key_jmespath="from_json(body).id")
    ).key_and_fingerprint({"body": '{"id": 3}'})
