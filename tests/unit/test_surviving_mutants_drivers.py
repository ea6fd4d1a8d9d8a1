"""The sync and asyncio drivers: heartbeat cadence and retries, releases after a
BaseException or a second cancellation (issue 17: mutants the suite let through).

The stores are real (MemoryStore, AsyncMemoryStore) on a ManualClock, subclassed
only to record or gate calls. The sync heartbeat waits on a ``threading.Event``;
its tests give the driver module an Event whose timed wait moves the ManualClock
on by its timeout at once (virtual time), so the renewals land at exact,
repeatable instants with no sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
from typing import Any

import pytest

import onceonly._async
import onceonly._sync
from onceonly import (
    IdempotencyConfig,
    IdempotencyStoreError,
    idempotent_function,
)
from onceonly.engine import Invocation
from onceonly.records import Status, new_token
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import ManualClock, VirtualAsyncHeartbeatTime, VirtualHeartbeatTime

LONG = 10  # seconds: an upper bound on an event that comes at once when the code is right


class _RecordingStore(MemoryStore):
    """A MemoryStore that notes when (on its clock) each renew came and what it answered;
    the first ``fail_first`` renewals raise IdempotencyStoreError instead."""

    def __init__(self, clock: ManualClock, fail_first: int = 0) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.fail_first = fail_first
        self.renewals: list[tuple[int, Any]] = []

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        if len(self.renewals) < self.fail_first:
            self.renewals.append((self.clock.now, "error"))
            raise IdempotencyStoreError("renew refused (test)")
        answer = super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append((self.clock.now, answer))
        return answer


def _run_with_virtual_heartbeat(
    monkeypatch: pytest.MonkeyPatch, store: _RecordingStore, lease_seconds: float, horizon_ms: int
) -> tuple[str, VirtualHeartbeatTime]:
    time = VirtualHeartbeatTime(store.clock, horizon_ms)
    monkeypatch.setattr(onceonly._sync, "threading", time.module)

    @idempotent_function(
        store=store,
        data="job",
        config=IdempotencyConfig(lease_seconds=lease_seconds, heartbeat=True),
    )
    def long(job: str) -> str:
        # Runs, in virtual time, until the heartbeat's next wait would pass the horizon.
        assert time.reached.wait(LONG)
        return f"done {job}"

    result = long("j")
    record = store.get(long.key_for("j"))  # type: ignore[attr-defined]
    assert record is not None
    assert record.status is Status.COMPLETED
    return result, time


# -- mutant 1: the sync heartbeat renews every third of the lease ---------------------------


def test_sync_heartbeat_renews_every_third_of_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    start = clock.now
    store = _RecordingStore(clock)

    result, time = _run_with_virtual_heartbeat(monkeypatch, store, 0.3, horizon_ms=1000)

    assert result == "done j"
    assert time.waits_ms[0] == 100  # a 300 ms lease is renewed every 100 ms
    assert time.waits_s[0] == 0.1  # exactly: 100 ms in seconds
    # Over a body of 1000 ms: ten renewals, one per 100 ms, each keeping the claim.
    assert store.renewals == [(start + 100 * i, True) for i in range(1, 11)]


# -- mutant 2: a failed renewal is retried at the next beat --------------------------------


def test_sync_heartbeat_tries_again_after_a_failed_renewal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    start = clock.now
    store = _RecordingStore(clock, fail_first=1)

    with caplog.at_level("WARNING", logger="onceonly"):
        result, _ = _run_with_virtual_heartbeat(monkeypatch, store, 0.3, horizon_ms=400)

    assert result == "done j"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert re.fullmatch(
        r"onceonly: heartbeat for key \S+ failed \(renew refused \(test\)\)", warning
    )
    # The first renewal fails; the next beat (still inside the lease) renews it.
    assert store.renewals == [
        (start + 100, "error"),
        (start + 200, True),
        (start + 300, True),
        (start + 400, True),
    ]


class _AsyncRecordingStore(AsyncMemoryStore):
    """An AsyncMemoryStore whose first renew raises IdempotencyStoreError; ``renewed`` is
    set once a later renew has gone through."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.renewals: list[Any] = []
        self.renewed = asyncio.Event()

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        if not self.renewals:
            self.renewals.append("error")
            raise IdempotencyStoreError("renew refused (test)")
        answer = await super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append(answer)
        self.renewed.set()
        return answer


def test_async_heartbeat_tries_again_after_a_failed_renewal() -> None:
    async def main() -> tuple[str, list[Any], Any]:
        # The store's clock stands still: the 3 ms lease never lapses, while the
        # heartbeat beats every millisecond of real time.
        store = _AsyncRecordingStore(ManualClock())

        @idempotent_function(
            store=store, data="job", config=IdempotencyConfig(lease_seconds=0.003, heartbeat=True)
        )
        async def long(job: str) -> str:
            await asyncio.wait_for(store.renewed.wait(), LONG)
            return f"done {job}"

        result = await long("j")
        record = await store.get(long.key_for("j"))  # type: ignore[attr-defined]
        return result, store.renewals, record

    result, renewals, record = asyncio.run(main())
    assert result == "done j"
    assert renewals[:2] == ["error", True]
    assert record.status is Status.COMPLETED


# -- the sync heartbeat has ended before the outcome is stored -------------------------------


class _SlowRenewStore(MemoryStore):
    """Its renewals each take 0.2 s of real time; ``complete`` notes whether one had ended."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.renewing = threading.Event()
        self.renewed = threading.Event()
        self.renewed_before_complete: list[bool] = []

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        self.renewing.set()
        time.sleep(0.2)
        answer = super().renew(key, token=token, lease_ms=lease_ms)
        self.renewed.set()
        return answer

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        self.renewed_before_complete.append(self.renewed.is_set())
        return super().complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms)


def test_sync_heartbeat_ends_before_the_outcome_is_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    # A renewal is in flight when the function returns: the driver stops the
    # heartbeat and waits for its thread, so no renewal runs beside the complete.
    store = _SlowRenewStore(ManualClock())
    virtual = VirtualHeartbeatTime(store.clock, 600_000)
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    @idempotent_function(
        store=store, data="job", config=IdempotencyConfig(lease_seconds=0.3, heartbeat=True)
    )
    def work(job: str) -> str:
        assert store.renewing.wait(LONG)
        return f"done {job}"

    assert work("j") == "done j"
    assert store.renewed_before_complete == [True]


# -- mutant 3: a BaseException in the function still releases the claim (sync) -------------


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_sync_base_exception_in_the_function_releases_the_claim(
    raised: type[BaseException],
) -> None:
    store = MemoryStore(clock=ManualClock())
    runs: list[int] = []

    @idempotent_function(store=store, data="job", config=IdempotencyConfig(lease_seconds=60))
    def work(job: str) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise raised
        return f"done {job}"

    with pytest.raises(raised):
        work("j")
    assert store.get(work.key_for("j")) is None  # type: ignore[attr-defined]
    assert work("j") == "done j"  # runs again at once: not "in progress" for 60 s
    assert len(runs) == 2


# -- mutant 4: the release after a cancellation survives a second cancellation (async) ------


class _GatedReleaseStore(AsyncMemoryStore):
    """An AsyncMemoryStore whose release waits for ``gate`` (set by the test) before it
    releases; ``entered`` is set when a release starts, ``released`` when one is done."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def release(self, key: str, *, token: str) -> bool:
        self.entered.set()
        await self.gate.wait()
        answer = await super().release(key, token=token)
        self.released.set()
        return answer


def test_async_release_after_a_cancellation_survives_a_second_cancellation() -> None:
    async def main() -> tuple[Any, str, int]:
        store = _GatedReleaseStore(ManualClock())
        started = asyncio.Event()
        runs: list[int] = []

        @idempotent_function(store=store, data="job", config=IdempotencyConfig(lease_seconds=60))
        async def work(job: str) -> str:
            runs.append(1)
            if len(runs) == 1:
                started.set()
                await asyncio.Event().wait()  # until cancelled
            return f"done {job}"

        task = asyncio.ensure_future(work("j"))
        await started.wait()
        task.cancel()  # the function is cancelled: the flow releases the claim
        await store.entered.wait()
        task.cancel()  # cancelled again while the release is in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        store.gate.set()
        await asyncio.wait_for(store.released.wait(), LONG)
        record = await store.get(work.key_for("j"))  # type: ignore[attr-defined]
        again = await work("j")
        return record, again, len(runs)

    record, again, runs = asyncio.run(main())
    assert record is None  # the release went through
    assert again == "done j"  # and the next call runs at once
    assert runs == 2


# -- waiting for another execution's claim: the drivers sleep what the engine asks --------


class _VirtualTime:
    """A ``time`` for ``onceonly._sync`` whose sleep moves a ManualClock on at once."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sleeps_s: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps_s.append(seconds)
        self.clock.advance(round(seconds * 1000))


class _VirtualAsyncio:
    """An ``asyncio`` for ``onceonly._async`` whose sleep moves a ManualClock on at once."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sleeps_s: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.sleeps_s.append(seconds)
        self.clock.advance(round(seconds * 1000))
        await asyncio.sleep(0)


# The holder's claim ends 100 ms after the waiter first finds it: the waiter
# sleeps 20, 40, then 41 ms (one past the deadline), and takes the key over.
_WAITED_S = [0.02, 0.04, 0.041]
_WAIT = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=10, lease_seconds=60)


def test_a_sync_waiter_sleeps_what_the_engine_asks_then_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    virtual = _VirtualTime(clock)
    monkeypatch.setattr(onceonly._sync, "time", virtual)

    @idempotent_function(store=store, data="job", config=_WAIT)
    def work(job: str) -> str:
        return f"done {job}"

    key = work.key_for("j")  # type: ignore[attr-defined]
    store.claim(key, token="0" * 32, lease_ms=100, ttl_ms=100, fingerprint=None)

    assert work("j") == "done j"
    assert virtual.sleeps_s == _WAITED_S
    record = store.get(key)
    assert record is not None
    assert record.status is Status.COMPLETED


def test_an_async_waiter_sleeps_what_the_engine_asks_then_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    store = AsyncMemoryStore(clock=clock)
    virtual = _VirtualAsyncio(clock)
    monkeypatch.setattr(onceonly._async, "asyncio", virtual)

    @idempotent_function(store=store, data="job", config=_WAIT)
    async def work(job: str) -> str:
        return f"done {job}"

    async def main() -> tuple[str, Any]:
        key = work.key_for("j")  # type: ignore[attr-defined]
        await store.claim(key, token="0" * 32, lease_ms=100, ttl_ms=100, fingerprint=None)
        return await work("j"), await store.get(key)

    result, record = asyncio.run(main())
    assert result == "done j"
    assert virtual.sleeps_s == _WAITED_S
    assert record is not None
    assert record.status is Status.COMPLETED


# -- a claim still in flight when its caller is cancelled ------------------------------


class _GatedClaimStore(AsyncMemoryStore):
    """An AsyncMemoryStore whose claim waits for ``claim_gate`` (then raises, with
    ``fail``) and whose release waits for ``release_gate``."""

    def __init__(self, clock: ManualClock, *, fail: bool = False) -> None:
        super().__init__(clock=clock)
        self.fail = fail
        self.claiming = asyncio.Event()
        self.claim_gate = asyncio.Event()
        self.claimed = asyncio.Event()
        self.releasing = asyncio.Event()
        self.release_gate = asyncio.Event()
        self.released: list[bool] = []

    async def claim(self, key: str, **kwargs: Any) -> Any:
        self.claiming.set()
        await self.claim_gate.wait()
        try:
            if self.fail:
                raise IdempotencyStoreError("claim failed (test)")
            return await super().claim(key, **kwargs)
        finally:
            self.claimed.set()

    async def release(self, key: str, *, token: str) -> bool:
        self.releasing.set()
        await self.release_gate.wait()
        answer = await super().release(key, token=token)
        self.released.append(answer)
        return answer


async def _cancel_while_claiming(store: _GatedClaimStore) -> tuple[Any, list[Any]]:
    """Cancel a call whose claim is in flight, then let the claim land; the loop's errors."""
    errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))

    @idempotent_function(store=store, data="job", config=IdempotencyConfig(lease_seconds=60))
    async def work(job: str) -> str:
        return f"done {job}"

    call = asyncio.ensure_future(work("j"))
    await asyncio.wait_for(store.claiming.wait(), LONG)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    store.claim_gate.set()
    await asyncio.wait_for(store.claimed.wait(), LONG)
    return work, errors


def test_a_claim_that_fails_after_its_caller_was_cancelled_gives_nothing_back() -> None:
    async def main() -> tuple[list[Any], list[bool]]:
        store = _GatedClaimStore(ManualClock(), fail=True)
        _, errors = await _cancel_while_claiming(store)
        for _ in range(5):  # let the done callbacks run
            await asyncio.sleep(0)
        return errors, store.released

    errors, released = asyncio.run(main())
    assert errors == []  # nothing raised in a callback
    assert released == []  # and nothing to release


def test_the_give_back_of_a_claim_is_kept_referenced_until_it_is_done() -> None:
    # A task only the event loop knows of may be garbage-collected mid-flight:
    # the release is held in a module set while it runs, and dropped after.
    async def main() -> tuple[list[Any], int, list[bool], int, Any]:
        store = _GatedClaimStore(ManualClock())
        work, errors = await _cancel_while_claiming(store)
        await asyncio.wait_for(store.releasing.wait(), LONG)
        held = len(onceonly._async._giving_back)
        store.release_gate.set()
        while not store.released:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the task's done callbacks
        record = await store.get(work.key_for("j"))
        return errors, held, store.released, len(onceonly._async._giving_back), record

    errors, held, released, after, record = asyncio.run(main())
    assert errors == []
    assert (held, released, after) == (1, [True], 0)
    assert record is None  # the key was given back


# -- one renewal of an async heartbeat --------------------------------------------------


class _AsyncRenewals(AsyncMemoryStore):
    """An AsyncMemoryStore noting each renewal's lease."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.leases: list[int] = []

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        self.leases.append(lease_ms)
        return await super().renew(key, token=token, lease_ms=lease_ms)


@pytest.mark.parametrize(("left_ms", "renewed"), [(-5, []), (0, []), (1, [1]), (2, [2])])
def test_an_async_beat_renews_only_to_the_invocations_end(
    left_ms: int, renewed: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # With the invocation's end (a Lambda deadline) ``left_ms`` away, a beat
    # renews to it; at or past it the heartbeat stops without a renewal.
    clock = ManualClock()
    store = _AsyncRenewals(clock)
    inv = Invocation("k", None, new_token(), 60_000, 60_000, deadline_ms=clock.now + left_ms)

    async def main() -> bool:
        await store.claim("k", token=inv.token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        return await onceonly._async._renew_one(store, inv, clock)()

    with caplog.at_level("DEBUG", logger="onceonly"):
        assert asyncio.run(main()) is (renewed != [])
    assert store.leases == renewed
    stopped = [
        r.getMessage() for r in caplog.records if "stops at the invocation's end" in r.message
    ]
    assert stopped == (
        [] if renewed else ["onceonly: heartbeat for key k stops at the invocation's end"]
    )


def test_an_async_beat_that_finds_the_lease_lost_says_so_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    store = _AsyncRenewals(clock)
    inv = Invocation("k", None, new_token(), 60_000, 60_000)

    async def main() -> bool:
        # Another execution holds the key: this invocation's claim is gone.
        await store.claim("k", token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        return await onceonly._async._renew_one(store, inv, clock)()

    with caplog.at_level("WARNING", logger="onceonly"):
        assert asyncio.run(main()) is False
    assert store.leases == [60_000]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "onceonly: heartbeat found the lease on key k lost"
    ]


def test_async_heartbeat_renews_every_third_of_the_lease_and_logs_a_failed_renewal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    start = clock.now
    store = _AsyncRenewalTimes(clock, fail_first=1)

    async def main() -> tuple[str, Any, VirtualAsyncHeartbeatTime]:
        virtual = VirtualAsyncHeartbeatTime(clock, 500)
        monkeypatch.setattr(onceonly._async, "asyncio", virtual)

        @idempotent_function(
            store=store, data="job", config=IdempotencyConfig(lease_seconds=0.3, heartbeat=True)
        )
        async def long(job: str) -> str:
            await asyncio.wait_for(virtual.reached.wait(), LONG)
            return f"done {job}"

        result = await long("j")
        return result, await store.get(long.key_for("j")), virtual  # type: ignore[attr-defined]

    with caplog.at_level("WARNING", logger="onceonly"):
        result, record, virtual = asyncio.run(main())
    assert result == "done j"
    assert virtual.sleeps_s[0] == 0.1  # exactly: a 300 ms lease renewed every 100 ms
    # The first renewal fails and is logged; the next beats renew it.
    assert store.renewals == [(start + 100 * i, i > 1) for i in range(1, 6)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert re.fullmatch(
        r"onceonly: heartbeat for key \S+ failed \(renew refused \(test\)\)", warning
    )
    assert record is not None
    assert record.status is Status.COMPLETED


class _AsyncRenewalTimes(AsyncMemoryStore):
    """An AsyncMemoryStore noting when (on its clock) each renewal came and whether it
    held; the first ``fail_first`` raise IdempotencyStoreError instead."""

    def __init__(self, clock: ManualClock, fail_first: int) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.fail_first = fail_first
        self.renewals: list[tuple[int, bool]] = []

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        if len(self.renewals) < self.fail_first:
            self.renewals.append((self.clock.now, False))
            raise IdempotencyStoreError("renew refused (test)")
        answer = await super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append((self.clock.now, answer))
        return answer


# -- a batch's settling writes: their failure is retrieved when the batch is cancelled ------


def test_a_settling_write_that_fails_after_a_cancellation_leaves_no_unretrieved_error() -> None:
    # The caller gets the cancellation; the write's own error must not surface
    # later as asyncio's "Task exception was never retrieved".
    async def main() -> list[Any]:
        errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        gate = asyncio.Event()

        async def failing_write() -> None:
            await gate.wait()
            raise IdempotencyStoreError("write failed (test)")

        settling = asyncio.ensure_future(onceonly._async._settled(failing_write()))
        await asyncio.sleep(0)  # the write is under way
        settling.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await settling
        del settling
        gc.collect()  # a task's unretrieved error is reported when the task goes
        await asyncio.sleep(0)
        return errors

    assert asyncio.run(main()) == []


class _SyncRenewals(MemoryStore):
    """A MemoryStore noting each renewal's lease."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.leases: list[int] = []

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        self.leases.append(lease_ms)
        return super().renew(key, token=token, lease_ms=lease_ms)


@pytest.mark.parametrize(("left_ms", "renewed"), [(-5, []), (0, []), (1, [1]), (2, [2])])
def test_a_sync_beat_renews_only_to_the_invocations_end(
    left_ms: int, renewed: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    store = _SyncRenewals(clock)
    inv = Invocation("k", None, new_token(), 60_000, 60_000, deadline_ms=clock.now + left_ms)
    store.claim("k", token=inv.token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)

    with caplog.at_level("DEBUG", logger="onceonly"):
        assert onceonly._sync._renew_one(store, inv, clock)() is (renewed != [])
    assert store.leases == renewed
    end = "onceonly: heartbeat for key k stops at the invocation's end"
    assert [r.getMessage() for r in caplog.records if r.getMessage() == end] == (
        [] if renewed else [end]
    )


def test_a_sync_beat_that_finds_the_lease_lost_says_so_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    store = _SyncRenewals(clock)
    inv = Invocation("k", None, new_token(), 60_000, 60_000)
    store.claim("k", token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)

    with caplog.at_level("WARNING", logger="onceonly"):
        assert onceonly._sync._renew_one(store, inv, clock)() is False
    assert store.leases == [60_000]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "onceonly: heartbeat found the lease on key k lost"
    ]
