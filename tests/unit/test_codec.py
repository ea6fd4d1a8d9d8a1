from __future__ import annotations

import datetime
import decimal
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from unit_support import FALSY_VALUES, json_values

from onceonly import codec
from onceonly.errors import CorruptRecordError, IdempotencySerializationError
from onceonly.records import Record, Status, decode_outcome, encode_outcome, new_token

TOKEN = "0123456789abcdef0123456789abcdef"

# Hex text drawn as bytes (one draw, not one per character): the same values as
# st.text(alphabet="0123456789abcdef", ...) at a fraction of the generation cost.
tokens = st.binary(min_size=16, max_size=16).map(bytes.hex)
deadlines = st.integers(min_value=0, max_value=10**16 - 1)
fingerprints = st.none() | st.builds(
    lambda raw, odd: raw.hex()[odd:],  # 1 to 128 hex digits, odd lengths included
    st.binary(min_size=1, max_size=64),
    st.integers(min_value=0, max_value=1),
)
outcomes = st.one_of(
    st.sampled_from(FALSY_VALUES).map(encode_outcome),
    json_values.map(encode_outcome),
    st.binary(min_size=1),
)

in_progress_records = st.builds(
    Record,
    status=st.just(Status.IN_PROGRESS),
    token=tokens,
    deadline_ms=deadlines,
    fingerprint=fingerprints,
    outcome=st.none(),
)
completed_records = st.builds(
    Record,
    status=st.just(Status.COMPLETED),
    token=tokens,
    deadline_ms=deadlines,
    fingerprint=fingerprints,
    outcome=outcomes,
)
records = in_progress_records | completed_records


# -- round trips -------------------------------------------------------------------


@given(record=records)
def test_encode_then_decode_gives_the_same_record(record: Record) -> None:
    data = codec.encode(record)
    assert data.startswith(codec.HEADER_PREFIX)
    assert codec.decode(data) == record


@given(record=records)
def test_decode_accepts_bytearray_and_memoryview(record: Record) -> None:
    data = codec.encode(record)
    assert codec.decode(bytearray(data)) == record
    assert codec.decode(memoryview(data)) == record


@pytest.mark.parametrize("value", FALSY_VALUES, ids=repr)
def test_falsy_outcome_survives_record_round_trip_with_its_type(value: Any) -> None:
    record = Record(Status.COMPLETED, new_token(), 1, "ab", encode_outcome(value))
    decoded = codec.decode(codec.encode(record))
    assert decoded.outcome is not None
    replayed = decode_outcome(decoded.outcome)
    assert type(replayed) is type(value)
    assert replayed == value


@given(value=json_values)
def test_outcome_envelope_round_trips_json_values(value: Any) -> None:
    replayed = decode_outcome(encode_outcome(value))
    assert replayed == value
    assert type(replayed) is type(value)


def test_encoded_layout_is_the_documented_ascii_header() -> None:
    waiting = Record(Status.IN_PROGRESS, TOKEN, 1234, None)
    assert codec.encode(waiting) == b"o1|P|" + TOKEN.encode() + b"|1234||"
    done = Record(Status.COMPLETED, TOKEN, 99, "beef", b"j0")
    assert codec.encode(done) == b"o1|C|" + TOKEN.encode() + b"|99|beef|j0"


# -- garbage in, CorruptRecordError out ------------------------------------------------


def decode_or_corrupt(data: Any) -> Record | None:
    """Decode, allowing only CorruptRecordError; None when it was raised."""
    try:
        return codec.decode(data)
    except CorruptRecordError:
        return None


@given(data=st.binary())
@example(data=b"")
@example(data=b"o1|")
@example(data=b"o1|P|")
@example(data=b"o2|P|" + TOKEN.encode() + b"|1||")
def test_random_bytes_decode_or_raise_corrupt_record_error(data: bytes) -> None:
    record = decode_or_corrupt(data)
    if record is not None:
        assert data.startswith(codec.HEADER_PREFIX)
        assert isinstance(record, Record)


@given(tail=st.binary())
def test_random_bytes_after_a_valid_prefix_decode_or_raise_corrupt_record_error(
    tail: bytes,
) -> None:
    for head in (b"o1|", b"o1|C|", b"o1|P|" + TOKEN.encode() + b"|", b"o1|C|" + TOKEN.encode()):
        record = decode_or_corrupt(head + tail)
        if record is not None:
            assert codec.decode(codec.encode(record)) == record


@pytest.mark.parametrize(
    "value",
    [
        "o1|P|0123456789abcdef0123456789abcdef|1||",
        12,
        None,
        ["o1"],
        Record(Status.IN_PROGRESS, TOKEN, 1),
    ],
    ids=["str", "int", "None", "list", "Record"],
)
def test_non_bytes_input_raises_corrupt_record_error(value: Any) -> None:
    with pytest.raises(CorruptRecordError, match="not bytes"):
        codec.decode(value)


@pytest.mark.parametrize(
    "data",
    [
        b"o1|P|" + TOKEN.encode() + b"|1||j0",  # IN_PROGRESS with an outcome
        b"o1|C|" + TOKEN.encode() + b"|1||",  # COMPLETED without one
        b"o1|X|" + TOKEN.encode() + b"|1||",  # unknown status
        b"o1|P|" + TOKEN.upper().encode() + b"|1||",  # token not lowercase
        b"o1|P|" + TOKEN[:-1].encode() + b"|1||",  # token too short
        b"o1|P|" + TOKEN.encode() + b"|-1||",  # negative deadline
        b"o1|P|" + TOKEN.encode() + b"||",  # no deadline
        b"o1|P|" + TOKEN.encode() + b"|12345678901234567||",  # 17-digit deadline
        b"o1|P|" + TOKEN.encode() + b"|1|XYZ|",  # fingerprint not hex
        b"o1|P|" + TOKEN.encode() + b"|1|" + b"a" * 129 + b"|",  # fingerprint too long
        b"O1|P|" + TOKEN.encode() + b"|1||",
        b"\x80\x04\x95",  # a pickle
        b'{"status": "COMPLETED"}',  # Powertools-style JSON
    ],
)
def test_malformed_records_raise_corrupt_record_error(data: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        codec.decode(data)


@given(record=records)
def test_every_truncation_decodes_to_a_prefix_or_raises(record: Record) -> None:
    data = codec.encode(record)
    pipe = -1
    for _ in range(5):  # the header ends with its 5th "|"
        pipe = data.index(b"|", pipe + 1)
    header_len = pipe + 1
    for end in range(len(data)):
        truncated = data[:end]
        if record.status is Status.COMPLETED and end > header_len:
            assert record.outcome is not None
            assert codec.decode(truncated) == Record(
                record.status,
                record.token,
                record.deadline_ms,
                record.fingerprint,
                record.outcome[: end - header_len],
            )
        else:
            with pytest.raises(CorruptRecordError):
                codec.decode(truncated)


@given(record=records, data=st.data())
def test_mutated_encoding_decodes_or_raises_corrupt_record_error(
    record: Record, data: st.DataObject
) -> None:
    encoded = bytearray(codec.encode(record))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    decoded = decode_or_corrupt(bytes(encoded))
    if decoded is not None:
        assert codec.decode(codec.encode(decoded)) == decoded


# -- encode refuses records that break the format -------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        Record(Status.COMPLETED, TOKEN, 1, None, None),
        Record(Status.IN_PROGRESS, TOKEN, 1, None, b"j1"),
        Record(Status.IN_PROGRESS, "not-a-token", 1),
        Record(Status.IN_PROGRESS, TOKEN.upper(), 1),
        Record(Status.IN_PROGRESS, TOKEN, -5),
        Record(Status.IN_PROGRESS, TOKEN, 10**16),
        Record(Status.IN_PROGRESS, TOKEN, 1, "not|hex"),
    ],
)
def test_encode_rejects_records_outside_the_format(record: Record) -> None:
    with pytest.raises(ValueError, match="record"):
        codec.encode(record)


# -- the outcome envelope ----------------------------------------------------------


@given(data=st.binary())
@example(data=b"")
@example(data=b"j")
@example(data=b"j{")
@example(data=b"j\xff\xfe")
@example(data=b"x1")
def test_decode_outcome_of_random_bytes_returns_or_raises_corrupt_record_error(
    data: bytes,
) -> None:
    try:
        decode_outcome(data)
    except CorruptRecordError:
        return
    assert data[:1] in (b"j", b"e")  # the plain and the Decimal-carrying envelope


@pytest.mark.parametrize(
    "data",
    [b"", b"j", b"j{", b"j\xff\xfe", b"x1", b"J1", b"j[1,]", b"j" + b"[" * 100_000, None, "j1"],
    ids=[
        "empty",
        "tag-only",
        "open-brace",
        "bad-utf8",
        "bad-tag",
        "upper-tag",
        "bad-json",
        "too-deep",
        "None",
        "str",
    ],
)
def test_decode_outcome_of_garbage_raises_corrupt_record_error(data: Any) -> None:
    with pytest.raises(CorruptRecordError, match="delete the key"):
        decode_outcome(data)


def _deep_list() -> list[Any]:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    return deep


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        b"bytes",
        datetime.date(2024, 1, 1),
        {"nested": [object()]},
        "lone surrogate \udc80",
        _deep_list(),
        _circular(),
    ],
    ids=["object", "set", "bytes", "date", "nested", "surrogate", "deep", "loop"],
)
def test_encode_outcome_of_unserializable_value_raises_serialization_error(value: Any) -> None:
    with pytest.raises(IdempotencySerializationError, match="output_serializer"):
        encode_outcome(value)


def _same(a: Any, b: Any) -> bool:
    # Equality that counts nan as equal to nan, and tells floats from Decimals.
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)  # exact, and NaN equals NaN
    return bool(a == b)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        {"rate": float("nan"), "cap": [float("inf"), 1.5, decimal.Decimal("NaN")]},
        {"$f": "nan", "$$d": float("-inf"), "x": {"$f": float("inf")}},
    ],
    ids=["nan", "inf", "-inf", "nested-with-decimal", "dollar-keys"],
)
def test_non_finite_floats_replay_as_the_same_floats(value: Any) -> None:
    # Powertools stores them (as JSON's non-standard NaN); a refusal after the
    # function ran would release the key and run it again on every retry.
    data = encode_outcome(value)
    assert data[:1] == b"e"
    assert _same(decode_outcome(data), value)


@pytest.mark.parametrize("text", ['{"$f":"NaN"}', '{"$f":1}', '{"$f":"nan","x":1}'])
def test_a_malformed_float_extension_is_corrupt(text: str) -> None:
    with pytest.raises(CorruptRecordError):
        decode_outcome(b"e" + text.encode())
