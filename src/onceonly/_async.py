"""The asyncio driver: carries out the engine's steps against an async store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, TypeVar

from .batch_engine import BatchResult, BatchStep, ClaimMany, CompleteMany, ReleaseMany, RunItem
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
)
from .errors import IdempotencyStoreError
from .records import Acquired
from .stores.protocol import (
    AsyncStore,
    claim_many_async,
    complete_many_async,
    release_many_async,
)

__all__ = ["drive", "drive_batch"]

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


async def _heartbeat(store: AsyncStore, inv: Invocation, interval_ms: int) -> None:
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            renewed = await store.renew(inv.key, token=inv.token, lease_ms=inv.lease_ms)
        except IdempotencyStoreError as exc:
            logger.warning("onceonly: heartbeat for key %s failed (%s)", inv.key, exc)
            continue
        if renewed is not True:
            logger.warning("onceonly: heartbeat found the lease on key %s lost", inv.key)
            return


async def _execute(
    step: Execute, store: AsyncStore, inv: Invocation, call: Callable[[], Awaitable[Any]]
) -> Any:
    if step.heartbeat_ms is None:
        return await call()
    beat = asyncio.ensure_future(_heartbeat(store, inv, step.heartbeat_ms))
    try:
        return await call()
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def _pump(steps: Generator[Any, Any, T], do: Callable[[Any], Awaitable[Any]]) -> T:
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
) -> Any:
    """Carry out a flow's steps until it returns; return what it returns.

    Args:
        steps: ``engine.flow(policy, inv)``.
        store: The async store.
        inv: The invocation the flow was made for.
        call: Returns an awaitable that runs the user's function.

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
            return await _claim(
                claim,
                lambda answer: (
                    store.release(inv.key, token=inv.token)
                    if isinstance(answer, Acquired)
                    else None
                ),
            )
        if isinstance(step, Execute):
            return await _execute(step, store, inv, call)
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

    return await _pump(steps, do)


async def drive_batch(
    steps: Generator[BatchStep, Any, BatchResult],
    store: AsyncStore,
    records: Sequence[Any],
    handler: Callable[[Any], Awaitable[Any]],
) -> BatchResult:
    """Carry out a batch flow's steps (see ``batch.batch_flow``); return its result."""

    async def do(step: BatchStep) -> Any:
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
            return await complete_many_async(
                store, [complete_call(inv, out) for inv, out in step.items]
            )
        if isinstance(step, ReleaseMany):
            calls = [release_call(inv) for inv in step.invocations]
            return await asyncio.shield(release_many_async(store, calls))
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    return await _pump(steps, do)
