"""Keys and results that used to give another request's answer (issue 9, items 8, 9, 10).

Each test drives the real decorator on a MemoryStore (or the key code it calls):
a blank key, a result whose dict keys JSON would change, and base64 that only a
lenient decoder accepts must never key or replay something else.
"""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from typing import Any

import jmespath
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onceonly import (
    IdempotencyConfig,
    IdempotencyKeyError,
    IdempotencySerializationError,
    OnceOnlyWarning,
    idempotent,
    idempotent_function,
    keys,
)
from onceonly.records import encode_outcome
from onceonly.stores import MemoryStore

# -- item 8: a blank selection is no key ------------------------------------------

BLANK_SELECTIONS: list[Any] = [
    "",
    " ",
    "\t\n",
    [],
    {},
    [None, ""],
    ["", "  "],
    {"id": "", "ts": None},
    [[], {}],
]


@pytest.mark.parametrize("selected", BLANK_SELECTIONS, ids=repr)
def test_blank_selection_is_missing(selected: Any) -> None:
    assert keys.is_missing(selected) is True


@pytest.mark.parametrize(
    "selected", [0, False, 0.0, "x", " x ", [0], ["", "x"], {"id": "", "ts": 0}], ids=repr
)
def test_falsy_but_real_selection_is_a_key(selected: Any) -> None:
    assert keys.is_missing(selected) is False


@pytest.mark.parametrize("blank", ["", "   ", [], {}], ids=repr)
def test_blank_key_raises_key_error_when_a_key_is_required(blank: Any) -> None:
    store = MemoryStore()
    config = IdempotencyConfig(event_key_jmespath="body.id", raise_on_no_idempotency_key=True)
    calls: list[str] = []

    @idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        calls.append(event["body"]["customer"])
        return event["body"]["customer"]

    with pytest.raises(IdempotencyKeyError, match="no idempotency key"):
        handler({"body": {"id": blank, "customer": "alice"}}, None)
    assert calls == []
    assert handler.stats.snapshot()["unprotected"] == 1  # type: ignore[attr-defined]


def test_blank_keys_of_two_customers_never_share_a_record() -> None:
    store = MemoryStore()
    config = IdempotencyConfig(event_key_jmespath="[body.id, body.ref]")

    @idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        return str(event["body"]["customer"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = handler({"body": {"id": "", "ref": None, "customer": "alice"}}, None)
        second = handler({"body": {"id": "", "ref": None, "customer": "bob"}}, None)
    assert (first, second) == ("alice", "bob")
    assert [w.category for w in caught] == [OnceOnlyWarning, OnceOnlyWarning]
    assert all("running without idempotency" in str(w.message) for w in caught)


def test_blank_key_material_is_no_key() -> None:
    store = MemoryStore()
    config = IdempotencyConfig(raise_on_no_idempotency_key=True)

    @idempotent_function(store=store, key=lambda order, header: header, config=config)
    def charge(order: str, header: str) -> str:
        return order

    with pytest.raises(IdempotencyKeyError):
        charge("o-1", "")
    assert charge.key_for("o-1", "") is None  # type: ignore[attr-defined]
    assert charge("o-1", "k-1") == "o-1"


# -- item 9: results whose dict keys JSON would change -------------------------------


@pytest.mark.parametrize(
    ("value", "key_type", "path"),
    [
        ({1: "a"}, "int", "$"),
        ({"a": 1, None: "c"}, "NoneType", "$"),
        ({"ok": {"x": [{"y": {2.5: 1}}]}}, "float", "$.<key 0>.<key 0>[0].<key 0>"),
        ([{"a": 1}, {True: 0}], "bool", "$[1]"),
    ],
    ids=["int", "none", "float-deep", "bool-in-list"],
)
def test_encode_outcome_refuses_non_string_dict_keys(value: Any, key_type: str, path: str) -> None:
    with pytest.raises(IdempotencySerializationError) as caught:
        encode_outcome(value)
    message = str(caught.value)
    assert f"a {key_type} key" in message
    assert f"at {path}" in message
    assert "'c'" not in message  # the value is not echoed
    assert ".ok" not in message  # nor the result's own key names: positions only


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1},
        {"t": "10:00", "u": "x,1:2", "v": "{1:2}", "w": ["a,null:b", {"k": "{true:1}"}]},
        {"": {"": ""}},
        [1, "2:3", {"k": [1, 2, {"n": None}]}],
    ],
    ids=["plain", "strings-that-look-like-keys", "empty-keys", "nested"],
)
def test_encode_outcome_keeps_string_keyed_values(value: Any) -> None:
    assert json.loads(encode_outcome(value)[1:]) == value


def test_refused_result_releases_the_claim_so_a_retry_runs() -> None:
    store = MemoryStore()
    results: list[Any] = [{1: "a", None: "c"}, {"1": "a", "null": "c"}]

    @idempotent_function(store=store, data="order")
    def lookup(order: str) -> Any:
        return results.pop(0)

    key = lookup.key_for("o-1")  # type: ignore[attr-defined]
    with pytest.raises(IdempotencySerializationError, match="a int key"):
        lookup("o-1")
    assert store.get(key) is None
    assert lookup("o-1") == {"1": "a", "null": "c"}
    assert lookup("o-1") == {"1": "a", "null": "c"}
    assert results == []


# -- item 10: strict base64 --------------------------------------------------------


def search(expression: str, data: Any) -> Any:
    return keys.select(jmespath.compile(expression), data)


@pytest.mark.parametrize(
    "text",
    [
        "!!!!",
        "????",
        "aGk",  # missing padding
        "aGk=\n",  # trailing newline
        "aG k=",  # whitespace inside
        "aGl=",  # non-zero unused bits: a second spelling of "aGk="
        "-_-_",  # url-safe alphabet
        "aGk=aGk=",  # data after padding
        "é",
    ],
    ids=repr,
)
@pytest.mark.parametrize("fn", ["from_base64", "powertools_base64", "from_base64_gzip"])
def test_invalid_base64_raises_key_error_naming_the_function(fn: str, text: str) -> None:
    with pytest.raises(IdempotencyKeyError) as caught:
        search(f"{fn}(data)", {"data": text})
    message = str(caught.value)
    assert f"{fn}()" in message
    assert "not valid base64" in message
    assert repr(text) not in message


def test_valid_base64_still_decodes() -> None:
    assert search("from_base64(data)", {"data": base64.b64encode(b"hi").decode()}) == "hi"
    packed = base64.b64encode(gzip.compress(b'{"id": 1}')).decode()
    assert search("from_json(from_base64_gzip(data)).id", {"data": packed}) == 1


def test_two_invalid_base64_payloads_never_share_a_key() -> None:
    store = MemoryStore()
    config = IdempotencyConfig(event_key_jmespath="from_base64(data)")

    @idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        return str(event["customer"])

    with pytest.raises(IdempotencyKeyError, match=r"from_base64\(\)"):
        handler({"data": "!!!!", "customer": "alice"}, None)
    with pytest.raises(IdempotencyKeyError, match=r"from_base64\(\)"):
        handler({"data": "????", "customer": "bob"}, None)
    good = base64.b64encode(b"order-1").decode()
    assert handler({"data": good, "customer": "carol"}, None) == "carol"
    assert handler({"data": good, "customer": "dave"}, None) == "carol"


def _all_keys_str(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _all_keys_str(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_keys_str(v) for v in value)
    return True


_any_key = st.one_of(
    st.text(alphabet='0123456789nulltrufase-.:,{}"', max_size=6),
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
)
_mixed_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_any_key, children, max_size=4)
    ),
    max_leaves=20,
)


@given(value=_mixed_values)
def test_encode_outcome_stores_exactly_what_replays_or_refuses(value: Any) -> None:
    if _all_keys_str(value):
        assert json.loads(encode_outcome(value)[1:]) == value
    else:
        with pytest.raises(IdempotencySerializationError, match="key in a dict at"):
            encode_outcome(value)
