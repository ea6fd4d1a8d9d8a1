"""Counters of what idempotent calls did, per decorated function."""

from __future__ import annotations

import enum
import threading

__all__ = ["Event", "Stats"]


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


class Stats:
    """Thread-safe counters keyed by :class:`Event`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Event, int] = dict.fromkeys(Event, 0)

    def add(self, event: Event) -> None:
        """Count one occurrence of an event."""
        with self._lock:
            self._counts[event] += 1

    def __getitem__(self, event: Event) -> int:
        return self._counts[event]

    def snapshot(self) -> dict[str, int]:
        """Return the counts by event name."""
        with self._lock:
            return {event.value: n for event, n in self._counts.items()}

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(Event, 0)
