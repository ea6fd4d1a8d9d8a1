"""An asyncio store over a sync one whose client has no asyncio interface.

SQLite and boto3 block; each operation runs in a worker thread with
``asyncio.to_thread`` so the event loop never waits on them. Every decision is
the sync store's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..records import ClaimResult, Record

__all__ = ["InThreadStore"]


class InThreadStore:
    """Runs each operation of ``self.sync`` in a worker thread (a base class).

    Attributes:
        sync: The sync store every call goes to.
    """

    sync: Any

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it."""
        result: ClaimResult = await asyncio.to_thread(
            self.sync.claim,
            key,
            token=token,
            lease_ms=lease_ms,
            ttl_ms=ttl_ms,
            fingerprint=fingerprint,
        )
        return result

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        done: bool = await asyncio.to_thread(
            self.sync.complete, key, token=token, outcome=outcome, ttl_ms=ttl_ms
        )
        return done

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it."""
        done: bool = await asyncio.to_thread(self.sync.release, key, token=token)
        return done

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        done: bool = await asyncio.to_thread(self.sync.renew, key, token=token, lease_ms=lease_ms)
        return done

    async def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None."""
        record: Record | None = await asyncio.to_thread(self.sync.get, key)
        return record

    async def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        done: bool = await asyncio.to_thread(self.sync.delete, key)
        return done

    def close(self) -> None:
        """Close the sync store's connections."""
        self.sync.close()
