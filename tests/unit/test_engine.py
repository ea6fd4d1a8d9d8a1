from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from unit_support import FALSY_VALUES, START_MS, Clock, make_inv, make_policy

from onceonly.cache import LocalCache
from onceonly.config import IdempotencyConfig
from onceonly.engine import (
    Claim,
    Complete,
    Execute,
    InProgress,
    Mismatch,
    Release,
    Replay,
    Run,
    Sleep,
    decide,
    flow,
)
from onceonly.errors import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyKeyReuseError,
    IdempotencySerializationError,
    IdempotencyStoreError,
)
from onceonly.metrics import Event, Stats
from onceonly.records import Acquired, Found, Record, Status, encode_outcome, new_token
from onceonly.serializers import CustomSerializer, DataclassSerializer

Flow = Generator[Any, Any, Any]


def completed(value: Any, *, fingerprint: str | None = None, deadline_ms: int = 0) -> Record:
    return Record(
        Status.COMPLETED,
        new_token(),
        deadline_ms or START_MS + 3_600_000,
        fingerprint,
        encode_outcome(value),
    )


def in_progress(deadline_ms: int, *, fingerprint: str | None = None) -> Record:
    return Record(Status.IN_PROGRESS, new_token(), deadline_ms, fingerprint)


def finish(gen: Flow, reply: Any) -> Any:
    """Send the last reply; the flow must return. Returns its value."""
    with pytest.raises(StopIteration) as stop:
        gen.send(reply)
    return stop.value.value


def counts(stats: Stats) -> dict[str, int]:
    """The non-zero counters."""
    return {name: n for name, n in stats.snapshot().items() if n}


# -- decide ------------------------------------------------------------------------


@pytest.mark.parametrize("takeover", [False, True])
def test_decide_acquired_runs_and_carries_takeover(takeover: bool) -> None:
    assert decide(Acquired(takeover=takeover), None) == Run(takeover=takeover)
    assert decide(Acquired(takeover=takeover), "ab") == Run(takeover=takeover)


@pytest.mark.parametrize(
    ("stored", "caller"), [("ab", "ab"), ("ab", None), (None, None)], ids=["match", "off", "none"]
)
def test_decide_completed_with_matching_or_absent_fingerprint_replays(
    stored: str | None, caller: str | None
) -> None:
    record = completed(1, fingerprint=stored)
    assert decide(Found(record, START_MS), caller) == Replay(record)


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.IN_PROGRESS])
def test_decide_different_fingerprint_is_a_mismatch(status: Status) -> None:
    outcome = encode_outcome(1) if status is Status.COMPLETED else None
    record = Record(status, new_token(), START_MS + 5000, "ab", outcome)
    assert decide(Found(record, START_MS), "cd") == Mismatch(record)


def test_decide_record_without_fingerprint_is_not_a_mismatch() -> None:
    # Written before payload validation was turned on: nothing to compare.
    record = completed(1, fingerprint=None)
    assert decide(Found(record, START_MS), "cd") == Replay(record)


@pytest.mark.parametrize(
    ("deadline_ms", "now_ms", "left"),
    [(START_MS + 1500, START_MS, 1500), (START_MS, START_MS, 0), (START_MS - 10, START_MS, 0)],
)
def test_decide_in_progress_reports_lease_time_left(
    deadline_ms: int, now_ms: int, left: int
) -> None:
    record = in_progress(deadline_ms, fingerprint="ab")
    assert decide(Found(record, now_ms), "ab") == InProgress(retry_after_ms=left)
    assert decide(Found(record, now_ms), None) == InProgress(retry_after_ms=left)


# -- a fresh run ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"order": 1, "items": [1, 2]}, *FALSY_VALUES], ids=repr)
def test_fresh_run_claims_executes_completes_and_returns_the_value(value: Any) -> None:
    policy, inv = make_policy(), make_inv()
    gen = flow(policy, inv)
    assert next(gen) == Claim()
    assert gen.send(Acquired()) == Execute(protected=True, heartbeat_ms=None)
    assert gen.send(value) == Complete(encode_outcome(value))
    result = finish(gen, True)
    assert result == value
    assert type(result) is type(value)
    assert counts(policy.stats) == {"executed": 1}


def test_fresh_run_returns_the_very_object_the_function_returned() -> None:
    policy, inv = make_policy(), make_inv()
    value = {"id": 3}
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    gen.send(value)
    assert finish(gen, True) is value


def test_takeover_of_an_orphan_is_counted() -> None:
    policy, inv = make_policy(), make_inv()
    gen = flow(policy, inv)
    next(gen)
    assert gen.send(Acquired(takeover=True)) == Execute(protected=True)
    gen.send("ok")
    assert finish(gen, True) == "ok"
    assert counts(policy.stats) == {"executed": 1, "takeover": 1}


# -- the function fails ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("released", "expected"),
    [(True, {"released": 1}), (False, {"released": 1, "lease_lost": 1})],
)
def test_function_error_releases_then_reraises_the_same_exception(
    released: bool, expected: dict[str, int]
) -> None:
    policy, inv = make_policy(), make_inv()
    error = ValueError("boom")
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    assert gen.throw(error) == Release()
    with pytest.raises(ValueError, match="boom") as info:
        gen.send(released)
    assert info.value is error
    assert counts(policy.stats) == expected


def test_function_error_is_reraised_when_release_fails_in_the_store() -> None:
    policy, inv = make_policy(), make_inv()
    error = KeyError("missing")
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    assert gen.throw(error) == Release()
    with pytest.raises(KeyError) as info:
        gen.throw(IdempotencyStoreError("store down"))
    assert info.value is error
    assert counts(policy.stats) == {"released": 1, "store_error": 1}


def test_keyboard_interrupt_in_the_function_also_releases() -> None:
    policy, inv = make_policy(), make_inv()
    interrupt = KeyboardInterrupt()
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    assert gen.throw(interrupt) == Release()
    with pytest.raises(KeyboardInterrupt) as info:
        gen.send(True)
    assert info.value is interrupt


# -- replay, mismatch, in progress -------------------------------------------------


def test_replay_returns_stored_value_through_response_hook() -> None:
    seen: list[tuple[Any, Record]] = []

    def hook(value: Any, record: Record) -> Any:
        seen.append((value, record))
        return {"replayed": value}

    policy = make_policy(IdempotencyConfig(response_hook=hook))
    record = completed([1, 2])
    gen = flow(policy, make_inv())
    assert next(gen) == Claim()
    assert finish(gen, Found(record, START_MS)) == {"replayed": [1, 2]}
    assert len(seen) == 1
    assert seen[0][0] == [1, 2]
    assert seen[0][1] is record
    assert counts(policy.stats) == {"replayed": 1}


@pytest.mark.parametrize("value", FALSY_VALUES, ids=repr)
def test_replay_keeps_falsy_values(value: Any) -> None:
    gen = flow(make_policy(), make_inv())
    next(gen)
    result = finish(gen, Found(completed(value), START_MS))
    assert result == value
    assert type(result) is type(value)


@dataclasses.dataclass
class Receipt:
    order_id: str
    total: int


def test_replay_rebuilds_through_the_serializer() -> None:
    policy = make_policy(serializer=DataclassSerializer(Receipt))
    gen = flow(policy, make_inv())
    next(gen)
    stored = completed({"order_id": "o-1", "total": 0})
    assert finish(gen, Found(stored, START_MS)) == Receipt("o-1", 0)


def test_replay_of_an_outcome_the_serializer_cannot_rebuild_is_corrupt() -> None:
    policy = make_policy(serializer=DataclassSerializer(Receipt))
    gen = flow(policy, make_inv())
    next(gen)
    with pytest.raises(CorruptRecordError, match="cannot be rebuilt") as info:
        gen.send(Found(completed({"unexpected": 1}), START_MS))
    # The serializer names the misfit itself and chains nothing that quotes stored data.
    assert isinstance(info.value.__cause__, CorruptRecordError)
    assert "unexpected field unexpected" in str(info.value)
    assert info.value.__cause__.__cause__ is None


def test_replay_of_a_garbage_outcome_is_corrupt_and_not_cached() -> None:
    cache = LocalCache(4)
    policy, inv = make_policy(cache=cache), make_inv()
    garbage = Record(Status.COMPLETED, new_token(), START_MS + 10_000, None, b"not an envelope")
    gen = flow(policy, inv)
    next(gen)
    with pytest.raises(CorruptRecordError):
        gen.send(Found(garbage, START_MS))
    # Once the key is purged in the store, the next call must reach the store again.
    assert len(cache) == 0
    assert next(flow(policy, inv)) == Claim()


def test_different_fingerprint_raises_key_reuse_error() -> None:
    policy = make_policy()
    gen = flow(policy, make_inv(fingerprint="cd"))
    next(gen)
    with pytest.raises(IdempotencyKeyReuseError, match="different payload"):
        gen.send(Found(completed(1, fingerprint="ab"), START_MS))
    assert counts(policy.stats) == {"key_reuse": 1}


def test_in_progress_with_raise_policy_raises_with_retry_after() -> None:
    policy, inv = make_policy(), make_inv()
    gen = flow(policy, inv)
    next(gen)
    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        gen.send(Found(in_progress(START_MS + 1500), START_MS))
    assert info.value.retry_after_ms == 1500
    assert info.value.key == inv.key
    assert counts(policy.stats) == {"in_progress": 1}


def test_in_progress_past_its_lease_reports_zero_retry_after() -> None:
    gen = flow(make_policy(), make_inv())
    next(gen)
    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        gen.send(Found(in_progress(START_MS - 5), START_MS))
    assert info.value.retry_after_ms == 0


# -- waiting for another execution ----------------------------------------------------


def wait_policy(timeout_seconds: float, clock: Clock) -> Any:
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=timeout_seconds)
    return make_policy(config, clock=clock)


def test_wait_sleeps_within_the_lease_then_takes_over() -> None:
    clock = Clock()
    policy, inv = wait_policy(30, clock), make_inv()
    deadline = START_MS + 3000
    gen = flow(policy, inv)
    step = next(gen)
    sleeps: list[int] = []
    while clock() < deadline:
        assert step == Claim()
        step = gen.send(Found(in_progress(deadline), clock()))
        assert isinstance(step, Sleep)
        assert 1 <= step.ms <= deadline - clock() + 1
        sleeps.append(step.ms)
        clock.advance(step.ms)
        step = gen.send(None)
    assert step == Claim()
    assert gen.send(Acquired(takeover=True)) == Execute(protected=True)
    gen.send("mine")
    assert finish(gen, True) == "mine"
    assert sum(sleeps) == clock() - START_MS
    assert clock() - deadline in (0, 1)  # woke at the lease's end, not a backoff step later
    assert sleeps == sorted(sleeps[:-1]) + sleeps[-1:]  # backoff grows until the last sleep
    assert counts(policy.stats) == {"waited": len(sleeps), "takeover": 1, "executed": 1}


def test_wait_replays_once_the_other_execution_completes() -> None:
    clock = Clock()
    policy = wait_policy(30, clock)
    gen = flow(policy, make_inv())
    next(gen)
    step = gen.send(Found(in_progress(START_MS + 60_000), clock()))
    assert isinstance(step, Sleep)
    clock.advance(step.ms)
    assert gen.send(None) == Claim()
    assert finish(gen, Found(completed({"done": True}), clock())) == {"done": True}
    assert counts(policy.stats) == {"waited": 1, "replayed": 1}


def test_wait_gives_up_after_the_wait_budget() -> None:
    clock = Clock()
    policy, inv = wait_policy(1, clock), make_inv()
    deadline = START_MS + 60_000
    gen = flow(policy, inv)
    next(gen)
    sleeps: list[int] = []

    def answer_in_progress_forever() -> None:
        while True:
            step = gen.send(Found(in_progress(deadline), clock()))
            assert isinstance(step, Sleep)
            assert 1 <= step.ms <= START_MS + 1000 - clock()
            sleeps.append(step.ms)
            clock.advance(step.ms)
            assert gen.send(None) == Claim()

    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        answer_in_progress_forever()
    assert sum(sleeps) == 1000
    assert info.value.retry_after_ms == deadline - clock()
    assert counts(policy.stats) == {"waited": len(sleeps), "in_progress": 1}


@given(
    leases=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=40),
    timeout_ms=st.integers(min_value=1, max_value=8000),
    skew_ms=st.integers(min_value=-100_000, max_value=100_000),
)
@example(leases=[5000] * 40, timeout_ms=1001, skew_ms=0)  # 1.001 s is 1000.999... ms as a float
@example(leases=[0] * 40, timeout_ms=4350, skew_ms=-7)
def test_wait_sleeps_never_exceed_lease_left_or_wait_budget(
    leases: list[int], timeout_ms: int, skew_ms: int
) -> None:
    clock = Clock()
    policy = wait_policy(timeout_ms / 1000, clock)
    gen = flow(policy, make_inv())
    assert next(gen) == Claim()
    budget_end = START_MS + timeout_ms
    for left in leases:
        store_now = clock() + skew_ms  # the store's clock need not agree with ours
        answer = Found(in_progress(store_now + left), store_now)
        if clock() >= budget_end:
            with pytest.raises(IdempotencyAlreadyInProgressError) as info:
                gen.send(answer)
            assert info.value.retry_after_ms == left
            return
        step = gen.send(answer)
        assert isinstance(step, Sleep)
        assert 1 <= step.ms <= min(left + 1, budget_end - clock())
        clock.advance(step.ms)
        assert gen.send(None) == Claim()
    assert gen.send(Acquired()) == Execute(protected=True)
    assert clock() <= budget_end


# -- the store fails -------------------------------------------------------------------


def test_claim_store_error_is_reraised_with_raise_policy() -> None:
    policy = make_policy()
    error = IdempotencyStoreError("connection refused")
    gen = flow(policy, make_inv())
    next(gen)
    with pytest.raises(IdempotencyStoreError) as info:
        gen.throw(error)
    assert info.value is error
    assert counts(policy.stats) == {"store_error": 1}


def test_claim_store_error_runs_unprotected_with_run_policy() -> None:
    policy = make_policy(IdempotencyConfig(on_store_error="run"))
    gen = flow(policy, make_inv())
    next(gen)
    assert gen.throw(IdempotencyStoreError("down")) == Execute(protected=False)
    assert finish(gen, 0) == 0
    assert counts(policy.stats) == {"store_error": 1, "unprotected": 1}


def test_unprotected_run_that_fails_raises_without_release() -> None:
    policy = make_policy(IdempotencyConfig(on_store_error="run"))
    error = RuntimeError("function failed")
    gen = flow(policy, make_inv())
    next(gen)
    gen.throw(IdempotencyStoreError("down"))
    with pytest.raises(RuntimeError) as info:
        gen.throw(error)
    assert info.value is error
    assert counts(policy.stats) == {"store_error": 1, "unprotected": 1}


@pytest.mark.parametrize("on_store_error", ["raise", "run"])
def test_corrupt_record_on_claim_is_always_raised(on_store_error: str) -> None:
    policy = make_policy(IdempotencyConfig(on_store_error=on_store_error))
    error = CorruptRecordError("bad header")
    gen = flow(policy, make_inv())
    next(gen)
    with pytest.raises(CorruptRecordError) as info:
        gen.throw(error)
    assert info.value is error


def test_complete_returning_false_still_returns_the_value() -> None:
    cache = LocalCache(4)
    policy, inv = make_policy(cache=cache), make_inv()
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    assert gen.send([3]) == Complete(encode_outcome([3]))
    assert finish(gen, False) == [3]
    assert counts(policy.stats) == {"executed": 1, "lease_lost": 1}
    assert len(cache) == 0


def test_complete_raising_store_error_still_returns_the_value() -> None:
    cache = LocalCache(4)
    policy, inv = make_policy(cache=cache), make_inv()
    gen = flow(policy, inv)
    next(gen)
    gen.send(Acquired())
    gen.send("result")
    with pytest.raises(StopIteration) as stop:
        gen.throw(IdempotencyStoreError("timeout"))
    assert stop.value.value == "result"
    assert counts(policy.stats) == {"executed": 1, "store_error": 1}
    assert len(cache) == 0


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, [1.5, object()], "lone \ud800", {"when": b"bytes"}],
    ids=["object", "set", "nested-object", "surrogate", "bytes"],
)
def test_unserializable_result_releases_then_raises(value: Any) -> None:
    policy = make_policy()
    gen = flow(policy, make_inv())
    next(gen)
    gen.send(Acquired())
    assert gen.send(value) == Release()
    with pytest.raises(IdempotencySerializationError):
        gen.send(True)
    assert counts(policy.stats) == {"released": 1}


def test_output_serializer_failure_releases_then_raises_serialization_error() -> None:
    def to_json(value: Any) -> Any:
        raise ValueError("cannot convert")

    policy = make_policy(serializer=CustomSerializer(to_json, lambda data: data))
    gen = flow(policy, make_inv())
    next(gen)
    gen.send(Acquired())
    assert gen.send("x") == Release()
    with pytest.raises(IdempotencySerializationError, match="cannot convert") as info:
        gen.send(True)
    assert isinstance(info.value.__cause__, ValueError)


# -- the local cache -----------------------------------------------------------------


def run_fresh(policy: Any, inv: Any, value: Any) -> Any:
    gen = flow(policy, inv)
    assert next(gen) == Claim()
    gen.send(Acquired())
    gen.send(value)
    return finish(gen, True)


def test_completed_result_is_served_from_the_local_cache_without_a_claim() -> None:
    clock, cache = Clock(), LocalCache(4)
    policy = make_policy(cache=cache, clock=clock)
    inv = make_inv(ttl_ms=10_000)
    assert run_fresh(policy, inv, {"n": 1}) == {"n": 1}
    clock.advance(9_999)
    with pytest.raises(StopIteration) as stop:
        next(flow(policy, make_inv(key=inv.key)))
    assert stop.value.value == {"n": 1}
    assert counts(policy.stats) == {"executed": 1, "cache_hit": 1}


def test_local_cache_entry_expires_with_the_retention() -> None:
    clock, cache = Clock(), LocalCache(4)
    policy = make_policy(cache=cache, clock=clock)
    inv = make_inv(ttl_ms=10_000)
    run_fresh(policy, inv, 1)
    clock.advance(10_000)
    assert next(flow(policy, make_inv(key=inv.key))) == Claim()


def test_local_cache_hit_applies_response_hook() -> None:
    cache = LocalCache(4)
    config = IdempotencyConfig(response_hook=lambda value, record: (value, record.status))
    policy, inv = make_policy(config, cache=cache), make_inv()
    run_fresh(policy, inv, "v")
    with pytest.raises(StopIteration) as stop:
        next(flow(policy, make_inv(key=inv.key)))
    assert stop.value.value == ("v", Status.COMPLETED)


def test_local_cache_is_skipped_on_a_different_fingerprint() -> None:
    cache = LocalCache(4)
    policy = make_policy(cache=cache)
    inv = make_inv(fingerprint="ab")
    run_fresh(policy, inv, 1)
    assert next(flow(policy, make_inv(key=inv.key, fingerprint="cd"))) == Claim()
    with pytest.raises(StopIteration):
        next(flow(policy, make_inv(key=inv.key, fingerprint="ab")))
    with pytest.raises(StopIteration):
        next(flow(policy, make_inv(key=inv.key, fingerprint=None)))


def test_replay_from_the_store_fills_the_local_cache() -> None:
    cache = LocalCache(4)
    policy, inv = make_policy(cache=cache), make_inv()
    gen = flow(policy, inv)
    next(gen)
    record = completed("stored")
    assert finish(gen, Found(record, START_MS)) == "stored"
    assert cache.get(inv.key, START_MS) is record
    with pytest.raises(StopIteration) as stop:
        next(flow(policy, make_inv(key=inv.key)))
    assert stop.value.value == "stored"


# -- heartbeat -----------------------------------------------------------------------


@pytest.mark.parametrize("lease_ms", [9, 10, 3000, 60_000, 900_001])
def test_heartbeat_renews_every_third_of_the_lease(lease_ms: int) -> None:
    policy = make_policy(IdempotencyConfig(heartbeat=True))
    gen = flow(policy, make_inv(lease_ms=lease_ms))
    next(gen)
    assert gen.send(Acquired()) == Execute(protected=True, heartbeat_ms=lease_ms // 3)


def test_heartbeat_interval_is_at_least_one_millisecond() -> None:
    gen = flow(make_policy(IdempotencyConfig(heartbeat=True)), make_inv(lease_ms=2))
    next(gen)
    assert gen.send(Acquired()) == Execute(protected=True, heartbeat_ms=1)


def test_no_heartbeat_by_default() -> None:
    gen = flow(make_policy(), make_inv(lease_ms=9000))
    next(gen)
    step = gen.send(Acquired())
    assert isinstance(step, Execute)
    assert step.heartbeat_ms is None


def test_event_counter_names_match_the_snapshot() -> None:
    stats = Stats()
    stats.add(Event.EXECUTED)
    stats.add(Event.EXECUTED)
    stats.add(Event.REPLAYED)
    assert stats[Event.EXECUTED] == 2
    assert counts(stats) == {"executed": 2, "replayed": 1}
    stats.reset()
    assert counts(stats) == {}
