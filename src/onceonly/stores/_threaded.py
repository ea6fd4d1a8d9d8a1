"""An asyncio store over a sync one whose client has no asyncio interface.

SQLite and boto3 block; each operation runs in a worker thread so the event
loop never waits on them. The threads are the store's own (a bounded pool per
store), never asyncio's default executor: an application whose own
``asyncio.to_thread`` work fills that executor would otherwise hold every
store call, heartbeat renewals included, until its work ends, and leases
would run out under live functions. Every decision is the sync store's.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import IdempotencyConfigError
from ..records import ClaimResult, Record

__all__ = ["MAX_WORKERS_LIMIT", "InThreadStore"]

T = TypeVar("T")

# A sanity bound on max_workers: each thread may hold a connection (SQLite
# opens one per thread) and a stack.
MAX_WORKERS_LIMIT = 1024


class InThreadStore:
    """Runs each operation of ``self.sync`` on the store's own worker threads (a base class).

    A subclass builds ``sync`` and calls :meth:`_init_threads`. The pool is
    made on first use, holds at most ``max_workers`` threads named
    ``onceonly-<name>-N``, is shut down by :meth:`close` and made again if
    the store is used after that (or in a child process after ``fork``).

    Attributes:
        sync: The sync store every call goes to.
        max_workers: The most threads the pool runs at once.
    """

    sync: Any
    max_workers: int

    def _init_threads(self, max_workers: object, name: str) -> None:
        """Validate ``max_workers`` and set up the (lazily made) pool.

        Raises:
            IdempotencyConfigError: ``max_workers`` is not an integer from 1 to 1024.
        """
        if type(max_workers) is not int or not 1 <= max_workers <= MAX_WORKERS_LIMIT:
            raise IdempotencyConfigError(
                f"max_workers must be an integer from 1 to {MAX_WORKERS_LIMIT}, got {max_workers!r}"
            )
        self.max_workers = max_workers
        self._thread_prefix = f"onceonly-{name}"
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._executor_lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        executor, pid = self._executor, os.getpid()
        if executor is None or self._executor_pid != pid:
            with self._executor_lock:
                # A pool inherited across fork() has no threads in the child: make another.
                if self._executor is None or self._executor_pid != pid:
                    self._executor = ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix=self._thread_prefix
                    )
                    self._executor_pid = pid
                executor = self._executor
        return executor

    async def _in_thread(self, method: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``method(*args, **kwargs)`` on the pool, in a copy of this task's context."""
        # As asyncio.to_thread does: context variables (tracing spans...) follow the call.
        context = contextvars.copy_context()
        call = functools.partial(context.run, method, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it."""
        result: ClaimResult = await self._in_thread(
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
        done: bool = await self._in_thread(
            self.sync.complete, key, token=token, outcome=outcome, ttl_ms=ttl_ms
        )
        return done

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it."""
        done: bool = await self._in_thread(self.sync.release, key, token=token)
        return done

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        done: bool = await self._in_thread(self.sync.renew, key, token=token, lease_ms=lease_ms)
        return done

    async def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None."""
        record: Record | None = await self._in_thread(self.sync.get, key)
        return record

    async def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        done: bool = await self._in_thread(self.sync.delete, key)
        return done

    def close(self) -> None:
        """Let the calls under way finish, end the pool's threads, close the sync store."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._executor_pid == os.getpid():
            executor.shutdown(wait=True)
        self.sync.close()
