"""Tests that kill mutants a mutation pass found surviving (issue 17): engine and codec edges."""

from __future__ import annotations

import dataclasses
import decimal
import json

import pytest
from unit_support import START_MS, Clock, make_inv, make_policy

from onceonly.codec import from_fields
from onceonly.config import IdempotencyConfig
from onceonly.engine import Claim, Complete, Execute, Release, Sleep, flow
from onceonly.errors import CorruptRecordError, IdempotencySerializationError
from onceonly.records import (
    Acquired,
    Found,
    Record,
    Status,
    encode_outcome,
    new_token,
    one_shot_encoder,
)

# -- the wait backoff is capped at one second ------------------------------------------


def test_wait_backoff_grows_to_one_second_and_stays_there() -> None:
    clock = Clock()
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=600)
    policy, inv = make_policy(config, clock=clock), make_inv()
    # A claim held for an hour: neither the lease nor the 10 min budget bounds the first sleeps.
    held = Record(Status.IN_PROGRESS, new_token(), START_MS + 3_600_000)
    gen = flow(policy, inv)
    assert next(gen) == Claim()
    sleeps: list[int] = []
    for _ in range(20):  # 20 ms doubled 19 times would be over 10 million ms without a cap
        step = gen.send(Found(held, clock()))
        assert isinstance(step, Sleep)
        sleeps.append(step.ms)
        clock.advance(step.ms)
        assert gen.send(None) == Claim()
    assert max(sleeps) == 1000
    assert sleeps[:6] == [20, 40, 80, 160, 320, 640]
    assert sleeps[6:] == [1000] * 14
    gen.close()


# -- the outcome size limit, at its edge -----------------------------------------------


@pytest.mark.parametrize("value", ["x" * 100, {"a": [1, 2, 3]}, 0])
def test_an_outcome_of_exactly_the_store_limit_is_stored(value: object) -> None:
    size = len(encode_outcome(value))
    policy = dataclasses.replace(make_policy(), max_outcome_bytes=size)
    gen = flow(policy, make_inv())
    assert next(gen) == Claim()
    assert gen.send(Acquired()) == Execute(protected=True)
    step = gen.send(value)
    assert step == Complete(encode_outcome(value))
    with pytest.raises(StopIteration) as stop:
        gen.send(True)
    assert stop.value.value == value


@pytest.mark.parametrize("value", ["x" * 100, {"a": [1, 2, 3]}, 0])
def test_an_outcome_one_byte_over_the_store_limit_is_refused(value: object) -> None:
    size = len(encode_outcome(value))
    policy = dataclasses.replace(make_policy(), max_outcome_bytes=size - 1)
    gen = flow(policy, make_inv())
    next(gen)
    gen.send(Acquired())
    assert gen.send(value) == Release()
    with pytest.raises(IdempotencySerializationError, match=f"{size} bytes stored"):
        gen.send(True)


# -- a boolean is not an integer deadline ----------------------------------------------


@pytest.mark.parametrize("deadline", [True, False], ids=["true", "false"])
@pytest.mark.parametrize(
    ("status", "outcome"), [("P", None), ("C", b"j1")], ids=["in_progress", "completed"]
)
def test_a_boolean_deadline_field_is_corrupt(
    deadline: bool, status: str, outcome: bytes | None
) -> None:
    token = new_token()
    # The same fields with an integer deadline are a record: only the deadline's type is wrong.
    assert from_fields(status, token, int(deadline), None, outcome).deadline_ms == int(deadline)
    with pytest.raises(CorruptRecordError, match="a deadline that is not an integer"):
        from_fields(status, token, deadline, None, outcome, store="the test store")


@pytest.mark.parametrize(
    ("status", "outcome"), [("P", None), ("C", b"j1")], ids=["in_progress", "completed"]
)
def test_a_negative_deadline_field_is_corrupt_and_zero_is_not(
    status: str, outcome: bytes | None
) -> None:
    token = new_token()
    assert from_fields(status, token, 0, None, outcome).deadline_ms == 0
    with pytest.raises(CorruptRecordError):
        from_fields(status, token, -1, None, outcome, store="the test store")


# -- records: where a non-str dict key sits, and encoders that indent ------------------


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": 1, "b": {2: "x"}}, "$.<key 1>"),
        ({"a": decimal.Decimal("1.5"), "b": {2: "x"}}, "$.<key 1>"),  # the Decimal envelope
        ([0, [1, {None: 0}]], "$[1][1]"),
        ({"a": [{"ok": 1}, {"b": 2, "c": {3.5: 0}}]}, "$.<key 0>[1].<key 1>"),
    ],
)
def test_a_non_str_key_deep_in_a_result_is_refused_with_its_path(value: object, where: str) -> None:
    # The path names positions, never the caller's key names.
    with pytest.raises(IdempotencySerializationError) as caught:
        encode_outcome(value)
    assert f"key in a dict at {where}: JSON keeps only str keys" in str(caught.value)


def test_an_encoder_that_indents_gets_no_one_shot_twin() -> None:
    # The one-shot encoder cannot indent: it must leave such an encoder to json.
    assert one_shot_encoder(json.JSONEncoder(indent=2)) is None
    plain = one_shot_encoder(json.JSONEncoder(separators=(",", ":")))
    assert plain is not None
    assert plain({"a": [1, 2]}) == '{"a":[1,2]}'
