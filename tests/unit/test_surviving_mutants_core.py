"""Tests that kill mutants a mutation pass found surviving (issue 17): engine and codec edges."""

from __future__ import annotations

import dataclasses
import decimal
import json
from collections.abc import Generator
from typing import Any

import pytest
from unit_support import START_MS, Clock, make_inv, make_policy

from onceonly.codec import from_fields
from onceonly.config import IdempotencyConfig
from onceonly.engine import Claim, Complete, Execute, Release, Sleep, flow
from onceonly.errors import (
    CorruptRecordError,
    IdempotencySerializationError,
    IdempotencyStoreError,
)
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


# -- engine: a waiter wakes just after the holder's lease ends -------------------------


def test_a_waiter_sleeps_until_one_ms_past_the_holders_deadline() -> None:
    # The deadline is the last instant the claim is held: waking at it would
    # find the claim still live and cost one more claim round trip.
    clock = Clock()
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=60)
    gen = flow(make_policy(config, clock=clock), make_inv())
    assert next(gen) == Claim()
    held = Record(Status.IN_PROGRESS, new_token(), START_MS + 5)
    assert gen.send(Found(held, clock())) == Sleep(6)
    gen.close()


# -- engine: what it logs when the store lets it down ----------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def _run_to_execute() -> Generator[Any, Any, Any]:
    """A flow that took its claim and now runs the function."""
    gen = flow(make_policy(), make_inv(key="tests.fn:k1"))
    assert next(gen) == Claim()
    assert isinstance(gen.send(Acquired()), Execute)
    return gen


def test_a_failed_release_after_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gen = _run_to_execute()
    assert gen.throw(ValueError("boom")) == Release()
    with caplog.at_level("WARNING", logger="onceonly"), pytest.raises(ValueError, match="boom"):
        gen.throw(IdempotencyStoreError("down"))
    assert _warnings(caplog) == [
        "onceonly: tests.fn could not release key tests.fn:k1 after a failure "
        "(IdempotencyStoreError); it is held until its lease ends"
    ]


def test_a_release_refused_after_a_failure_is_logged_as_a_lost_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gen = _run_to_execute()
    assert gen.throw(ValueError("boom")) == Release()
    with caplog.at_level("WARNING", logger="onceonly"), pytest.raises(ValueError, match="boom"):
        gen.send(False)
    assert _warnings(caplog) == [
        "onceonly: tests.fn lost its lease on key tests.fn:k1 before it failed"
    ]


def test_running_unprotected_on_a_store_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gen = flow(make_policy(IdempotencyConfig(on_store_error="run")), make_inv())
    assert next(gen) == Claim()
    with caplog.at_level("WARNING", logger="onceonly"):
        assert gen.throw(IdempotencyStoreError("down")) == Execute(protected=False)
    assert _warnings(caplog) == [
        "onceonly: store failed for tests.fn (IdempotencyStoreError); running without "
        "idempotency because on_store_error='run'"
    ]
    gen.close()


def test_an_outcome_the_store_failed_to_keep_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gen = _run_to_execute()
    assert isinstance(gen.send("done"), Complete)
    with caplog.at_level("WARNING", logger="onceonly"), pytest.raises(StopIteration) as stop:
        gen.throw(IdempotencyStoreError("down"))
    assert stop.value.value == "done"
    assert _warnings(caplog) == [
        "onceonly: tests.fn ran but could not store its outcome for key tests.fn:k1 "
        "(IdempotencyStoreError: down); a retry after the lease will run it again"
    ]


def test_an_outcome_refused_for_a_lost_lease_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    gen = _run_to_execute()
    assert isinstance(gen.send("done"), Complete)
    with caplog.at_level("WARNING", logger="onceonly"), pytest.raises(StopIteration) as stop:
        gen.send(False)
    assert stop.value.value == "done"
    assert _warnings(caplog) == [
        "onceonly: tests.fn finished after losing its lease on key tests.fn:k1; its result "
        "is returned but not stored (another execution owns the key)"
    ]
