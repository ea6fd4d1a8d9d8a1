"""The synchronous driver: carries out the engine's steps against a sync store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from .engine import Claim, Complete, Execute, Invocation, Release, Sleep, Step
from .errors import IdempotencyStoreError
from .stores.protocol import Store

__all__ = ["drive"]

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
                reply = store.claim(
                    inv.key,
                    token=inv.token,
                    lease_ms=inv.lease_ms,
                    ttl_ms=inv.ttl_ms,
                    fingerprint=inv.fingerprint,
                )
            elif isinstance(step, Execute):
                reply = _execute(step, store, inv, call)
            elif isinstance(step, Complete):
                reply = store.complete(
                    inv.key, token=inv.token, outcome=step.outcome, ttl_ms=inv.ttl_ms
                )
            elif isinstance(step, Release):
                reply = store.release(inv.key, token=inv.token)
            elif isinstance(step, Sleep):
                time.sleep(step.ms / 1000)
            else:  # pragma: no cover - the engine yields nothing else
                raise AssertionError(f"unknown step {step!r}")
        except BaseException as exc:  # handed to the flow, which re-raises what it must
            error = exc
