"""The asyncio Redis store's batching: one pipeline per event-loop turn.

``AsyncRedisStore`` hands each call to the ``Batcher`` of its running loop;
the batcher sends the calls of one loop turn together and gives every caller
its own reply or its own error. Kept apart from the store so that each module
stays readable; nothing here is public.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ...errors import IdempotencyStoreError
from ...metrics import log_extra
from . import scripts
from .common import chained, redis_errors, store_error

__all__ = ["Batcher", "LoopState", "Pending", "Sender", "close_at_shutdown", "within"]

# A pipeline is cut at this many calls; the rest go in the next one.
_MAX_BATCH = 512

T = TypeVar("T")

logger = logging.getLogger("onceonly")


class Sender(Protocol):
    """What the batcher needs of the store (``AsyncRedisStore``)."""

    _cluster: bool
    _noscript: type[BaseException]

    async def _pipeline(self, batch: list[Pending], *, use_sha: bool) -> list[Any]: ...

    async def _raw_batch(self, batch: list[Pending], *, use_sha: bool) -> list[Any]: ...

    async def _drop_connections(self) -> None: ...


async def within(seconds: float | None, work: Awaitable[T]) -> T:
    """Await ``work``, raising the builtin TimeoutError past ``seconds`` (None: no limit)."""
    if seconds is None:
        return await work
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)  # pragma: no cover - Python 3.10


@dataclass
class Pending:
    script: scripts.Script | None  # None: ``args`` is a whole command (the native claim)
    key: str  # the Redis key
    args: tuple[Any, ...]  # the key and the script's arguments as sent (RedisBase.wire)
    future: asyncio.Future[Any]
    # A claim's: what undoes it when its caller was cancelled before the reply
    # came (given the reply; the awaitable it returns is run to its end).
    abandoned: Callable[[Any], Awaitable[Any]] | None = None

    def command(self, use_sha: bool) -> tuple[Any, ...]:
        """The command this call sends: EVALSHA, or EVAL after NOSCRIPT, or its own."""
        if self.script is None:
            return self.args
        if use_sha:
            return ("EVALSHA", self.script.sha, 1, *self.args)
        return ("EVAL", self.script.code, 1, *self.args)


class Batcher:
    """Collects the calls of one loop turn and sends them as one pipeline."""

    def __init__(self, store: Sender, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.pending: list[Pending] = []
        self.tasks: set[asyncio.Future[Any]] = set()

    def submit(
        self,
        script: scripts.Script | None,
        key: str,
        args: tuple[Any, ...],
        abandoned: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a call for this loop turn's pipeline; its future gets the reply.

        Args:
            script: The script (None: ``args`` is a whole native command).
            key: The Redis key (for error messages).
            args: As sent.
            abandoned: For a claim: called with the reply when the caller was
                cancelled while the call was in flight (the future is then
                cancelled); the awaitable it returns (a release) is run here.
                A claim cancelled before its pipeline leaves is not sent.
        """
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.pending:
            # Runs after every task that is ready in this turn has had its go.
            self.loop.call_soon(self.flush)
        self.pending.append(Pending(script, key, args, future, abandoned))
        return future

    def flush(self) -> None:
        # A claim whose caller was cancelled before it went out is not sent:
        # nothing is taken, so there is nothing to give back.
        batch = [i for i in self.pending if i.abandoned is None or not i.future.cancelled()]
        self.pending = []
        if not batch:
            return
        for start in range(0, len(batch), _MAX_BATCH):
            task = self.loop.create_task(self.send(batch[start : start + _MAX_BATCH]))
            self.tasks.add(task)  # held until done, so it is not collected mid-flight
            task.add_done_callback(self.tasks.discard)

    async def send(self, batch: list[Pending]) -> None:
        """Send a batch in one round trip; hand each caller its reply or its error."""
        store = self.store
        # A cluster client splits the batch per node with redis-py's cluster
        # pipeline; on one server the batch goes straight to one connection.
        round_trip = store._pipeline if store._cluster else store._raw_batch
        try:
            replies = await round_trip(batch, use_sha=True)
            missing = [i for i, r in enumerate(replies) if isinstance(r, store._noscript)]
            if missing:
                # A restart, failover or SCRIPT FLUSH: EVAL runs and caches the scripts.
                again = await round_trip([batch[i] for i in missing], use_sha=False)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the whole pipeline failed: every caller hears of it
            for item in batch:
                _fail(item, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                _fail(item, reply)
            elif not item.future.done():
                item.future.set_result(reply)
            elif item.abandoned is not None and item.future.cancelled():
                # The claim landed after its caller gave up: give the key back
                # (a token-checked release: harmless if the claim took nothing).
                self._run(item.abandoned(reply))

    def _run(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work, loop=self.loop)
        self.tasks.add(task)  # held until done, so it is not collected mid-flight
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_settle)


@dataclass
class LoopState:
    """What the store keeps for one event loop."""

    batcher: Batcher | None
    ready: asyncio.Task[None] | None = None  # the loop's setup (see _start_loop)
    guard: AsyncIterator[None] | None = None
    closed: bool = False  # the loop's connections were closed as it shut down


async def close_at_shutdown(
    store_ref: weakref.ReferenceType[Sender], state: LoopState
) -> AsyncIterator[None]:
    """Close the store's connections when the loop shuts down.

    An async generator, started once per loop and held by the store: the loop
    closes it in ``shutdown_asyncgens``, which ``asyncio.run`` calls before it
    closes the loop, so the connections opened on that loop are closed on it
    while it still runs. A collected store (dead weak reference) closes
    nothing: its client may be shared.
    """
    try:
        yield
    finally:
        store = store_ref()
        if store is not None and not state.closed:
            state.closed = True
            await store._drop_connections()


def _settle(task: asyncio.Future[Any]) -> None:
    """A give-back that failed: logged; the lease ends the claim as it would have."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning(
            "onceonly: could not give back a claim whose caller was cancelled (%s); "
            "the key is held until its lease ends",
            type(task.exception()).__name__,
            extra=log_extra(None, None, "give_back_failed", "AsyncRedisStore"),
        )


def _fail(item: Pending, exc: BaseException) -> None:
    if item.future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(exc, redis_errors()):
        error: BaseException = chained(store_error(exc, item.key), exc)
    elif isinstance(exc, IdempotencyStoreError):
        error = exc
    else:
        error = IdempotencyStoreError(f"Redis pipeline failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
    item.future.set_exception(error)
