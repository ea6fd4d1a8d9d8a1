"""The asyncio driver: carries out the engine's steps against an async store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
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
from .records import Acquired
from .stores.protocol import (
    AsyncStore,
    claim_many_async,
    complete_many_async,
    release_many_async,
    renew_many_async,
    wall_ms,
)

__all__ = ["drive", "drive_batch", "pump"]

T = TypeVar("T")

logger = logging.getLogger("onceonly")

# Releases started after their caller was cancelled: held here so that they are
# not garbage-collected before they finish.
_giving_back: set[asyncio.Future[Any]] = set()


async def _claim(claim: Awaitable[T], give_back: Callable[[T], Awaitable[Any] | None]) -> T:
    """Await a claim; if the caller is cancelled while it is in flight, undo what it took.

    A claim already sent lands whether or not its caller still waits (the
    pipeline went out; the worker thread runs on). Left alone, a claim that
    took the key after its caller was cancelled would lock the key until the
    lease ends. So the claim is shielded, and when it finishes after the
    cancellation, ``give_back(answer)`` releases whatever it acquired.
    """
    inflight = asyncio.ensure_future(claim)
    try:
        return await asyncio.shield(inflight)
    except asyncio.CancelledError:
        inflight.add_done_callback(lambda done: _give_back(done, give_back))
        raise


def _give_back(done: asyncio.Future[T], give_back: Callable[[T], Awaitable[Any] | None]) -> None:
    if done.cancelled() or done.exception() is not None:
        return  # nothing was taken, or nobody can tell: the lease ends it
    release = give_back(done.result())
    if release is not None:
        task = asyncio.ensure_future(release)
        _giving_back.add(task)
        task.add_done_callback(_giving_back.discard)


async def _heartbeat(
    beat: Callable[[], Awaitable[bool]], interval_ms: int, what: str, key: str | None = None
) -> None:
    """Await ``beat`` every interval until cancelled or it returns False.

    ``beat`` renews one call's claim, or every claim a batch holds. A store
    error is logged and the next beat tried: the store may come back before
    the lease ends.
    """
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            if await beat() is not True:
                return
        except IdempotencyStoreError as exc:
            logger.warning(
                "onceonly: heartbeat for %s failed (%s)",
                what,
                exc,
                extra=log_extra(None, key, "heartbeat_failed"),
            )


def _renew_one(
    store: AsyncStore, inv: Invocation, clock: Callable[[], int]
) -> Callable[[], Awaitable[bool]]:
    async def beat() -> bool:
        lease_ms = renewal_lease_ms(inv, clock())
        if lease_ms <= 0:
            logger.debug(
                "onceonly: heartbeat for key %s stops at the invocation's end",
                inv.key,
                extra=log_extra(None, inv.key, "heartbeat_stopped"),
            )
            return False
        if await store.renew(inv.key, token=inv.token, lease_ms=lease_ms) is True:
            return True
        logger.warning(
            "onceonly: heartbeat found the lease on key %s lost",
            inv.key,
            extra=log_extra(None, inv.key, Event.LEASE_LOST.value),
        )
        return False

    return beat


async def _execute(
    step: Execute,
    store: AsyncStore,
    inv: Invocation,
    call: Callable[[], Awaitable[Any]],
    clock: Callable[[], int],
) -> Any:
    if step.heartbeat_ms is None:
        return await call()
    beat = asyncio.ensure_future(
        _heartbeat(_renew_one(store, inv, clock), step.heartbeat_ms, f"key {inv.key}", inv.key)
    )
    try:
        return await call()
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def pump(steps: Generator[Any, Any, T], do: Callable[[Any], Awaitable[Any]]) -> T:
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
            reply = await do(step)
        except BaseException as exc:  # handed to the flow, which re-raises what it must
            error = exc


async def drive(
    steps: Generator[Step, Any, Any],
    store: AsyncStore,
    inv: Invocation,
    call: Callable[[], Awaitable[Any]],
    clock: Callable[[], int] = wall_ms,
) -> Any:
    """Carry out a flow's steps until it returns; return what it returns.

    Args:
        steps: ``engine.flow(policy, inv)``.
        store: The async store.
        inv: The invocation the flow was made for.
        call: Returns an awaitable that runs the user's function.
        clock: The policy's clock, which ``inv.deadline_ms`` is read on.

    Returns:
        The call's result (fresh or replayed).
    """

    async def do(step: Step) -> Any:
        if step is CLAIM:
            claim = store.claim(
                inv.key,
                token=inv.token,
                lease_ms=inv.lease_ms,
                ttl_ms=inv.ttl_ms,
                fingerprint=inv.fingerprint,
            )
            if getattr(store, "gives_back_abandoned_claims", False) is True:
                # The store itself releases a claim whose caller is cancelled in
                # flight: no task and shield per claim (about a third of the
                # throughput of 256 tasks, measured).
                return await claim
            return await _claim(
                claim,
                lambda answer: (
                    store.release(inv.key, token=inv.token)
                    if isinstance(answer, Acquired)
                    else None
                ),
            )
        if isinstance(step, Execute):
            return await _execute(step, store, inv, call, clock)
        if isinstance(step, Complete):
            return await store.complete(
                inv.key, token=inv.token, outcome=step.outcome, ttl_ms=inv.ttl_ms
            )
        if step is RELEASE:
            # Shielded: a caller cancelled mid-run must still give the key back.
            return await asyncio.shield(store.release(inv.key, token=inv.token))
        if isinstance(step, Sleep):
            await asyncio.sleep(step.ms / 1000)
            return None
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    return await pump(steps, do)


async def drive_batch(
    steps: Generator[BatchStep, Any, BatchResult],
    store: AsyncStore,
    records: Sequence[Any],
    handler: Callable[[Any], Awaitable[Any]],
) -> BatchResult:
    """Carry out a batch flow's steps (see ``batch_engine.batch_flow``); return its result."""
    heartbeat = _BatchHeartbeat(store)

    async def do(step: BatchStep) -> Any:
        heartbeat.follow(step)
        if isinstance(step, RunItem):
            return await handler(records[step.index])
        if isinstance(step, ClaimMany):
            invocations = step.invocations

            def give_back(answers: list[Any]) -> Awaitable[Any] | None:
                taken = [
                    release_call(inv)
                    for inv, answer in zip(invocations, answers, strict=True)
                    if isinstance(answer, Acquired)
                ]
                return release_many_async(store, taken) if taken else None

            claims = claim_many_async(store, [claim_call(inv) for inv in invocations])
            return await _claim(claims, give_back)
        if isinstance(step, CompleteMany):
            calls = [complete_call(inv, out) for inv, out in step.items]
            return await _settled(complete_many_async(store, calls))
        if isinstance(step, ReleaseMany):
            return await _settled(
                release_many_async(store, [release_call(inv) for inv in step.invocations])
            )
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    try:
        return await pump(steps, do)
    finally:
        await heartbeat.end()


async def _settled(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even when cancelled meanwhile, then raise the cancellation.

    For the writes that store a batch's outcomes and give its claims back: a
    cancelled batch (cancelled again while it settles) still makes them, and
    they have landed by the time the cancellation reaches the caller.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller gets
        raise


class _BatchHeartbeat:
    """One heartbeat over the consecutive RunItems of a batch that carry claims.

    Started at the first of them, it renews that step's claims (gathered: one
    pipeline on AsyncRedisStore) until a step of another kind.
    """

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._held: list[Invocation] = []
        self._beating: asyncio.Task[None] | None = None
        self._ended: list[asyncio.Task[None]] = []

    def follow(self, step: BatchStep) -> None:
        """Start the heartbeat, keep it, or stop it, as ``step`` asks."""
        if isinstance(step, RunItem) and step.renew and step.heartbeat_ms is not None:
            if self._beating is None:
                self._held = list(step.renew)
                what = f"{len(self._held)} claims of a batch"
                self._beating = asyncio.ensure_future(
                    _heartbeat(self._beat, step.heartbeat_ms, what)
                )
        else:
            self._halt()

    def _halt(self) -> None:
        # Not awaited here: the outcomes are stored at once, and a cancellation
        # of the batch meanwhile must reach the flow at its own step.
        if self._beating is not None:
            self._beating.cancel()
            self._ended.append(self._beating)
            self._beating = None

    async def _beat(self) -> bool:
        held = self._held
        answers = await renew_many_async(self._store, [renew_call(inv) for inv in held])
        self._held = still_held(held, answers)
        return len(self._held) > 0

    async def end(self) -> None:
        """Stop the heartbeat and wait for its task to end."""
        self._halt()
        if not self._ended:
            return
        await asyncio.wait(self._ended)
        for beat in self._ended:
            if not beat.cancelled() and beat.exception() is not None:
                logger.warning(
                    "onceonly: heartbeat of a batch failed (%s)",
                    type(beat.exception()).__name__,
                    extra=log_extra(None, None, "heartbeat_failed"),
                )
