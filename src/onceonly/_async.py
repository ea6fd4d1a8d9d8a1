"""The asyncio driver: carries out the engine's steps against an async store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from .engine import Claim, Complete, Execute, Invocation, Release, Sleep, Step
from .errors import IdempotencyStoreError
from .stores.protocol import AsyncStore

__all__ = ["drive"]

logger = logging.getLogger("onceonly")


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
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            if isinstance(step, Claim):
                reply = await store.claim(
                    inv.key,
                    token=inv.token,
                    lease_ms=inv.lease_ms,
                    ttl_ms=inv.ttl_ms,
                    fingerprint=inv.fingerprint,
                )
            elif isinstance(step, Execute):
                reply = await _execute(step, store, inv, call)
            elif isinstance(step, Complete):
                reply = await store.complete(
                    inv.key, token=inv.token, outcome=step.outcome, ttl_ms=inv.ttl_ms
                )
            elif isinstance(step, Release):
                # Shielded: a caller cancelled mid-run must still give the key back.
                reply = await asyncio.shield(store.release(inv.key, token=inv.token))
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.ms / 1000)
            else:  # pragma: no cover - the engine yields nothing else
                raise AssertionError(f"unknown step {step!r}")
        except BaseException as exc:  # handed to the flow, which re-raises what it must
            error = exc
