"""What the sync and asyncio stream consumers share: options, state, the calls they send.

Everything here decides; nothing here sends. :class:`ConsumerBase` holds the
checked options, the read state and the counts, and builds each call a pass
needs (the read of new entries, a reclaim page, the heartbeat of the entries
in hand); ``core`` plans and reads the commits. The sync consumer
(``consumer.py``) and the asyncio one (``async_consumer.py``) only send them.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from ..errors import IdempotencyConfigError, IdempotencyStoreError, OnceOnlyWarning
from ..metrics import log_extra
from ..naming import display_name
from ..stores.redis.common import NEVER_DECODE
from . import core, scripts
from .config import ConsumerConfig
from .model import (
    EntryResult,
    EntryStatus,
    StatsCounter,
    StreamEntry,
    StreamStats,
    StreamStatus,
)
from .redis_io import check_client, is_cluster

__all__ = ["ConsumerBase", "ReadSend", "ReadStep", "logger"]

logger = logging.getLogger("onceonly")


def _socket_timeout(client: Any) -> float | None:
    """The client's socket timeout in seconds (None: none, or not found)."""
    for owner in (
        getattr(client, "connection_pool", None),
        getattr(client, "nodes_manager", None),
        client,
    ):
        kwargs = getattr(owner, "connection_kwargs", None)
        if isinstance(kwargs, dict):
            value = kwargs.get("socket_timeout")
            return float(value) if isinstance(value, (int, float)) else None
    return None


class ReadStep(enum.Enum):
    """What the read flow asks a consumer to send, besides a script call."""

    NEW = "read new entries (XREADGROUP ... >)"
    ENSURE_GROUP = "create the group (XGROUP CREATE ... MKSTREAM)"


ReadSend = ReadStep | scripts.Call  # one thing the read flow asks a consumer to send


class ConsumerBase:
    """The checked options, read state and counts of one consumer, and the calls it sends.

    Args:
        client: A redis-py client of the flavour ``asyncio`` says.
        handler: The user's handler (checked callable only).
        config: The checked options.
        asyncio: Whether ``client`` must be a ``redis.asyncio`` client.

    Raises:
        IdempotencyConfigError: A client of the wrong kind, a handler that is
            not callable, or ``same_slot=False`` on a cluster client.
    """

    def __init__(
        self, client: Any, handler: Callable[..., Any], config: ConsumerConfig, *, asyncio: bool
    ) -> None:
        check_client(client, asyncio=asyncio)
        if not callable(handler):
            raise IdempotencyConfigError(f"handler must be callable, got {handler!r}")
        self._cluster = is_cluster(client)
        if self._cluster and not config.same_slot:
            raise IdempotencyConfigError(
                "same_slot=False needs a standalone or Sentinel client: on Redis Cluster every "
                "key of a script must be in one slot"
            )
        timeout = _socket_timeout(client)
        if timeout is not None and config.block_ms > 0 and timeout * 1000 <= config.block_ms:
            warnings.warn(
                f"the client's socket_timeout ({timeout} s) is not above block_ms "
                f"({config.block_ms} ms): a read that waits for new entries would time out. "
                "Raise socket_timeout or lower block_ms",
                OnceOnlyWarning,
                stacklevel=3,
            )
        self.config = config
        self.client = client
        self.handler = handler
        self._name = display_name(handler)
        self._state = core.ReadState()
        self._stats = StatsCounter()
        self._group_ready = False
        self._stopping = threading.Event()

    def _log_extra(self, outcome: str) -> dict[str, Any]:
        """The ``extra`` fields of this consumer's log records (its handler's name as function)."""
        return log_extra(self._name, None, outcome, type(self).__name__)

    @property
    def stats(self) -> StreamStats:
        """The counts so far (a snapshot)."""
        return self._stats.snapshot()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or SIGTERM / SIGINT came) since ``run()`` started.

        A long handler may check it to give up early: raising leaves its
        entry pending (FAILED), for this consumer after a restart or for
        another one's reclaim.
        """
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop: finish the batch in hand, handle nothing more, read nothing new.

        Callable from any thread (and from a handler). Handlers already
        running finish and their entries are committed; entries of the batch
        not yet handled are left pending (for a restart under the same name,
        or another consumer's reclaim) and have no result. ``run()`` then
        returns, and ``run_once()`` reads nothing until ``run()`` is called again.
        """
        self._stopping.set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT call :meth:`stop` meanwhile (main thread only); then as before."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: object) -> None:
            logger.warning(
                "onceonly: %s received: the stream consumer stops after the batch in hand",
                signal.Signals(signum).name,
                extra=self._log_extra("stopping"),
            )
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _status(self, reply: object) -> StreamStatus:
        pending, lag, consumers, last = core.group_info(reply, self.config.group)
        return StreamStatus(pending, lag, consumers, last, self.stats)

    def _started(self) -> None:
        """Note that ``run()`` starts: an earlier :meth:`stop` no longer holds."""
        self._stopping.clear()

    def _xgroup_create(self) -> tuple[bytes, bytes, str]:
        config = self.config
        return config.stream.encode(), config.group.encode(), config.start_id

    def _read_flow(self) -> Generator[ReadSend, Any, tuple[list[core.RawEntry], int]]:
        """One read's decisions: a page of entries, and how many of them were reclaimed.

        Yields what to send next (a script call, :attr:`ReadStep.NEW` or
        :attr:`ReadStep.ENSURE_GROUP`) and is sent its reply, or thrown its
        ``IdempotencyStoreError``; the sync and asyncio consumers only send.
        """
        try:
            return (yield from self._read_page())
        except IdempotencyStoreError as exc:
            if not self._no_group(exc):
                raise
        # The group (or the whole stream) was deleted since it was made: make it
        # again and read once more. Entries it hands out again are only
        # acknowledged (their dedup records are still there).
        yield ReadStep.ENSURE_GROUP
        self._state.restart()
        return (yield from self._read_page())

    def _read_page(self) -> Generator[ReadSend, Any, tuple[list[core.RawEntry], int]]:
        call = self._pending_call()
        if call is not None:
            entries = scripts.pending_entries((yield call))
            if not self._state.drained(entries):
                return list(entries), 0
        call = self._reclaim_call()
        if call is not None:
            reclaimed = self._reclaimed((yield call))
            if reclaimed:
                return reclaimed, len(reclaimed)
        return core.new_entries((yield ReadStep.NEW)), 0

    def _unless_group_exists(self, exc: BaseException) -> None:
        """Pass when ``XGROUP CREATE`` failed only because the group is there (BUSYGROUP).

        Raises:
            IdempotencyStoreError: It failed for another reason.
        """
        if "BUSYGROUP" not in str(exc):
            raise scripts.stream_error(exc, self.config.stream) from exc

    def _read_error(self, exc: BaseException) -> IdempotencyStoreError:
        """A failed read's documented error."""
        return scripts.stream_error(exc, self.config.stream)

    def _read_new_command(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``XREADGROUP ... >`` as sent (arguments, options)."""
        config = self.config
        args: list[Any] = ["XREADGROUP", "GROUP", config.group, config.consumer]
        args += ["COUNT", config.batch_size]
        if config.block_ms > 0:
            args += ["BLOCK", config.block_ms]
        args += ["STREAMS", config.stream, ">"]
        options: dict[str, Any] = {NEVER_DECODE: True}
        if self._cluster:
            # XREADGROUP's keys are "movable": redis-py would ask the server
            # (COMMAND GETKEYS) on every read to route it. The stream's node is known.
            options["target_nodes"] = self.client.get_node_from_key(config.stream.encode())
        # The command name stays text (redis-py routes and parses by it).
        wire = (args[0], *(a.encode() if isinstance(a, str) else a for a in args[1:]))
        return wire, options

    def _pending_call(self) -> scripts.Call | None:
        """The call re-reading this consumer's pending entries, while it drains them."""
        if not self._state.draining:
            return None
        return scripts.pending_call(self.config, self._state.cursor)

    def _reclaim_call(self) -> scripts.Call | None:
        """A reclaim page's call when one is due, else None."""
        config, state = self.config, self._state
        if config.min_idle_ms is None or not state.reclaim_due(time.monotonic()):
            return None
        return scripts.reclaim_call(config, config.min_idle_ms, state.reclaim_cursor)

    def _reclaimed(self, reply: object) -> list[core.RawEntry]:
        """A reclaim page's entries: claimed ones, then those deleted while pending."""
        assert self.config.min_idle_ms is not None  # only sent with reclaim on
        cursor, entries, deleted = scripts.reclaim_reply(reply)
        self._state.reclaimed(cursor, time.monotonic(), self.config.min_idle_ms)
        # Ids deleted while pending (Redis >= 7 drops them from the PEL itself):
        # LOST, acknowledged (a no-op there) and logged with the batch.
        return [*entries, *((entry_id, None, 0) for entry_id in deleted)]

    def _extend_call(self, raws: Sequence[core.RawEntry]) -> scripts.Call | None:
        """The heartbeat call keeping a batch's entries from being reclaimed (None: no need)."""
        held = [(entry_id, count) for entry_id, fields, count in raws if fields is not None]
        if self.config.min_idle_ms is None or not held:
            return None
        return scripts.extend_call(self.config, held)

    @property
    def _beat_seconds(self) -> float:
        assert self.config.min_idle_ms is not None
        return self.config.min_idle_ms / 3000

    def _handler_failed(self, entry: StreamEntry, exc: BaseException) -> core.Plan:
        # The type only: a message may quote the payload. The full text
        # goes to the entry's error record, for its dead letter.
        logger.warning(
            "onceonly: the stream handler raised %s on entry %s (delivery %d); it stays pending",
            type(exc).__name__,
            entry.id,
            entry.deliveries,
            extra=self._log_extra("failed"),
        )
        error = core.error_text(exc)
        return core.failed_plan(self.config, entry.id, entry.deliveries, error, entry.event_id)

    def _finish(
        self,
        raws: Sequence[core.RawEntry],
        reclaimed: int,
        plans: Sequence[core.Plan],
        sent: core.Batch,
        replies: Sequence[object],
    ) -> list[EntryResult]:
        """The batch's results; counted, and its LOST entries logged once."""
        out = core.results(plans, sent, replies)
        self._stats.add(len(raws), out, reclaimed)
        lost = sum(1 for r in out if r.status is EntryStatus.LOST)
        if lost:
            logger.warning(
                "onceonly: %d pending entries of the stream were deleted or trimmed before "
                "they were handled; acknowledged as LOST",
                lost,
                extra=self._log_extra("lost"),
            )
        return out

    @staticmethod
    def _no_group(exc: BaseException) -> bool:
        """Whether a read failed because the group (or the stream) was deleted."""
        return "NOGROUP" in str(exc.__cause__)

    def _heartbeat_failed(self, exc: BaseException) -> None:
        logger.warning(
            "onceonly: could not extend the idle time of entries in hand (%s); they may be "
            "reclaimed by another consumer (their commits are then FENCED)",
            type(exc.__cause__ or exc).__name__,
            extra=self._log_extra("heartbeat_failed"),
        )
