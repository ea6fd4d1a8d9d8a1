"""Keys and leases of decorated functions (issue 10, items 1, 2, 4 and 5).

1. The Lambda function's name is part of the default key prefix, so two
   functions with the same handler name on one table keep their own records.
2. Callables without a name of their own (partials, lambdas, callable
   instances) get a prefix that tells them apart, or are refused without
   ``key_prefix=``.
4. A Lambda context with no time left (or a test double's odd value) does not
   make a 1 ms lease: the lease falls back to ``lease_seconds``, with one warning.
5. The heartbeat never renews a claim past the invocation's own deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import warnings
from typing import Any

import pytest

from onceonly import (
    IdempotencyConfig,
    IdempotencyConfigError,
    OnceOnlyWarning,
    idempotent,
    idempotent_function,
)
from onceonly.batch import process_batch
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import ManualClock, load_event

EVENT_KEY = IdempotencyConfig(event_key_jmespath="id")


class Context:
    """A Lambda context double whose remaining time is whatever the test says."""

    def __init__(self, remaining: Any) -> None:
        self.remaining = remaining

    def get_remaining_time_in_millis(self) -> Any:
        return self.remaining


def _same_named_handler(effects: list[str], tag: str) -> Any:
    # Every call makes a function with the same module and qualname, as two
    # Lambda functions whose handler is ``app.lambda_handler`` have.
    def lambda_handler(event: Any, context: Any) -> str:
        effects.append(tag)
        return tag

    return lambda_handler


# -- item 1: the Lambda function name in the default prefix -------------------------------------


def test_two_lambda_functions_with_one_handler_name_keep_their_own_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    event = load_event("eventBridgeEvent.json")
    effects: list[str] = []
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders-audit")
    audit = idempotent(_same_named_handler(effects, "audit"), store=store, config=EVENT_KEY)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders-email")
    email = idempotent(_same_named_handler(effects, "email"), store=store, config=EVENT_KEY)

    assert audit(event, None) == "audit"
    assert email(event, None) == "email"
    assert email(event, None) == "email"  # its own record replays

    assert effects == ["audit", "email"]
    qualname = f"{__name__}._same_named_handler.<locals>.lambda_handler"
    assert audit.key_for(event).startswith(f"orders-audit.{qualname}:")
    assert email.key_for(event).startswith(f"orders-email.{qualname}:")


def test_the_function_name_is_read_when_the_decorator_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = load_event("eventBridgeEvent.json")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "first")
    handler = idempotent(_same_named_handler([], "x"), store=MemoryStore(), config=EVENT_KEY)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "second")
    assert handler.key_for(event).startswith("first.")


def test_without_a_function_name_the_prefix_stays_module_qualname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    event = load_event("eventBridgeEvent.json")
    handler = idempotent(_same_named_handler([], "x"), store=MemoryStore(), config=EVENT_KEY)
    qualname = f"{__name__}._same_named_handler.<locals>.lambda_handler"
    assert handler.key_for(event).startswith(f"{qualname}:")


def test_key_prefix_overrides_the_function_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "orders-audit")
    event = load_event("eventBridgeEvent.json")
    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="app.lambda_handler")
    handler = idempotent(_same_named_handler([], "x"), store=MemoryStore(), config=config)
    assert handler.key_for(event).startswith("app.lambda_handler:")


# -- item 2: callables without a name of their own -----------------------------------------------


def charge(region: str, order: dict[str, Any], *, currency: str = "EUR") -> str:
    return f"{region} {order['id']} {currency}"


def test_partials_with_other_bound_arguments_keep_their_own_records() -> None:
    store = MemoryStore()
    eu = idempotent_function(functools.partial(charge, "eu"), store=store, data="order")
    us = idempotent_function(functools.partial(charge, "us"), store=store, data="order")
    usd = idempotent_function(
        functools.partial(charge, "us", currency="USD"), store=store, data="order"
    )

    assert eu(order={"id": 1}) == "eu 1 EUR"
    assert us(order={"id": 1}) == "us 1 EUR"
    assert usd(order={"id": 1}) == "us 1 USD"
    assert len({eu.key_for(order={"id": 1}), us.key_for(order={"id": 1})}) == 2
    assert usd.key_for(order={"id": 1}) != us.key_for(order={"id": 1})


def test_a_partial_keeps_its_prefix_across_rebuilds() -> None:
    store = MemoryStore()
    one = idempotent_function(functools.partial(charge, "eu"), store=store, data="order")
    two = idempotent_function(functools.partial(charge, "eu"), store=store, data="order")
    key = one.key_for(order={"id": 1})
    assert key == two.key_for(order={"id": 1})
    assert key.startswith(f"{__name__}.charge#")
    bare = idempotent_function(functools.partial(charge), store=store, data="order")
    assert bare.key_for(order={"id": 1}).startswith(f"{__name__}.charge:")


def test_a_partial_whose_bound_arguments_are_not_json_is_refused() -> None:
    with pytest.raises(IdempotencyConfigError, match="key_prefix"):
        idempotent_function(functools.partial(charge, object()), store=MemoryStore(), data="order")
    config = IdempotencyConfig(key_prefix="charge-with-client")
    guarded = idempotent_function(
        functools.partial(charge, object()), store=MemoryStore(), data="order", config=config
    )
    assert guarded.key_for(order={"id": 1}).startswith("charge-with-client:")


def test_a_lambda_is_refused_without_key_prefix() -> None:
    with pytest.raises(IdempotencyConfigError, match="key_prefix"):
        idempotent_function(lambda order: order, store=MemoryStore(), data="order")
    with pytest.raises(IdempotencyConfigError, match="key_prefix"):
        idempotent(lambda event, context: event, store=MemoryStore())
    with pytest.raises(IdempotencyConfigError, match="key_prefix"):
        process_batch([{"id": 1}], lambda r: r, store=MemoryStore(), config=EVENT_KEY)
    config = IdempotencyConfig(key_prefix="echo")
    echo = idempotent_function(
        lambda order: order, store=MemoryStore(), data="order", config=config
    )
    assert echo(order={"id": 1}) == {"id": 1}


class Sender:
    """A callable class: every instance has the class's name."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __call__(self, message: dict[str, Any]) -> str:
        return f"{self.channel} {message['id']}"

    def send(self, message: dict[str, Any]) -> str:
        return f"{self.channel} {message['id']}"


def test_a_callable_instance_is_refused_without_key_prefix() -> None:
    with pytest.raises(IdempotencyConfigError, match="key_prefix"):
        idempotent_function(Sender("sms"), store=MemoryStore(), data="message")
    config = IdempotencyConfig(key_prefix="sms")
    sms = idempotent_function(Sender("sms"), store=MemoryStore(), data="message", config=config)
    assert sms(message={"id": 1}) == "sms 1"


def test_a_bound_method_is_named_by_its_class_and_method() -> None:
    # As when the method is decorated in the class body: the instance is not in the key.
    sender = idempotent_function(Sender("sms").send, store=MemoryStore(), data="message")
    assert sender.key_for(message={"id": 1}).startswith(f"{__name__}.Sender.send:")


# -- item 4: a Lambda context with no (sane) time left -------------------------------------------


@pytest.mark.parametrize("remaining", [0, -5, 1, 999, 1.0, 2500.5, True, "30000", None])
def test_a_context_without_usable_time_falls_back_to_lease_seconds_and_warns_once(
    remaining: Any,
) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    event = load_event("eventBridgeEvent.json")
    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="lease", lease_seconds=42)
    deadlines: list[int] = []
    handlers: list[Any] = []

    def body(event: Any, context: Any) -> str:
        record = store.get(handlers[0].key_for(event))
        assert record is not None
        deadlines.append(record.deadline_ms)
        return "ran"

    handlers.append(idempotent(body, store=store, config=config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert handlers[0](event, Context(remaining)) == "ran"
        store.delete(handlers[0].key_for(event))
        assert handlers[0](event, Context(remaining)) == "ran"

    assert deadlines == [clock.now + 42_000] * 2
    lease_warnings = [w for w in caught if issubclass(w.category, OnceOnlyWarning)]
    assert len(lease_warnings) == 1
    assert "lease_seconds" in str(lease_warnings[0].message)


def test_a_context_with_time_left_sets_the_lease() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    event = load_event("eventBridgeEvent.json")
    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="lease", lease_seconds=42)
    deadlines: list[int] = []

    @idempotent(store=store, config=config)
    def handler(event: Any, context: Any) -> str:
        record = store.get(handler.key_for(event))
        assert record is not None
        deadlines.append(record.deadline_ms)
        return "ran"

    assert handler(event, Context(1000)) == "ran"
    assert deadlines == [clock.now + 1000]


# -- item 5: the heartbeat stops at the invocation's deadline ------------------------------------


class HeartbeatGate:
    """The policy's clock over a ManualClock: parks the heartbeat thread's next read when armed.

    The heartbeat reads the policy's clock once per beat, before it renews
    (the store reads the ManualClock itself). While it is parked, its
    previous beat is done and its next has not read the time yet: the test
    looks at the record and moves the clock, then lets it go on.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.armed = False
        self.parked = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.beater: threading.Thread | None = None

    def __call__(self) -> int:
        if self.armed and threading.current_thread().name == "onceonly-heartbeat":
            self.beater = threading.current_thread()
            self.armed = False
            self.parked.release()
            assert self.go.acquire(timeout=30)
        return self.clock.now

    def next_beat(self) -> None:
        """Wait until the heartbeat is about to beat again (its last beat finished)."""
        self.armed = True
        assert self.parked.acquire(timeout=30), "the heartbeat did not beat"


def test_the_heartbeat_never_renews_past_the_invocation_deadline() -> None:
    clock = ManualClock()
    gate = HeartbeatGate(clock)
    store = MemoryStore(clock=clock)
    event = load_event("eventBridgeEvent.json")
    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="hb", heartbeat=True)
    seen: list[tuple[str, int]] = []
    handlers: list[Any] = []

    def body(event: Any, context: Any) -> str:
        key = handlers[0].key_for(event)
        start = clock.now
        deadline = start + 1500  # the invocation's own end
        gate.next_beat()  # the first beat, 500 ms (a third of the lease) from now
        clock.advance(1000)
        gate.go.release()
        gate.next_beat()  # the first beat is done
        record = store.get(key)
        assert record is not None
        seen.append(("renewed", record.deadline_ms - deadline))
        clock.advance(1000)  # past the deadline: the next beat must not renew
        gate.go.release()
        assert gate.beater is not None
        gate.beater.join(timeout=30)
        seen.append(("stopped", int(gate.beater.is_alive())))
        record = store.get(key)
        seen.append(("held", -1 if record is None else record.deadline_ms - deadline))
        return "ran"

    handlers.append(idempotent(body, store=store, config=config))
    handler = handlers[0]
    handler.guard.policy = dataclasses.replace(handler.guard.policy, clock=gate)

    assert handler(event, Context(1500)) == "ran"
    # Renewed to the deadline at most, then no more renewal: the record lapsed.
    assert seen == [("renewed", 0), ("stopped", 0), ("held", -1)]


class BeatClock(ManualClock):
    """A manual clock that reports the reads of tasks other than ``main`` (the heartbeat's).

    A beat (its reads, its renewal on AsyncMemoryStore) runs without yielding,
    so when ``next_beat`` returns, that beat is done.
    """

    def __init__(self) -> None:
        super().__init__()
        self.main: asyncio.Task[Any] | None = None
        self.beats: asyncio.Queue[int] | None = None

    def __call__(self) -> int:
        if self.beats is not None and asyncio.current_task() is not self.main:
            self.beats.put_nowait(self.now)
        return self.now

    async def next_beat(self) -> None:
        assert self.beats is not None
        await asyncio.wait_for(self.beats.get(), 30)
        while not self.beats.empty():  # the same beat's other reads
            self.beats.get_nowait()


def test_the_async_heartbeat_never_renews_past_the_invocation_deadline() -> None:
    clock = BeatClock()
    store = AsyncMemoryStore(clock=clock)
    event = load_event("eventBridgeEvent.json")
    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="ahb", heartbeat=True)

    async def scenario() -> list[tuple[str, int]]:
        seen: list[tuple[str, int]] = []
        clock.main = asyncio.current_task()

        @idempotent(store=store, config=config)
        async def handler(event: Any, context: Any) -> str:
            key = handler.key_for(event)
            deadline = clock.now + 1500
            clock.beats = asyncio.Queue()  # from here on (the claim ran in a task of its own)
            clock.advance(1000)
            await clock.next_beat()
            record = await store.get(key)
            assert record is not None
            seen.append(("renewed", record.deadline_ms - deadline))
            clock.advance(1000)  # past the deadline
            await clock.next_beat()
            await asyncio.sleep(1.5)  # three more beats' worth, were it still beating
            record = await store.get(key)
            seen.append(("held", -1 if record is None else record.deadline_ms - deadline))
            return "ran"

        handler.guard.policy = dataclasses.replace(handler.guard.policy, clock=clock)
        assert await handler(event, Context(1500)) == "ran"
        return seen

    assert asyncio.run(scenario()) == [("renewed", 0), ("held", -1)]


def test_without_a_context_the_heartbeat_renews_as_before() -> None:
    clock = ManualClock()
    gate = HeartbeatGate(clock)
    store = MemoryStore(clock=clock)
    config = IdempotencyConfig(key_prefix="plain", heartbeat=True, lease_seconds=1.5)
    seen: list[int] = []
    handlers: list[Any] = []

    def body(job: dict[str, Any]) -> str:
        key = handlers[0].key_for(job)
        gate.next_beat()
        clock.advance(1000)
        gate.go.release()
        gate.next_beat()
        record = store.get(key)
        assert record is not None
        seen.append(record.deadline_ms - clock.now)
        gate.go.release()
        return "ran"

    handlers.append(idempotent_function(body, store=store, data="job", config=config))
    handlers[0].guard.policy = dataclasses.replace(handlers[0].guard.policy, clock=gate)
    assert handlers[0]({"id": 1}) == "ran"
    assert seen == [1500]
