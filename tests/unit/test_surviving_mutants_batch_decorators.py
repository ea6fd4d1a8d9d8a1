"""Issue 17: behaviours of batches and decorators that a mutation pass found untested.

Each test pins one edge the rest of the suite left open: the claim of the
record an interruption stopped, a record whose own claim failed, a Lambda
context with no time left, a ``data=`` parameter left at its default, and a
positional-only ``data=`` parameter beside ``**kwargs``. Real MemoryStores on
a ManualClock (never moved: no lease runs out by itself here).
"""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import pytest

from onceonly import IdempotencyConfig, idempotent, idempotent_function
from onceonly.batch import ItemStatus, process_batch, process_batch_async
from onceonly.errors import (
    CorruptRecordError,
    IdempotencyConfigError,
    IdempotencyStoreError,
    OnceOnlyWarning,
)
from onceonly.metrics import Event
from onceonly.records import ClaimResult, Status
from onceonly.stores import AsyncMemoryStore, MemoryStore
from onceonly.testing import disabled
from testkit import ManualClock

CONFIG = IdempotencyConfig(event_key_jmespath="from_json(body).order", key_prefix="sqs")


def _records(orders: list[int]) -> list[dict[str, Any]]:
    return [
        {"messageId": f"m-{i}", "body": json.dumps({"order": order})}
        for i, order in enumerate(orders)
    ]


def _order(record: dict[str, Any]) -> int:
    return int(json.loads(record["body"])["order"])


def _keys(records: list[dict[str, Any]]) -> list[str]:
    """Each record's key (keys depend on the config only, not on the store)."""
    probe = process_batch(records, lambda r: None, store=MemoryStore(), config=CONFIG)
    return [str(item.key) for item in probe.items]


# -- 1. an interrupted batch gives back the claim of the record that was running -------------


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_batch_releases_the_claim_of_the_record_it_stopped_in(
    interruption: type[BaseException],
) -> None:
    store = MemoryStore(clock=ManualClock())
    records = _records([1, 2, 3])
    keys = _keys(records)

    def handle(record: dict[str, Any]) -> str:
        if _order(record) == 2:
            raise interruption
        return f"ok {_order(record)}"

    with pytest.raises(interruption):
        process_batch(records, handle, store=store, config=CONFIG)

    done = store.get(keys[0])
    assert done is not None
    assert done.status is Status.COMPLETED
    # The stopped record's claim is given back, not left IN_PROGRESS for its lease.
    assert store.get(keys[1]) is None
    assert store.get(keys[2]) is None
    again = process_batch(records, lambda r: f"again {_order(r)}", store=store, config=CONFIG)
    assert [item.status for item in again.items] == [
        ItemStatus.REPLAYED,
        ItemStatus.RUN,
        ItemStatus.RUN,
    ]
    assert [item.value for item in again.items] == ["ok 1", "again 2", "again 3"]
    assert again.batch_item_failures() == {"batchItemFailures": []}


# -- 2. a record whose own claim failed is redelivered -----------------------------------------


class OneKeyCorrupt(MemoryStore):
    """A MemoryStore whose record under one key cannot be read (CorruptRecordError)."""

    def __init__(self, bad_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bad_key = bad_key

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        if key == self.bad_key:
            raise CorruptRecordError(f"the record under {key} is corrupt")
        return super().claim(
            key, token=token, lease_ms=lease_ms, ttl_ms=ttl_ms, fingerprint=fingerprint
        )


def test_a_record_whose_claim_failed_is_failed_and_redelivered() -> None:
    records = _records([1, 2, 3, 2])  # the last record repeats the bad key
    keys = _keys(records)
    store = OneKeyCorrupt(keys[1], clock=ManualClock())
    ran: list[int] = []

    def handle(record: dict[str, Any]) -> str:
        ran.append(_order(record))
        return f"ok {_order(record)}"

    result = process_batch(records, handle, store=store, config=CONFIG)

    assert ran == [1, 3]  # never run unprotected
    assert [item.status for item in result.items] == [
        ItemStatus.RUN,
        ItemStatus.FAILED,
        ItemStatus.RUN,
        ItemStatus.FAILED,
    ]
    for index in (1, 3):
        assert isinstance(result.items[index].error, IdempotencyStoreError)
        assert result.items[index].value is None
    assert result.batch_item_failures() == {
        "batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-3"}]
    }


# -- 3. a Lambda context with (almost) no time left is not taken as the lease -----------------


class Context:
    """A stand-in Lambda context whose remaining time is fixed."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.mark.parametrize("remaining_ms", [0, -5, 999])
def test_a_context_with_too_little_time_left_leases_for_lease_seconds(remaining_ms: int) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    config = IdempotencyConfig(event_key_jmespath="id", lease_seconds=42)
    seen: list[dict[str, Any]] = []

    @idempotent(store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> str:
        key = handler.key_for(event, context)  # type: ignore[attr-defined]
        seen.append({"held": store.get(key)})
        return fn(event)

    @idempotent_function(store=store, data="event", config=config)
    def fn(event: dict[str, Any]) -> str:
        record = store.get(str(fn.key_for(event)))  # type: ignore[attr-defined]
        seen.append({"fn_held": record})
        return f"done {event['id']}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnceOnlyWarning)
        assert handler({"id": 1}, Context(remaining_ms)) == "done 1"

    held = seen[0]["held"]
    assert held is not None
    assert held.status is Status.IN_PROGRESS
    assert held.deadline_ms == clock.now + 42_000  # lease_seconds, not the context's time
    fn_held = seen[1]["fn_held"]
    assert fn_held is not None
    assert fn_held.deadline_ms == clock.now + 42_000


def test_a_context_with_enough_time_left_is_the_lease() -> None:
    """The other side of the boundary: MIN_LAMBDA_LEASE_MS itself is taken as the lease."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    config = IdempotencyConfig(event_key_jmespath="id", lease_seconds=42)
    held: list[Any] = []

    @idempotent(store=store, config=config)
    def handler(event: dict[str, Any], context: Any) -> str:
        held.append(store.get(str(handler.key_for(event, context))))  # type: ignore[attr-defined]
        return "done"

    with warnings.catch_warnings():
        warnings.simplefilter("error", OnceOnlyWarning)
        assert handler({"id": 1}, Context(1000)) == "done"
    assert held[0] is not None
    assert held[0].deadline_ms == clock.now + 1000


def test_a_context_with_no_time_left_warns_once_and_still_runs_once_per_key() -> None:
    store = MemoryStore(clock=ManualClock())
    runs: list[int] = []

    @idempotent(store=store, config=IdempotencyConfig(event_key_jmespath="id"))
    def handler(event: dict[str, Any], context: Any) -> int:
        runs.append(event["id"])
        return int(event["id"])

    with pytest.warns(OnceOnlyWarning, match="get_remaining_time_in_millis"):
        assert handler({"id": 7}, Context(0)) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnceOnlyWarning)  # once per handler
        assert handler({"id": 7}, Context(-5)) == 7
    assert runs == [7]


# -- 4. a data= parameter left at its default: the default is the payload --------------------


def test_a_data_parameter_left_at_its_default_takes_the_default_as_payload() -> None:
    store = MemoryStore(clock=ManualClock())
    runs: list[tuple[int, Any]] = []
    default = {"id": 7}

    @idempotent_function(
        store=store, data="event", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def f(a: int, event: dict[str, Any] = default) -> int:
        runs.append((a, event))
        return a

    key = f.key_for(1)  # type: ignore[attr-defined]
    assert key is not None
    assert key == f.key_for(1, {"id": 7}) == f.key_for(1, event={"id": 7})  # type: ignore[attr-defined]
    assert key != f.key_for(1, {"id": 8})  # type: ignore[attr-defined]
    assert f(1) == 1
    assert f(2) == 1  # the same payload (the default): replayed
    assert f(3, {"id": 7}) == 1
    assert runs == [(1, default)]
    assert f(4, {"id": 8}) == 4


# -- 5. a positional-only data= parameter is never read from **kwargs ------------------------


def test_a_positional_only_data_parameter_is_not_taken_from_kwargs() -> None:
    store = MemoryStore(clock=ManualClock())
    calls: list[tuple[Any, dict[str, Any]]] = []

    @idempotent_function(
        store=store, data="event", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def f(event: dict[str, Any], /, **kwargs: Any) -> Any:
        calls.append((event, kwargs))
        return event["id"]

    key_for = f.key_for  # type: ignore[attr-defined]
    assert key_for({"id": 1}, event={"id": 2}) == key_for({"id": 1})
    assert key_for({"id": 1}, event={"id": 2}) != key_for({"id": 2})
    assert f({"id": 1}, event={"id": 2}) == 1
    assert calls == [({"id": 1}, {"event": {"id": 2}})]  # the keyword reaches **kwargs
    assert f({"id": 1}) == 1  # the same payload: replayed
    assert f({"id": 2}, event={"id": 1}) == 2  # another payload: runs
    assert len(calls) == 2


# -- process_batch's own arguments ----------------------------------------------------------


_BATCH = IdempotencyConfig(key_prefix="b", event_key_jmespath="id")


def _echo(record: dict[str, Any]) -> dict[str, Any]:
    return record


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_a_batch_refuses_a_lease_that_is_not_a_positive_integer(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match=r"lease_ms must be a positive integer, got"):
        process_batch([{"id": 1}], _echo, store=MemoryStore(), config=_BATCH, lease_ms=bad)


def test_a_batch_takes_a_lease_of_one_ms() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    (probe,) = process_batch([{"id": 1}], _echo, store=MemoryStore(), config=_BATCH).items
    seen: list[Any] = []

    def handler(record: dict[str, Any]) -> None:
        seen.append(store.get(probe.key))  # type: ignore[arg-type]

    process_batch([{"id": 1}], handler, store=store, config=_BATCH, lease_ms=1)
    assert seen[0] is not None
    assert seen[0].deadline_ms == clock.now + 1  # claimed for exactly 1 ms


def test_a_switched_off_batch_warns_at_the_callers_line() -> None:
    with disabled(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = process_batch([{"id": 1}], _echo, store=MemoryStore(), config=_BATCH)
    assert [item.status for item in result.items] == [ItemStatus.RUN]
    (warning,) = [w for w in caught if issubclass(w.category, OnceOnlyWarning)]
    assert warning.filename == __file__
    assert "idempotency is switched off" in str(warning.message)


class _DownStore(MemoryStore):
    """A MemoryStore whose claims fail as an unreachable store's do."""

    def claim(self, key: str, **kwargs: Any) -> Any:
        raise IdempotencyStoreError("store down (test)")


def test_a_batch_that_runs_unprotected_on_a_store_error_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = IdempotencyConfig(key_prefix="b", event_key_jmespath="id", on_store_error="run")
    with caplog.at_level("WARNING", logger="onceonly"):
        result = process_batch([{"id": 1}, {"id": 2}], _echo, store=_DownStore(), config=config)
    # Every record ran, unprotected (a defect this test found: the batch raised
    # a ValueError here instead).
    assert [(item.status, item.value) for item in result.items] == [
        (ItemStatus.RUN, {"id": 1}),
        (ItemStatus.RUN, {"id": 2}),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "onceonly: store failed for batch _echo; running unprotected"
    ]


class _AsyncDownStore(AsyncMemoryStore):
    """An AsyncMemoryStore whose claims fail as an unreachable store's do."""

    async def claim(self, key: str, **kwargs: Any) -> Any:
        raise IdempotencyStoreError("store down (test)")


def test_an_async_batch_runs_unprotected_on_a_store_error_when_told_to() -> None:
    config = IdempotencyConfig(key_prefix="b", event_key_jmespath="id", on_store_error="run")

    async def handler(record: dict[str, Any]) -> dict[str, Any]:
        return record

    result = asyncio.run(
        process_batch_async([{"id": 1}, {"id": 2}], handler, store=_AsyncDownStore(), config=config)
    )
    assert [(item.status, item.value) for item in result.items] == [
        (ItemStatus.RUN, {"id": 1}),
        (ItemStatus.RUN, {"id": 2}),
    ]


# -- warnings point at the caller's line, and say no more than they must --------------------


def _one_warning(caught: list[warnings.WarningMessage]) -> warnings.WarningMessage:
    (warning,) = [w for w in caught if issubclass(w.category, OnceOnlyWarning)]
    return warning


def test_a_call_without_a_key_warns_at_the_callers_line() -> None:
    @idempotent_function(
        store=MemoryStore(), data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def charge(order: dict[str, Any]) -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert charge({"no_id": 1}) == 1
    warning = _one_warning(caught)
    assert "no idempotency key in the payload" in str(warning.message)
    assert warning.filename == __file__


def test_a_switched_off_function_warns_at_the_callers_line() -> None:
    @idempotent_function(store=MemoryStore(), data="order")
    def charge(order: dict[str, Any]) -> int:
        return 1

    with disabled(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert charge({"id": 1}) == 1
    warning = _one_warning(caught)
    assert "idempotency is switched off" in str(warning.message)
    assert warning.filename == __file__


class _OddContext:
    """A Lambda context whose remaining time is not an int at all."""

    def get_remaining_time_in_millis(self) -> Any:
        return "x" * 50


def test_a_handlers_odd_remaining_time_warns_at_the_callers_line_and_shows_20_chars() -> None:
    @idempotent(store=MemoryStore(), config=IdempotencyConfig(event_key_jmespath="id"))
    def handler(event: dict[str, Any], context: Any) -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert handler({"id": 1}, _OddContext()) == 1
    warning = _one_warning(caught)
    assert f"gave str {'x' * 20!r}, not an int" in str(warning.message)
    assert warning.filename == __file__


def test_a_switched_off_call_is_counted_unprotected() -> None:
    @idempotent_function(store=MemoryStore(), data="order")
    def charge(order: dict[str, Any]) -> int:
        return 1

    with disabled(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OnceOnlyWarning)
        charge({"id": 1})
        charge({"id": 1})
    assert charge.stats[Event.UNPROTECTED] == 2  # type: ignore[attr-defined]


# -- a handler's Lambda context ends with the handler -------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_function_called_after_a_handler_returned_does_not_take_its_context(
    kind: str,
) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    config = IdempotencyConfig(event_key_jmespath="id", lease_seconds=60)
    held: list[Any] = []

    @idempotent_function(store=store, data="order", config=config)
    def charge(order: dict[str, Any]) -> None:
        held.append(store.get(str(charge.key_for(order))))  # type: ignore[attr-defined]

    if kind == "sync":

        @idempotent(store=store, config=config)
        def handler(event: dict[str, Any], context: Any) -> None:
            charge({"id": "inside"})

        handler({"id": 1}, Context(5000))
        charge({"id": "after"})
    else:

        @idempotent(store=AsyncMemoryStore(clock=clock), config=config)
        async def ahandler(event: dict[str, Any], context: Any) -> None:
            charge({"id": "inside"})

        async def main() -> None:
            await ahandler({"id": 1}, Context(5000))
            charge({"id": "after"})  # the same task: the same context variables

        asyncio.run(main())
    # Inside the handler a claim leases the context's 5 s; after it, lease_seconds.
    assert [record.deadline_ms for record in held] == [clock.now + 5000, clock.now + 60_000]


def test_a_decorated_function_keeps_its_name_doc_and_wrapped_function() -> None:
    def charge(order: dict[str, Any]) -> int:
        """Charge an order."""
        return 1

    wrapped = idempotent_function(store=MemoryStore(), data="order")(charge)
    assert (wrapped.__name__, wrapped.__doc__) == ("charge", "Charge an order.")
    assert wrapped.__wrapped__ is charge  # type: ignore[attr-defined]


def test_idempotent_refuses_unknown_arguments_and_a_missing_store() -> None:
    missing = r"idempotent\(\) missing 1 required keyword-only argument: 'store'"
    with pytest.raises(TypeError, match=missing):
        idempotent()  # type: ignore[call-overload]
    unknown = r"idempotent\(\) got an unexpected keyword argument 'colour'"
    with pytest.raises(TypeError, match=unknown):
        idempotent(store=MemoryStore(), colour="red")  # type: ignore[call-overload]
    powertools = r"takes store=, not Powertools' persistence_store="
    with pytest.raises(IdempotencyConfigError, match=powertools):
        idempotent(persistence_store=MemoryStore())  # type: ignore[call-overload]


def test_idempotent_function_refuses_unknown_arguments_and_a_missing_store() -> None:
    missing = r"idempotent_function\(\) missing 1 required keyword-only argument: 'store'"
    with pytest.raises(TypeError, match=missing):
        idempotent_function(data="order")  # type: ignore[call-overload]
    unknown = r"idempotent_function\(\) got an unexpected keyword argument 'colour'"
    with pytest.raises(TypeError, match=unknown):
        idempotent_function(store=MemoryStore(), data="order", colour="red")  # type: ignore[call-overload]
    powertools = r"takes data=, not Powertools' data_keyword_argument="
    with pytest.raises(IdempotencyConfigError, match=powertools):
        idempotent_function(store=MemoryStore(), data_keyword_argument="order")  # type: ignore[call-overload]


@pytest.mark.parametrize("data", [123, b"order", ""], ids=["int", "bytes", "empty"])
def test_idempotent_function_refuses_a_data_that_is_no_parameter_name(data: object) -> None:
    with pytest.raises(IdempotencyConfigError, match=r"^data must name a parameter, got "):
        idempotent_function(store=MemoryStore(), data=data)  # type: ignore[call-overload]


def test_a_data_name_that_is_no_parameter_lists_the_parameters() -> None:
    def charge(order: dict[str, Any], *, retry: bool = False) -> int:
        return 1

    def ping() -> int:
        return 1

    with pytest.raises(IdempotencyConfigError, match=r"\(parameters: order, retry\)$"):
        idempotent_function(store=MemoryStore(), data="event")(charge)
    with pytest.raises(IdempotencyConfigError, match=r"\(parameters: none\)$"):
        idempotent_function(store=MemoryStore(), data="event")(ping)


class _FailingReleases(MemoryStore):
    """A MemoryStore whose releases each fail, the first as a store error."""

    def release_many(self, calls: Any) -> list[Any]:
        return [
            IdempotencyStoreError("down (test)") if i == 0 else CorruptRecordError("bad (test)")
            for i, _ in enumerate(calls)
        ]


def test_failed_releases_of_a_batch_are_logged_once_with_the_first_failures_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fails(record: dict[str, Any]) -> None:
        raise ValueError("handler failed (test)")

    with caplog.at_level("WARNING", logger="onceonly"):
        records = [{"id": 1}, {"id": 2}]
        result = process_batch(records, fails, store=_FailingReleases(), config=_BATCH)
    assert [item.status for item in result.items] == [ItemStatus.FAILED] * 2
    (message,) = [r.getMessage() for r in caplog.records if "could not release" in r.message]
    assert message.endswith(
        " could not release 2 claim(s) of a batch (IdempotencyStoreError); "
        "they are held until their lease ends"
    )
