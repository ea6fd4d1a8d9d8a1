from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import gzip
import hashlib
import json
import pathlib
import random
import uuid
from typing import Any

import jmespath
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from unit_support import json_values

from onceonly import keys
from onceonly.errors import IdempotencyConfigError, IdempotencySerializationError

# -- canonical JSON ------------------------------------------------------------


def reordered(value: Any, rnd: random.Random) -> Any:
    """The same data with every dict's insertion order shuffled, recursively."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reordered(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    return value


@given(value=json_values, rnd=st.randoms(use_true_random=False))
def test_canonical_json_is_identical_bytes_under_any_key_order(
    value: Any, rnd: random.Random
) -> None:
    assert keys.canonical_json(reordered(value, rnd)) == keys.canonical_json(value)


@given(
    pairs=st.lists(
        st.tuples(st.text(max_size=6), json_values), max_size=8, unique_by=lambda p: p[0]
    ),
    rnd=st.randoms(use_true_random=False),
)
def test_canonical_json_of_dict_built_in_shuffled_order(
    pairs: list[tuple[str, Any]], rnd: random.Random
) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert keys.canonical_json(dict(shuffled)) == keys.canonical_json(dict(pairs))


@given(value=json_values)
def test_canonical_json_reads_back_as_the_same_data(value: Any) -> None:
    assert json.loads(keys.canonical_json(value)) == value


def test_canonical_json_sorts_keys_without_whitespace_and_keeps_utf8() -> None:
    data = {"b": [1, 2.5, None], "a": {"z": True, "é": "ü"}}
    assert keys.canonical_json(data) == '{"a":{"z":true,"é":"ü"},"b":[1,2.5,null]}'.encode()


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    id: int
    lines: list[Line]
    placed: datetime.date


class Customer(pydantic.BaseModel):
    name: str
    ref: uuid.UUID
    balance: decimal.Decimal


REF = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            Order(id=7, lines=[Line("a-1", 2)], placed=datetime.date(2024, 2, 29)),
            b'{"id":7,"lines":[{"qty":2,"sku":"a-1"}],"placed":"2024-02-29"}',
        ),
        (
            Customer(name="Ann", ref=REF, balance=decimal.Decimal("10.50")),
            b'{"balance":"10.50","name":"Ann","ref":"12345678-1234-5678-1234-567812345678"}',
        ),
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc),
            b'"2024-01-02T03:04:05.000006+00:00"',
        ),
        (datetime.datetime(2024, 1, 2, 3, 4, 5), b'"2024-01-02T03:04:05"'),
        (datetime.date(2024, 1, 2), b'"2024-01-02"'),
        (datetime.time(23, 59, 1), b'"23:59:01"'),
        (REF, b'"12345678-1234-5678-1234-567812345678"'),
        (decimal.Decimal("1.10"), b'"1.10"'),
        (Color.RED, b'"red"'),
        (Color.BLUE, b"2"),
        (pathlib.PurePosixPath("/var/data/x.csv"), b'"/var/data/x.csv"'),
        (b"\x00\xffhi", b'"AP9oaQ=="'),
        (bytearray(b"ab"), b'"YWI="'),
        ({3, 1, 2}, b"[1,2,3]"),
        (frozenset({"b", "a"}), b'["a","b"]'),
        (
            {"when": datetime.date(2020, 5, 1), "tags": {"y", "x"}},
            b'{"tags":["x","y"],"when":"2020-05-01"}',
        ),
    ],
)
def test_canonical_json_of_non_json_types(value: Any, expected: bytes) -> None:
    assert keys.canonical_json(value) == expected


def test_canonical_json_of_a_set_does_not_depend_on_iteration_order() -> None:
    words = [f"w{i}" for i in range(50)]
    forward = set(words)
    backward: set[str] = set()
    for word in reversed(words):
        backward.add(word)
    assert keys.canonical_json(forward) == keys.canonical_json(backward)
    assert keys.canonical_json(forward) == keys.canonical_json(sorted(words))


def test_canonical_json_sorts_a_mixed_set_by_canonical_form() -> None:
    assert keys.canonical_json({None, 1, "1"}) == b'["1",1,null]'


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (object(), "object is not JSON serializable"),
        ([1, {"x": object()}], "object is not JSON serializable"),
        (float("nan"), "Out of range float"),
        ({"amount": float("inf")}, "Out of range float"),
        ({1: "a", "b": 2}, "not supported between instances"),
        ({(1, 2): "tuple key"}, "keys must be str"),
        ("lone surrogate \ud800", "surrogates not allowed"),
    ],
)
def test_canonical_json_of_unserializable_value_raises_helpful_error(
    value: Any, detail: str
) -> None:
    with pytest.raises(IdempotencySerializationError) as info:
        keys.canonical_json(value)
    message = str(info.value)
    assert message.startswith("payload cannot be written as canonical JSON")
    assert detail in message
    assert "key=callable" in message
    assert isinstance(info.value, TypeError)
    assert info.value.__cause__ is not None


def test_canonical_json_of_circular_structure_raises_serialization_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(IdempotencySerializationError, match="Circular reference"):
        keys.canonical_json(loop)


def test_canonical_json_of_too_deep_structure_raises_serialization_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(IdempotencySerializationError, match="canonical JSON"):
        keys.canonical_json(deep)


# -- JMESPath functions ----------------------------------------------------------


def search(expression: str, data: Any) -> Any:
    return jmespath.compile(expression).search(data, options=keys.JMESPATH_OPTIONS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("fn", ["from_json", "powertools_json"])
def test_json_function_parses_an_embedded_json_body(fn: str) -> None:
    event = {"body": json.dumps({"order": {"id": "o-42", "total": 0}})}
    assert search(f"{fn}(body).order.id", event) == "o-42"
    assert search(f"{fn}(body).order.total", event) == 0


@pytest.mark.parametrize(
    ("b64_fn", "json_fn"),
    [("from_base64", "from_json"), ("powertools_base64", "powertools_json")],
)
def test_base64_function_decodes_kinesis_style_data(b64_fn: str, json_fn: str) -> None:
    payload = {"transaction": "t-9", "amount": 12}
    event = {
        "Records": [{"kinesis": {"partitionKey": "p", "data": b64(json.dumps(payload).encode())}}]
    }
    assert search(f"{b64_fn}(Records[0].kinesis.data)", event) == json.dumps(payload)
    assert search(f"{json_fn}({b64_fn}(Records[0].kinesis.data)).transaction", event) == "t-9"


@pytest.mark.parametrize(
    ("gzip_fn", "json_fn"),
    [("from_base64_gzip", "from_json"), ("powertools_base64_gzip", "powertools_json")],
)
def test_base64_gzip_function_decodes_cloudwatch_logs_style_data(
    gzip_fn: str, json_fn: str
) -> None:
    logs = {"logGroup": "/aws/lambda/fn", "logEvents": [{"id": "e1", "message": "héllo"}]}
    event = {"awslogs": {"data": b64(gzip.compress(json.dumps(logs).encode()))}}
    assert search(f"{json_fn}({gzip_fn}(awslogs.data)).logGroup", event) == "/aws/lambda/fn"
    assert search(f"{json_fn}({gzip_fn}(awslogs.data)).logEvents[0].message", event) == "héllo"


def test_select_without_expression_returns_the_whole_payload() -> None:
    payload = {"a": 1}
    assert keys.select(None, payload) is payload


@pytest.mark.parametrize(
    ("expression", "payload"),
    [
        ("from_json(body)", {"body": "{not json"}),
        ("from_base64(data)", {"data": b64(b"\xff\xfe\xfd")}),
        ("from_base64_gzip(data)", {"data": b64(b"plain, not gzip")}),
        ("powertools_base64_gzip(data)", {"data": b64(gzip.compress(b"abc"))[:-8]}),
    ],
)
def test_select_turns_decode_failures_into_serialization_error(
    expression: str, payload: Any
) -> None:
    with pytest.raises(IdempotencySerializationError, match="could not decode the payload"):
        keys.select(jmespath.compile(expression), payload)


# -- missing keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    "selected", [None, [], {}, [None, None], {"id": None, "ts": None}, (None,), "", " ", [""]]
)
def test_is_missing_true_for_nothing_to_key_on(selected: Any) -> None:
    assert keys.is_missing(selected) is True


@pytest.mark.parametrize(
    "selected", [0, False, 0.0, "id-1", [None, "x"], {"id": None, "ts": 0}, [0]]
)
def test_is_missing_false_for_any_real_value(selected: Any) -> None:
    assert keys.is_missing(selected) is False


def test_is_missing_on_multi_select_results() -> None:
    expr = jmespath.compile("[id, detail.ts]")
    assert keys.is_missing(expr.search({"other": 1})) is True
    assert keys.is_missing(expr.search({"detail": {"ts": 5}})) is False
    hash_expr = jmespath.compile("{id: id, ts: detail.ts}")
    assert keys.is_missing(hash_expr.search({"other": 1})) is True
    assert keys.is_missing(hash_expr.search({"id": 0})) is False


# -- Keyer -----------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_key_is_prefix_colon_hexdigest_of_canonical_json() -> None:
    keyer = keys.Keyer("shop.handler", "sha256", None, None)
    key, fingerprint = keyer.key_and_fingerprint({"b": 2, "a": 1})
    assert key == "shop.handler:" + sha256_hex(b'{"a":1,"b":2}')
    assert fingerprint is None


@pytest.mark.parametrize(
    ("hash_function", "length"), [("md5", 32), ("sha1", 40), ("sha256", 64), ("sha512", 128)]
)
def test_hash_function_sets_digest_length(hash_function: str, length: int) -> None:
    key, _ = keys.Keyer("p", hash_function, None, None).key_and_fingerprint({"id": 1})
    assert key is not None
    prefix, digest = key.split(":")
    assert prefix == "p"
    assert len(digest) == length
    assert digest == hashlib.new(hash_function, b'{"id":1}').hexdigest()


def test_different_hash_functions_give_different_keys() -> None:
    md5_key, _ = keys.Keyer("p", "md5", None, None).key_and_fingerprint("x")
    sha_key, _ = keys.Keyer("p", "sha256", None, None).key_and_fingerprint("x")
    assert md5_key != sha_key


def test_hasher_rejects_unknown_algorithm() -> None:
    with pytest.raises(IdempotencyConfigError, match="not-a-hash"):
        keys.hasher("not-a-hash")


@given(value=json_values, rnd=st.randoms(use_true_random=False))
def test_same_payload_gives_same_key(value: Any, rnd: random.Random) -> None:
    keyer = keys.Keyer("p", "sha256", None, None)
    assert keyer.key_and_fingerprint(reordered(value, rnd)) == keyer.key_and_fingerprint(value)


def test_different_payload_gives_different_key() -> None:
    keyer = keys.Keyer("p", "sha256", None, None)
    first, _ = keyer.key_and_fingerprint({"id": 1})
    second, _ = keyer.key_and_fingerprint({"id": 2})
    third, _ = keyer.key_and_fingerprint({"id": "1"})
    assert len({first, second, third}) == 3


def test_key_prefix_separates_functions() -> None:
    one, _ = keys.Keyer("mod.a", "sha256", None, None).key_and_fingerprint({"id": 1})
    two, _ = keys.Keyer("mod.b", "sha256", None, None).key_and_fingerprint({"id": 1})
    assert one == "mod.a:" + sha256_hex(b'{"id":1}')
    assert two == "mod.b:" + sha256_hex(b'{"id":1}')


def test_key_expression_selects_the_keyed_part() -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("detail.id"), None)
    key1, _ = keyer.key_and_fingerprint({"detail": {"id": "e-1"}, "time": "10:00"})
    key2, _ = keyer.key_and_fingerprint({"detail": {"id": "e-1"}, "time": "10:05"})
    key3, _ = keyer.key_and_fingerprint({"detail": {"id": "e-2"}, "time": "10:00"})
    assert key1 == key2 == "p:" + sha256_hex(b'"e-1"')
    assert key3 == "p:" + sha256_hex(b'"e-2"')


@pytest.mark.parametrize("payload", [{"detail": {}}, {"detail": {"id": None}}, {}])
def test_missing_key_gives_none_key_and_none_fingerprint(payload: Any) -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("detail.id"), jmespath.compile("detail"))
    assert keyer.key_and_fingerprint(payload) == (None, None)


@pytest.mark.parametrize("falsy", [0, False, 0.0])
def test_falsy_key_values_are_keys(falsy: Any) -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("id"), None)
    key, _ = keyer.key_and_fingerprint({"id": falsy})
    assert key == "p:" + sha256_hex(keys.canonical_json(falsy))


def test_key_material_replaces_the_key_expression() -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("id"), None)
    key, fingerprint = keyer.key_and_fingerprint({"id": 1}, key_material="header-key-1")
    assert key == "p:" + sha256_hex(b'"header-key-1"')
    assert fingerprint is None
    assert keyer.key_and_fingerprint({"id": 1}, key_material=None) == (None, None)


def test_fingerprint_is_none_without_validation_expression() -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("id"), None)
    assert keyer.key_and_fingerprint({"id": 1, "amount": 5})[1] is None


def test_fingerprint_changes_with_the_validated_part_only() -> None:
    keyer = keys.Keyer("p", "sha256", jmespath.compile("id"), jmespath.compile("amount"))
    key_a, fp_a = keyer.key_and_fingerprint({"id": 1, "amount": 5, "note": "x"})
    key_b, fp_b = keyer.key_and_fingerprint({"id": 1, "amount": 5, "note": "y"})
    key_c, fp_c = keyer.key_and_fingerprint({"id": 1, "amount": 6, "note": "x"})
    assert key_a == key_b == key_c
    assert fp_a == fp_b == sha256_hex(b"5")
    assert fp_c == sha256_hex(b"6")


def test_fingerprint_uses_the_configured_hash_function() -> None:
    keyer = keys.Keyer("p", "md5", None, jmespath.compile("[method, path]"))
    _, fingerprint = keyer.key_and_fingerprint({"method": "POST", "path": "/pay"})
    assert fingerprint == hashlib.md5(b'["POST","/pay"]').hexdigest()


def test_dataclass_and_pydantic_payloads_are_selected_as_plain_data() -> None:
    order = Order(id=3, lines=[Line("s", 1)], placed=datetime.date(2024, 1, 1))
    customer = Customer(name="Bo", ref=REF, balance=decimal.Decimal("0"))
    by_id = keys.Keyer("p", "sha256", jmespath.compile("id"), jmespath.compile("lines[0].sku"))
    assert by_id.key_and_fingerprint(order) == ("p:" + sha256_hex(b"3"), sha256_hex(b'"s"'))
    by_ref = keys.Keyer("p", "sha256", jmespath.compile("ref"), None)
    assert by_ref.key_and_fingerprint(customer) == (
        "p:" + sha256_hex(b'"12345678-1234-5678-1234-567812345678"'),
        None,
    )
    whole = keys.Keyer("p", "sha256", None, None)
    assert whole.key_and_fingerprint(order)[0] == "p:" + sha256_hex(keys.canonical_json(order))


def test_json_native_passes_plain_values_and_classes_through_unchanged() -> None:
    # Only an instance with a model_dump is dumped: a list or string has none,
    # and a pydantic model class has one that is not bound to any instance.
    items = [1, "two"]
    assert keys.json_native(items) is items
    assert keys.json_native("order-7") == "order-7"
    assert keys.json_native(Customer) is Customer
    whole = keys.Keyer("p", "sha256", None, None)
    assert whole.key_and_fingerprint(items)[0] == "p:" + sha256_hex(b'[1,"two"]')


def test_unserializable_payload_raises_from_keyer() -> None:
    keyer = keys.Keyer("p", "sha256", None, None)
    with pytest.raises(IdempotencySerializationError):
        keyer.key_and_fingerprint({"handle": object()})
