"""Counters of what idempotent calls did, and a hook for users' own metrics.

A :class:`Stats` belongs to a decorated function (``fn.stats``), an HTTP
middleware (``middleware.stats``) or a batch (``process_batch(stats=...)``).
Its counts are read with ``stats[Event.X]`` or :meth:`Stats.snapshot`; a
callback registered with :meth:`Stats.on_event` gets each counted event as a
:class:`StatsEvent`. The log records of the library carry the same facts as
``extra`` fields (:func:`log_extra`).
"""

from __future__ import annotations

import enum
import itertools
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KEY_DIGEST_CHARS", "Event", "Stats", "StatsEvent", "key_digest", "log_extra"]

logger = logging.getLogger("onceonly")

# With the GIL, next() on an itertools.count is one atomic step: counting
# needs no lock. A free-threaded build takes the lock for it.
_ATOMIC_NEXT: bool = getattr(sys, "_is_gil_enabled", lambda: True)()

# How much of a key's end (its hash digest) identifies it in events and logs.
KEY_DIGEST_CHARS = 16


class Event(enum.Enum):
    """Things a call can do; each is counted once per occurrence."""

    EXECUTED = "executed"  # ran under a claim and returned
    REPLAYED = "replayed"  # a duplicate got the stored outcome from the store
    CACHE_HIT = "cache_hit"  # a duplicate got the outcome from the local cache
    IN_PROGRESS = "in_progress"  # rejected: another execution held a live claim
    WAITED = "waited"  # slept once while another execution held the claim
    TAKEOVER = "takeover"  # claimed an orphan whose lease had passed
    RELEASED = "released"  # the function raised; the claim was released
    LEASE_LOST = "lease_lost"  # complete/release found another owner
    KEY_REUSE = "key_reuse"  # same key, different payload
    STORE_ERROR = "store_error"  # the store failed during the call
    UNPROTECTED = "unprotected"  # ran without idempotency (no key, store down, disabled)
    BAD_KEY = "bad_key"  # HTTP: a missing (where required) or malformed Idempotency-Key
    NOT_STORED = "not_stored"  # HTTP: a response delivered but not stored (5xx, too large, stream)


def key_digest(key: str | None) -> str | None:
    """The short form of an idempotency key that events and log records carry.

    A key is ``"{prefix}:{digest}"`` (``"{prefix}#{digest}"`` for Powertools'
    keys) and its digest is a hex hash of the payload or of the caller's key
    (an HTTP ``Idempotency-Key`` is hashed with its scope), so its last
    :data:`KEY_DIGEST_CHARS` characters are a hash: they tell keys apart and
    match the end of the stored key, and never hold payload or a raw key.

    Args:
        key: The key, or None.

    Returns:
        Its last 16 characters, or None.
    """
    return None if key is None else key[-KEY_DIGEST_CHARS:]


def log_extra(
    function: str | None,
    key: str | None,
    outcome: str,
    store: str | None = None,
    duration_ms: int | None = None,
) -> dict[str, Any]:
    """The ``extra`` fields of a log record of the library (every name starts ``onceonly_``).

    Args:
        function: The function's, batch handler's or middleware's name, or None.
        key: The idempotency key (only its :func:`key_digest` is logged), or None.
        outcome: What happened, in a word (an :class:`Event` value, or ``failed``).
        store: The store's class name, or None.
        duration_ms: How long the function ran, where known.

    Returns:
        ``{"onceonly_function": ..., "onceonly_key_digest": ..., "onceonly_outcome": ...,
        "onceonly_store": ..., "onceonly_duration_ms": ...}``.
    """
    return {
        "onceonly_function": function,
        "onceonly_key_digest": key_digest(key),
        "onceonly_outcome": outcome,
        "onceonly_store": store,
        "onceonly_duration_ms": duration_ms,
    }


@dataclass(frozen=True, slots=True)
class StatsEvent:
    """One counted event, as a callback registered with :meth:`Stats.on_event` gets it.

    Attributes:
        event: What happened.
        function: The decorated function's name, the batch handler's, or the
            HTTP middleware's (``"asgi"``, ``"wsgi"``, ``"flask:<app>"``, ``"django"``).
        key_digest: The end of the idempotency key (:func:`key_digest`), or
            None when the event has none (no key in the payload, a bad
            ``Idempotency-Key``, a batch that ran unprotected).
        store: The store's class name (``"RedisStore"``), or None.
        duration_ms: How long the function ran, for EXECUTED and RELEASED
            (measured only while a callback is registered), else None.
    """

    event: Event
    function: str | None = None
    key_digest: str | None = None
    store: str | None = None
    duration_ms: int | None = None


Callback = Callable[[StatsEvent], object]


class Stats:
    """Thread-safe counters keyed by :class:`Event`, and the callbacks told of each.

    Each event has an ``itertools.count``: adding is one ``next()``. A read
    takes ``next()`` too, under the lock, and subtracts the reads before it,
    so every read is exact however many threads are adding meanwhile.
    ``repr(stats)`` lists the counts that are not zero: ``Stats(executed=3, replayed=5)``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Event, itertools.count[int]] = {}
        self._reads: dict[Event, int] = {}
        # A tuple, replaced (never changed) under the lock: add() reads it without one.
        self._callbacks: tuple[Callback, ...] = ()
        self._warned: list[Callback] = []
        self._fresh()

    def _fresh(self) -> None:
        self._counters = {event: itertools.count() for event in Event}
        self._reads = dict.fromkeys(Event, 0)

    def add(
        self,
        event: Event,
        function: str | None = None,
        key: str | None = None,
        store: str | None = None,
        duration_ms: int | None = None,
    ) -> None:
        """Count one occurrence of an event, and tell the registered callbacks.

        Args:
            event: What happened.
            function: The name of what it happened to (for the callbacks).
            key: Its idempotency key; callbacks get only its :func:`key_digest`.
            store: The store's class name.
            duration_ms: How long the function ran, where known.
        """
        if _ATOMIC_NEXT:
            next(self._counters[event])
        else:  # pragma: no cover - free-threaded Python
            with self._lock:
                next(self._counters[event])
        if self._callbacks:
            self._emit(StatsEvent(event, function, key_digest(key), store, duration_ms))

    @property
    def listening(self) -> bool:
        """Whether a callback is registered (the library times runs only then)."""
        return bool(self._callbacks)

    def on_event(self, callback: Callback) -> Callback:
        """Call ``callback(StatsEvent)`` on each event counted from now on.

        It runs in the thread (or task) that counts the event, inside the
        call, so it should be quick. An exception from it is logged (at
        WARNING the first time, then at DEBUG) and the call goes on. A
        callback registered twice is called once.

        Args:
            callback: Takes one :class:`StatsEvent`.

        Returns:
            ``callback`` itself, so that ``@fn.stats.on_event`` decorates it.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"on_event takes a callable, got {type(callback).__name__}")
        with self._lock:
            if callback not in self._callbacks:
                self._callbacks = (*self._callbacks, callback)
        return callback

    def off_event(self, callback: Callback) -> bool:
        """Stop calling ``callback``.

        Returns:
            Whether it was registered.
        """
        with self._lock:
            kept = tuple(c for c in self._callbacks if c != callback)
            found = len(kept) < len(self._callbacks)
            self._callbacks = kept
        return found

    def _emit(self, event: StatsEvent) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                with self._lock:
                    first = callback not in self._warned
                    if first:
                        self._warned.append(callback)
                logger.log(
                    logging.WARNING if first else logging.DEBUG,
                    "onceonly: an on_event callback (%s) raised on %s; the call goes on",
                    getattr(callback, "__qualname__", type(callback).__name__),
                    event.event.value,
                    exc_info=True,
                    extra=log_extra(event.function, None, event.event.value, event.store),
                )

    def _read(self, event: Event) -> int:
        # Under self._lock. Every earlier read took one next() of its own.
        reads = self._reads[event]
        self._reads[event] = reads + 1
        return next(self._counters[event]) - reads

    def __getitem__(self, event: Event) -> int:
        with self._lock:
            return self._read(event)

    def snapshot(self) -> dict[str, int]:
        """The counts by event name (``Event.value``), every event included, zeros too.

        Each count is exact when it is read; the events are read one after
        another while calls may go on counting, so the dict is not one
        instant across events. It is a new dict, the caller's to keep.

        Returns:
            ``{"executed": 3, "replayed": 5, "cache_hit": 0, ...}`` in :class:`Event` order.
        """
        with self._lock:
            return {event.value: self._read(event) for event in self._counters}

    def reset(self) -> None:
        """Set every counter back to zero (the callbacks stay registered)."""
        with self._lock:
            self._fresh()

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={n}" for name, n in self.snapshot().items() if n)
        return f"Stats({counts})"
