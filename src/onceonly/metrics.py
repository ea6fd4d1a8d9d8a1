"""Counters of what idempotent calls did, per decorated function."""

from __future__ import annotations

import enum
import itertools
import sys
import threading

__all__ = ["Event", "Stats"]

# With the GIL, next() on an itertools.count is one atomic step: counting
# needs no lock. A free-threaded build takes the lock for it.
_ATOMIC_NEXT: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


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


class Stats:
    """Thread-safe counters keyed by :class:`Event`.

    Each event has an ``itertools.count``: adding is one ``next()``. A read
    takes ``next()`` too, under the lock, and subtracts the reads before it,
    so every read is exact however many threads are adding meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[Event, itertools.count[int]] = {}
        self._reads: dict[Event, int] = {}
        self._fresh()

    def _fresh(self) -> None:
        self._counters = {event: itertools.count() for event in Event}
        self._reads = dict.fromkeys(Event, 0)

    def add(self, event: Event) -> None:
        """Count one occurrence of an event."""
        if _ATOMIC_NEXT:
            next(self._counters[event])
        else:  # pragma: no cover - free-threaded Python
            with self._lock:
                next(self._counters[event])

    def _read(self, event: Event) -> int:
        # Under self._lock. Every earlier read took one next() of its own.
        reads = self._reads[event]
        self._reads[event] = reads + 1
        return next(self._counters[event]) - reads

    def __getitem__(self, event: Event) -> int:
        with self._lock:
            return self._read(event)

    def snapshot(self) -> dict[str, int]:
        """Return the counts by event name."""
        with self._lock:
            return {event.value: self._read(event) for event in self._counters}

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._fresh()
