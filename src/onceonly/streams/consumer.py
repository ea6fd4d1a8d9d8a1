"""StreamConsumer: a Redis Streams consumer whose effects are applied exactly once.

Each pass (:meth:`StreamConsumer.run_once`) costs two round trips: one read
(its own pending entries first, then, when a reclaim scan is due, entries
idle on other consumers with ``XAUTOCLAIM``, else new ones with
``XREADGROUP ... >``) and
one pipeline that carries the batch's commits (one script call for up to
``scripts.MAX_CALL_ENTRIES`` entries, each committed on its own), its dead
letters (a script call each) and its commands (the error record of a FAILED
entry, the XACK of a LOST one). The group is created (``MKSTREAM``) on the
first pass: one more, once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from .._sync import pump
from ..errors import IdempotencyStoreError
from ..stores.redis.common import redis_errors
from . import core, scripts
from .config import ConsumerConfig, default_consumer_name
from .consumer_base import ConsumerBase, ReadSend, ReadStep
from .effects import Effects
from .model import EntryResult, StreamEntry, StreamStatus
from .redis_io import run_call, send_batch

__all__ = ["Handler", "StreamConsumer"]

Handler = Callable[[StreamEntry], Effects | None]


class _Heartbeat:
    """A thread that resets the idle time of a batch's entries while the batch is in hand.

    Every ``min_idle_ms / 3`` while a batch is held it sends that batch's
    extend script (``XCLAIM ... JUSTID`` to this consumer, for the entries it
    still holds at the count it read), so no other consumer's reclaim takes
    an entry that is being handled or waits in the batch. A failed send is
    logged and tried again at the next beat.

    One thread serves every batch of the consumer (starting a thread per
    batch cost more than a millisecond on a busy machine); it is started at
    the first batch and ends after a beat's time without a batch. A batch's
    end waits for a beat being sent, so none is sent for it afterwards.
    """

    def __init__(self, consumer: StreamConsumer) -> None:
        self._consumer = consumer
        self._changed = threading.Condition()
        self._call: scripts.Call | None = None
        self._due = 0.0  # monotonic time of the held batch's next beat
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, call: scripts.Call) -> Iterator[None]:
        """Beat for ``call``'s entries until the block ends."""
        with self._changed:
            self._call = call
            self._due = time.monotonic() + self._consumer._beat_seconds
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked
                self._thread = threading.Thread(
                    target=self._run, name="onceonly-heartbeat", daemon=True
                )
                self._thread.start()
            else:
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:  # taken while a beat is sent: none after this
                self._call = None

    def _run(self) -> None:
        consumer = self._consumer
        with self._changed:
            while True:
                if self._call is None:
                    if not self._changed.wait(consumer._beat_seconds) and self._call is None:
                        self._thread = None  # a beat's time without a batch: end
                        return
                    continue
                wait = self._due - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                try:
                    run_call(consumer.client, self._call)
                except IdempotencyStoreError as exc:
                    consumer._heartbeat_failed(exc)
                self._due = time.monotonic() + consumer._beat_seconds


class StreamConsumer(ConsumerBase):
    """Consume a Redis stream in a consumer group, applying each event's effects once.

    The handler gets a :class:`StreamEntry` and returns :class:`Effects` (or
    None: nothing to write, but the event is still recorded and
    acknowledged). Then, atomically for each entry (the batch's entries go
    in one script call, each with its own outcome): checks that
    this consumer still holds the entry at the delivery count it read
    (else FENCED: another consumer reclaimed it), checks the event's dedup
    record (present: acknowledge only, DUPLICATE), checks that every effect
    will succeed (else FAILED, nothing written), applies the effects, writes
    the dedup record with its TTL and ``XACK``s (APPLIED). A crash at any
    point leaves all of that or none of it; a redelivered entry is applied
    once.

    Args:
        client: A sync redis-py client: ``redis.Redis``, ``redis.RedisCluster``
            or a Sentinel master. Its ``socket_timeout`` must exceed ``block_ms``.
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
        handler: ``handler(entry) -> Effects | None``. An exception leaves the
            entry pending (FAILED) and is kept, as ``Type: message``, for its
            dead letter.

    Raises:
        IdempotencyConfigError: Bad options, a client that is not a sync
            redis-py client, or ``same_slot=False`` on a cluster client.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        group: str,
        handler: Handler,
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
    ) -> None:
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
        super().__init__(client, handler, config, asyncio=False)
        self._heartbeat = _Heartbeat(self)

    def status(self) -> StreamStatus:
        """The group as the server sees it (``XINFO GROUPS``) and this consumer's counts.

        Returns:
            Pending entries, lag (Redis / Valkey >= 7), consumers, the last
            delivered id, and :attr:`stats`. The ACL user needs ``+xinfo|groups``.

        Raises:
            IdempotencyStoreError: Redis failed, or the group does not exist yet.
        """
        try:
            reply = self.client.xinfo_groups(self.config.stream.encode())
        except redis_errors() as exc:
            raise scripts.stream_error(exc, self.config.stream) from exc
        return self._status(reply)

    # -- reading -------------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the group (and the stream, ``MKSTREAM``) unless it exists; True if created.

        Raises:
            IdempotencyStoreError: Redis failed or refused.
        """
        stream, group, start = self._xgroup_create()
        try:
            self.client.xgroup_create(stream, group, id=start, mkstream=True)
            created = True
        except redis_errors() as exc:
            self._unless_group_exists(exc)
            created = False
        self._group_ready = True
        return created

    def _read(self) -> tuple[list[core.RawEntry], int]:
        """A page of entries (see ``ConsumerBase._read_flow``), and how many were reclaimed."""
        return pump(self._read_flow(), self._send)

    def _send(self, step: ReadSend) -> Any:
        if step is ReadStep.ENSURE_GROUP:
            return self.ensure_group()
        if step is ReadStep.NEW:
            wire, options = self._read_new_command()
            try:
                return self.client.execute_command(*wire, **options)
            except redis_errors() as exc:
                raise self._read_error(exc) from exc
        return run_call(self.client, step)

    # -- one pass ------------------------------------------------------------------

    def run_once(self) -> list[EntryResult]:
        """Read one batch, handle it, commit it; one result per entry read.

        Returns:
            The results, in the order read (empty when nothing came within
            ``block_ms``, or after :meth:`stop`). Entries left unhandled by
            a :meth:`stop` during the pass stay pending and have no result.

        Raises:
            IdempotencyStoreError: A read or the commit pipeline failed.
                After a failed commit the next pass re-reads this consumer's
                pending entries: each commit is safe to send again.
        """
        if self._stopping.is_set():
            return []
        if not self._group_ready:
            self.ensure_group()
        raws, reclaimed = self._read()
        with self._keep_held(raws):
            plans = []
            for raw in raws:
                if self._stopping.is_set():
                    break  # the rest stays pending, unhandled
                plans.append(self._plan(raw))
            try:
                sent = core.batch(self.config, plans)
                replies = send_batch(self.client, sent.items)
            except BaseException:
                self._state.restart()
                raise
        return self._finish(raws, reclaimed, plans, sent, replies)

    def _keep_held(self, raws: list[core.RawEntry]) -> AbstractContextManager[object]:
        """Keep the batch's entries from being reclaimed until it is committed."""
        call = self._extend_call(raws)
        return nullcontext() if call is None else self._heartbeat.holding(call)

    def _plan(self, raw: core.RawEntry) -> core.Plan:
        step = core.classify(self.config, raw)
        if isinstance(step, core.Plan):
            return step
        try:
            outcome = self.handler(step)
        except Exception as exc:
            return self._handler_failed(step, exc)
        return core.commit_plan(self.config, step, outcome)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Call :meth:`run_once` until :meth:`stop` is called, or SIGTERM / SIGINT comes.

        Called in the main thread, it makes SIGTERM and SIGINT call
        :meth:`stop` while it runs (their previous handlers are put back when
        it returns): the batch in hand is finished as :meth:`stop` says,
        within the time its running handler takes (or ``block_ms`` when
        idle). Errors propagate (the caller decides whether to retry).
        """
        self._started()
        with self._signals():
            while not self._stopping.is_set():
                self.run_once()
