"""The synchronous driver: carries out the engine's steps against a sync store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
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
from .stores.protocol import Store, claim_many, complete_many, release_many

__all__ = ["drive", "drive_batch"]

T = TypeVar("T")

logger = logging.getLogger("onceonly")


class _Heartbeat:
    """Renews a lease from a daemon thread until stopped or the lease is lost."""

    def __init__(self, store: Store, inv: Invocation, interval_ms: int) -> None:
        self._store = store
        self._inv = inv
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onceonly-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        inv = self._inv
        while not self._stop.wait(self._interval):
            try:
                renewed = self._store.renew(inv.key, token=inv.token, lease_ms=inv.lease_ms)
            except IdempotencyStoreError as exc:
                # Keep trying: the store may come back before the lease ends.
                logger.warning("onceonly: heartbeat for key %s failed (%s)", inv.key, exc)
                continue
            if renewed is not True:
                logger.warning("onceonly: heartbeat found the lease on key %s lost", inv.key)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _execute(step: Execute, store: Store, inv: Invocation, call: Callable[[], Any]) -> Any:
    if step.heartbeat_ms is None:
        return call()
    heartbeat = _Heartbeat(store, inv, step.heartbeat_ms)
    try:
        return call()
    finally:
        heartbeat.stop()


def _pump(steps: Generator[Any, Any, T], do: Callable[[Any], Any]) -> T:
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
    steps: Generator[Step, Any, Any], store: Store, inv: Invocation, call: Callable[[], Any]
) -> Any:
    """Carry out a flow's steps until it returns; return what it returns.

    Args:
        steps: ``engine.flow(policy, inv)``.
        store: The sync store.
        inv: The invocation the flow was made for.
        call: Runs the user's function with its arguments.

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
            return _execute(step, store, inv, call)
        if isinstance(step, Complete):
            return store.complete(inv.key, token=inv.token, outcome=step.outcome, ttl_ms=inv.ttl_ms)
        if step is RELEASE:
            return store.release(inv.key, token=inv.token)
        if isinstance(step, Sleep):
            time.sleep(step.ms / 1000)
            return None
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    return _pump(steps, do)


def drive_batch(
    steps: Generator[BatchStep, Any, BatchResult],
    store: Store,
    records: Sequence[Any],
    handler: Callable[[Any], Any],
) -> BatchResult:
    """Carry out a batch flow's steps (see ``batch.batch_flow``); return its result."""

    def do(step: BatchStep) -> Any:
        if isinstance(step, RunItem):
            return handler(records[step.index])
        if isinstance(step, ClaimMany):
            return claim_many(store, [claim_call(inv) for inv in step.invocations])
        if isinstance(step, CompleteMany):
            return complete_many(store, [complete_call(inv, out) for inv, out in step.items])
        if isinstance(step, ReleaseMany):
            return release_many(store, [release_call(inv) for inv in step.invocations])
        raise AssertionError(f"unknown step {step!r}")  # pragma: no cover

    return _pump(steps, do)
