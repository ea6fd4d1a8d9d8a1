"""The synchronous driver: carries out the engine's steps against a sync store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from .batch_engine import (
    BatchResult,
    BatchStep,
    ClaimMany,
    CompleteMany,
    ReleaseMany,
    RunItem,
    renew_call,
    still_held,
)
from .engine import (
    CLAIM,
    RELEASE,
    Complete,
    Execute,
    Invocation,
    Sleep,
    Step,
    claim_call,
    complete_call,
    release_call,
    renewal_lease_ms,
)
from .errors import IdempotencyStoreError
from .metrics import Event, log_extra
from .stores.protocol import (
    Store,
    claim_many,
    complete_many,
    release_many,
    renew_many,
    wall_ms,
)

__all__ = ["drive", "drive_batch", "pump"]

T = TypeVar("T")

logger = logging.getLogger("onceonly")


class _Heartbeat:
    """Calls ``beat`` from a daemon thread every interval until stopped or it returns False.

    ``beat`` renews one call's claim, or every claim a batch holds. A store
    error is logged and the next beat tried: the store may come back before
    the lease ends.
    """

    def __init__(
        self, beat: Callable[[], bool], interval_ms: int, what: str, key: str | None = None
    ) -> None:
        self._beat = beat
        self._what = what
        self._key = key  # for the log records' extra fields
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onceonly-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._beat() is not True:
                    return
            except IdempotencyStoreError as exc:
                logger.warning(
                    "onceonly: heartbeat for %s failed (%s)",
                    self._what,
                    exc,
                    extra=log_extra(None, self._key, "heartbeat_failed"),
                )

    def halt(self) -> None:
        """Stop beating, without waiting for a renewal in flight."""
        self._stop.set()

    def stop(self) -> None:
        """Stop beating and wait for the thread to end."""
        self._stop.set()
        self._thread.join()


def _renew_one(store: Store, inv: Invocation, clock: Callable[[], int]) -> Callable[[], bool]:
    def beat() -> bool:
        lease_ms = renewal_lease_ms(inv, clock())
        if lease_ms <= 0:
            logger.debug(
                "onceonly: heartbeat for key %s stops at the invocation's end",
                inv.key,
                extra=log_extra(None, inv.key, "heartbeat_stopped"),
            )
            return False
        if store.renew(inv.key, token=inv.token, lease_ms=lease_ms) is True:
            return True
        logger.warning(
            "onceonly: heartbeat found the lease on key %s lost",
            inv.key,
            extra=log_extra(None, inv.key, Event.LEASE_LOST.value),
        )
        return False

    return beat


def _execute(
    step: Execute, store: Store, inv: Invocation, call: Callable[[], Any], clock: Callable[[], int]
) -> Any:
    if step.heartbeat_ms is None:
        return call()
    heartbeat = _Heartbeat(
        _renew_one(store, inv, clock), step.heartbeat_ms, f"key {inv.key}", inv.key
    )
    try:
        return call()
    finally:
        heartbeat.stop()


def pump(steps: Generator[Any, Any, T], do: Callable[[Any], Any]) -> T:
    """Feed each step's reply (or its exception) back into the flow until it returns."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = do(step)
        except BaseException as exc:  # handed to the flow, which re-raises what it must
            error = exc


def drive(
    steps: Generator[Step, Any, Any],
    store: Store,
    inv: Invocation,
    call: Callable[[], Any],
    clock: Callable[[], int] = wall_ms,
) -> Any:
    """Carry out a flow's steps until it returns; return what it returns.

    Args:
        steps: ``engine.flow(policy, inv)``.
        store: The sync store.
        inv: The invocation the flow was made for.
        call: Runs the user's function with its arguments.
        clock: The policy's clock, which ``inv.deadline_ms`` is read on.

    Returns:
        The call's result (fresh or replayed).
    """

    def do(step: Step) -> Any:
        if step is CLAIM:
            return store.claim(
                inv.key,
                token=inv.token,
                lease_ms=inv.lease_ms,
                ttl_ms=inv.ttl_ms,
                fingerprint=inv.fingerprint,
            )
        if isinstance(step, Execute):
            return _execute(step, store, inv, call, clock)
        if isinstance(step, Complete):
            return store.complete(inv.key, token=inv.token, outcome=step.outcome, ttl_ms=inv.ttl_ms)
        if step is RELEASE:
            return store.release(inv.key, token=inv.token)
        if isinstance(step, Sleep):
            time.sleep(step.ms / 1000)
            return None
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    return pump(steps, do)


def drive_batch(
    steps: Generator[BatchStep, Any, BatchResult],
    store: Store,
    records: Sequence[Any],
    handler: Callable[[Any], Any],
) -> BatchResult:
    """Carry out a batch flow's steps (see ``batch_engine.batch_flow``); return its result."""
    heartbeat = _BatchHeartbeat(store)

    def do(step: BatchStep) -> Any:
        heartbeat.follow(step)
        if isinstance(step, RunItem):
            return handler(records[step.index])
        if isinstance(step, ClaimMany):
            return claim_many(store, [claim_call(inv) for inv in step.invocations])
        if isinstance(step, CompleteMany):
            return complete_many(store, [complete_call(inv, out) for inv, out in step.items])
        if isinstance(step, ReleaseMany):
            return release_many(store, [release_call(inv) for inv in step.invocations])
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    try:
        return pump(steps, do)
    finally:
        heartbeat.end()


class _BatchHeartbeat:
    """One heartbeat over the consecutive RunItems of a batch that carry claims.

    Started at the first of them, it renews that step's claims (one
    ``renew_many``: one pipeline on Redis) until a step of another kind.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._held: list[Invocation] = []
        self._beating: _Heartbeat | None = None
        self._ended: list[_Heartbeat] = []
        self._halted = False

    def follow(self, step: BatchStep) -> None:
        """Start the heartbeat, keep it, or stop it, as ``step`` asks."""
        if isinstance(step, RunItem) and step.renew and step.heartbeat_ms is not None:
            if self._beating is None:
                self._held = list(step.renew)
                what = f"{len(self._held)} claims of a batch"
                self._beating = _Heartbeat(self._beat, step.heartbeat_ms, what)
        else:
            self._halt()

    def _halt(self) -> None:
        # Not joined here: a renewal still in flight is fenced by the record's
        # state, and the outcomes are stored without waiting for it.
        if self._beating is not None:
            self._halted = True
            self._beating.halt()
            self._ended.append(self._beating)
            self._beating = None

    def _beat(self) -> bool:
        held = self._held
        answers = renew_many(self._store, [renew_call(inv) for inv in held])
        if self._halted:
            # Halted meanwhile: a refusal may be the outcome stored, not a lost lease.
            return False
        self._held = still_held(held, answers)
        return len(self._held) > 0

    def end(self) -> None:
        """Stop the heartbeat and wait for its thread."""
        self._halt()
        for beat in self._ended:
            beat.stop()
