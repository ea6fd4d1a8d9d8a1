"""In-process stores: a dict under a lock, for tests and single processes."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import IdempotencyConfigError
from ..records import ClaimResult, Record
from . import _rules
from .protocol import check_claim, check_complete, check_key, check_ms, check_token, wall_ms

__all__ = ["AsyncMemoryStore", "MemoryStore"]

# Sweep expired records once per this many writes, so memory stays bounded
# by the live set without a timer thread.
_SWEEP_EVERY = 4096


class MemoryStore:
    """A thread-safe store in this process's memory.

    Args:
        clock: Integer milliseconds since the epoch; the host clock by default.
            Tests pass their own to move time without sleeping.
    """

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be a callable returning integer milliseconds")
        self._clock = clock or wall_ms
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}
        self._writes = 0

    def _put(self, key: str, record: Record, now: int) -> None:
        self._records[key] = record
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            for k in [k for k, r in self._records.items() if r.deadline_ms <= now]:
                del self._records[k]

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it (see the protocol)."""
        check_claim(key, token, lease_ms, ttl_ms, fingerprint)
        with self._lock:
            now = self._clock()
            new, result = _rules.claim(
                self._records.get(key), now, token=token, lease_ms=lease_ms, fingerprint=fingerprint
            )
            if new is not None:
                self._put(key, new, now)
            return result

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        check_complete(key, token, outcome, ttl_ms)
        with self._lock:
            now = self._clock()
            new = _rules.complete(
                self._records.get(key), now, token=token, outcome=outcome, ttl_ms=ttl_ms
            )
            if new is None:
                return False
            self._put(key, new, now)
            return True

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it; True too when no live record is left."""
        check_key(key)
        check_token(token)
        with self._lock:
            drop, released = _rules.release(self._records.get(key), self._clock(), token=token)
            if drop:
                del self._records[key]
            return released

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)
        with self._lock:
            now = self._clock()
            new = _rules.renew(self._records.get(key), now, token=token, lease_ms=lease_ms)
            if new is None:
                return False
            self._put(key, new, now)
            return True

    def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None."""
        check_key(key)
        with self._lock:
            record = self._records.get(key)
            return record if _rules.is_live(record, self._clock()) else None

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        check_key(key)
        with self._lock:
            return self._records.pop(key, None) is not None

    def __len__(self) -> int:
        """Number of records held, expired ones not yet swept included."""
        return len(self._records)


class AsyncMemoryStore:
    """The asyncio twin of :class:`MemoryStore`; every operation completes without awaiting.

    Args:
        clock: As for :class:`MemoryStore`.
    """

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        self._store = MemoryStore(clock=clock)

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it."""
        return self._store.claim(
            key, token=token, lease_ms=lease_ms, ttl_ms=ttl_ms, fingerprint=fingerprint
        )

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        return self._store.complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms)

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it; True too when no live record is left."""
        return self._store.release(key, token=token)

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        return self._store.renew(key, token=token, lease_ms=lease_ms)

    async def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None."""
        return self._store.get(key)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a live record was there."""
        return self._store.delete(key)
