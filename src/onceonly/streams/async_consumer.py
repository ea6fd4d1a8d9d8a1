"""AsyncStreamConsumer: the asyncio twin of StreamConsumer, with concurrent handlers.

It makes the same decisions (``consumer_base``, ``core``) and sends the same
scripts, through ``redis.asyncio`` clients; a batch's handlers run
concurrently, up to ``concurrency`` at a time, and the batch's commits still
go in one pipelined round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .._async import pump
from ..errors import IdempotencyConfigError, IdempotencyStoreError
from ..stores.redis.common import redis_errors
from . import core, scripts
from .config import MAX_BATCH, ConsumerConfig, default_consumer_name
from .consumer_base import ConsumerBase, ReadSend, ReadStep
from .effects import Effects
from .model import EntryResult, StreamEntry, StreamStatus
from .redis_io import arun_call, asend_batch

__all__ = ["AsyncHandler", "AsyncStreamConsumer"]

AsyncHandler = Callable[[StreamEntry], "Awaitable[Effects | None] | Effects | None"]


class AsyncStreamConsumer(ConsumerBase):
    """Consume a Redis stream with a ``redis.asyncio`` client, applying each event's effects once.

    Everything :class:`~onceonly.streams.StreamConsumer` says holds here
    (per entry, atomically: ownership check, dedup record, effects, XACK;
    reclaim; the heartbeat of the entries in hand, as an asyncio task).

    The handler may be an ``async def`` (awaited) or a plain function (called
    on the event loop: keep it quick, as it blocks the loop, the other
    handlers and the heartbeat while it runs; move blocking work to
    ``asyncio.to_thread``). Up to ``concurrency`` handlers of one batch run
    at a time; the results keep the order read.

    Args:
        client: A ``redis.asyncio`` client: ``Redis``, ``RedisCluster`` or a
            Sentinel master. Its ``socket_timeout`` must exceed ``block_ms``.
        stream: See :class:`~onceonly.streams.config.ConsumerConfig`.
        group: See :class:`~onceonly.streams.config.ConsumerConfig`.
        consumer: See :class:`~onceonly.streams.config.ConsumerConfig`.
        batch_size: See :class:`~onceonly.streams.config.ConsumerConfig`.
        block_ms: See :class:`~onceonly.streams.config.ConsumerConfig`.
        min_idle_ms: See :class:`~onceonly.streams.config.ConsumerConfig`.
        max_deliveries: See :class:`~onceonly.streams.config.ConsumerConfig`.
        dead_letter_stream: See :class:`~onceonly.streams.config.ConsumerConfig`.
        dedup_ttl_seconds: See :class:`~onceonly.streams.config.ConsumerConfig`.
        event_id_field: See :class:`~onceonly.streams.config.ConsumerConfig`.
        same_slot: See :class:`~onceonly.streams.config.ConsumerConfig`.
        start_id: See :class:`~onceonly.streams.config.ConsumerConfig`.
        handler: ``handler(entry) -> Effects | None``, or an ``async def``
            returning that. An exception leaves the entry pending (FAILED).
        concurrency: How many handlers of one batch run at once (1-1000).

    Raises:
        IdempotencyConfigError: Bad options, a client that is not a
            ``redis.asyncio`` client, or ``same_slot=False`` on a cluster client.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        group: str,
        handler: AsyncHandler,
        consumer: str | None = None,
        batch_size: int = 100,
        block_ms: int = 2000,
        min_idle_ms: int | None = 60_000,
        max_deliveries: int | None = 10,
        dead_letter_stream: str | None = None,
        dedup_ttl_seconds: int = 86_400,
        event_id_field: str | None = None,
        same_slot: bool = True,
        start_id: str = "0",
        concurrency: int = 16,
    ) -> None:
        if type(concurrency) is not int or not 1 <= concurrency <= MAX_BATCH:
            raise IdempotencyConfigError(
                f"concurrency must be an int from 1 to {MAX_BATCH}, got {concurrency!r}"
            )
        config = ConsumerConfig(
            stream=stream,
            group=group,
            consumer=default_consumer_name() if consumer is None else consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            min_idle_ms=min_idle_ms,
            max_deliveries=max_deliveries,
            dead_letter_stream=dead_letter_stream,
            dedup_ttl_seconds=dedup_ttl_seconds,
            event_id_field=event_id_field,
            same_slot=same_slot,
            start_id=start_id,
        )
        super().__init__(client, handler, config, asyncio=True)
        self.concurrency = concurrency

    async def status(self) -> StreamStatus:
        """The group as the server sees it (``XINFO GROUPS``) and this consumer's counts.

        Returns:
            Pending entries, lag (Redis / Valkey >= 7), consumers, the last
            delivered id, and :attr:`stats`. The ACL user needs ``+xinfo|groups``.

        Raises:
            IdempotencyStoreError: Redis failed, or the group does not exist yet.
        """
        try:
            reply = await self.client.xinfo_groups(self.config.stream.encode())
        except redis_errors() as exc:
            raise scripts.stream_error(exc, self.config.stream) from exc
        return self._status(reply)

    # -- reading -------------------------------------------------------------------

    async def ensure_group(self) -> bool:
        """Create the group (and the stream, ``MKSTREAM``) unless it exists; True if created.

        Raises:
            IdempotencyStoreError: Redis failed or refused.
        """
        stream, group, start = self._xgroup_create()
        try:
            await self.client.xgroup_create(stream, group, id=start, mkstream=True)
            created = True
        except redis_errors() as exc:
            self._unless_group_exists(exc)
            created = False
        self._group_ready = True
        return created

    async def _read(self) -> tuple[list[core.RawEntry], int]:
        """A page of entries (see ``ConsumerBase._read_flow``), and how many were reclaimed."""
        return await pump(self._read_flow(), self._send)

    async def _send(self, step: ReadSend) -> Any:
        if step is ReadStep.ENSURE_GROUP:
            return await self.ensure_group()
        if step is ReadStep.NEW:
            wire, options = self._read_new_command()
            try:
                return await self.client.execute_command(*wire, **options)
            except redis_errors() as exc:
                raise self._read_error(exc) from exc
        return await arun_call(self.client, step)

    # -- one pass ------------------------------------------------------------------

    async def run_once(self) -> list[EntryResult]:
        """Read one batch, handle it (concurrently), commit it; one result per entry read.

        Returns:
            The results, in the order read (entries a :meth:`stop` left
            unhandled stay pending and have no result).

        Raises:
            IdempotencyStoreError: A read or the commit pipeline failed (the
                next pass re-reads this consumer's pending entries).
        """
        if self._stopping.is_set():
            return []
        if not self._group_ready:
            await self.ensure_group()
        raws, reclaimed = await self._read()
        call = self._extend_call(raws)
        beat = None if call is None else asyncio.ensure_future(self._beat(call))
        try:
            gate = asyncio.Semaphore(self.concurrency)
            planned = await asyncio.gather(*(self._plan(raw, gate) for raw in raws))
            plans = [plan for plan in planned if plan is not None]  # None: stopped first
            try:
                sent = core.batch(self.config, plans)
                replies = await asend_batch(self.client, sent.items)
            except BaseException:
                self._state.restart()
                raise
        finally:
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        return self._finish(raws, reclaimed, plans, sent, replies)

    async def _beat(self, call: scripts.Call) -> None:
        """Reset the idle time of the batch's entries every ``min_idle_ms / 3``."""
        while True:
            await asyncio.sleep(self._beat_seconds)
            try:
                await arun_call(self.client, call)
            except IdempotencyStoreError as exc:
                self._heartbeat_failed(exc)

    async def _plan(self, raw: core.RawEntry, gate: asyncio.Semaphore) -> core.Plan | None:
        step = core.classify(self.config, raw)
        if isinstance(step, core.Plan):
            return step
        async with gate:
            if self._stopping.is_set():
                return None  # stopped before its turn: it stays pending, unhandled
            try:
                outcome = self.handler(step)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
            except Exception as exc:
                return self._handler_failed(step, exc)
        return core.commit_plan(self.config, step, outcome)

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Await :meth:`run_once` until :meth:`stop` is called, or SIGTERM / SIGINT comes.

        Signals as in :meth:`StreamConsumer.run` (main thread only, previous
        handlers put back). On stop, handlers already running finish and
        are committed; those not started leave their entries pending.
        """
        self._started()
        with self._signals():
            while not self._stopping.is_set():
                await self.run_once()
