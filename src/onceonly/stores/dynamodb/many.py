"""A batch's conditional calls side by side: DynamoDBStore's ``claim_many`` and its kin.

DynamoDB has no conditional batch write: ``BatchWriteItem`` takes no
condition, and ``TransactWriteItems`` fails whole when one of its conditions
does (a single duplicate in a batch would fail every claim). So a batch of
records costs one conditional call per record; this module runs those calls
on a bounded pool of threads of the store's own, so a batch waits about as
long as its slowest call instead of the sum of them.

Each call is the store's own single-call method (``claim``, ``complete``...),
so the error mapping and every decision stay the single call's. The answers
are the ones ``stores.protocol``'s one-by-one fallback gives, in the calls'
order: a result, or the ``CorruptRecordError`` of that key; any other
exception (DynamoDB is down, a bad argument) fails the whole batch, as it
would one by one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, TypeVar

from ...errors import CorruptRecordError, IdempotencyConfigError
from ...records import ClaimResult
from ..protocol import (
    ClaimCall,
    CompleteCall,
    ReleaseCall,
    RenewCall,
    claim_one,
    complete_one,
    one_by_one,
    release_one,
    renew_one,
)

__all__ = ["DEFAULT_MAX_PARALLEL", "MAX_PARALLEL_LIMIT", "ManyCalls", "ParallelCalls"]

# botocore's own default connection pool is 10: an injected default client
# keeps every call of a batch on a pooled connection.
DEFAULT_MAX_PARALLEL = 10
# A sanity bound: each thread holds a stack and an HTTP connection.
MAX_PARALLEL_LIMIT = 256

C = TypeVar("C")
R = TypeVar("R")


def check_max_parallel(max_parallel: object) -> int:
    """Return ``max_parallel`` if it is an integer from 1 to 256.

    Raises:
        IdempotencyConfigError: It is not.
    """
    if type(max_parallel) is not int or not 1 <= max_parallel <= MAX_PARALLEL_LIMIT:
        raise IdempotencyConfigError(
            f"max_parallel must be an integer from 1 to {MAX_PARALLEL_LIMIT}, got {max_parallel!r}"
        )
    return max_parallel


def pool_size(client: Any) -> int | None:
    """The connection pool size of a boto3 client (``max_pool_connections``), if it says."""
    size = getattr(
        getattr(getattr(client, "meta", None), "config", None), "max_pool_connections", None
    )
    return size if type(size) is int and size > 0 else None


class ParallelCalls:
    """Runs one function over many calls on a bounded, lazily made pool of threads.

    The pool holds at most ``workers`` threads named ``onceonly-dynamodb-batch-N``,
    is made by the first batch of more than one call, reused by the next ones,
    shut down by :meth:`close` (made again if used after that, or in a child
    process after ``fork``). Idle threads end with the interpreter:
    ``concurrent.futures`` joins them at exit.

    Args:
        max_parallel: The most calls in flight at once, an integer from 1 to 256.
        client: The boto3 client: ``max_parallel`` is capped at its
            ``max_pool_connections`` (more threads would only queue for a connection).

    Raises:
        IdempotencyConfigError: ``max_parallel`` is not an integer from 1 to 256.
    """

    def __init__(self, max_parallel: object, client: Any) -> None:
        workers = check_max_parallel(max_parallel)
        self.workers = min(workers, pool_size(client) or workers)
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        with self._lock:
            # A pool inherited across fork() has no threads in the child: make another.
            if self._executor is None or self._pid != pid:
                self._executor = ThreadPoolExecutor(
                    self.workers, thread_name_prefix="onceonly-dynamodb-batch"
                )
                self._pid = pid
            return self._executor

    def run(self, function: Callable[[C], R], calls: Sequence[C]) -> list[R | Exception]:
        """Return ``function(call)`` for each call, in order, a CorruptRecordError in its place.

        Every call started has ended when this returns or raises: none is left
        writing behind the caller's back.

        Raises:
            Exception: The first (in the calls' order) exception of a call other
                than CorruptRecordError; the calls not yet started then never start.
        """
        if len(calls) <= 1 or self.workers == 1:
            # Nothing to overlap: no thread hop.
            return one_by_one(calls, function)
        futures = [self._pool().submit(function, call) for call in calls]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(_fails_batch(f) for f in done):
                # As one by one would, start no more calls once one has failed the batch.
                for future in futures:
                    future.cancel()
            wait(futures)
        except BaseException:
            # Interrupted (KeyboardInterrupt): start nothing more; calls under way end.
            for future in futures:
                future.cancel()
            raise
        answers: list[R | Exception] = []
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                answers.append(future.result())
            elif isinstance(error, CorruptRecordError):
                answers.append(error)
            else:
                raise error
        return answers

    def close(self) -> None:
        """Let the calls under way finish and end the pool's threads."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():
            executor.shutdown(wait=True)


def _fails_batch(future: Future[Any]) -> bool:
    error = future.exception()
    return error is not None and not isinstance(error, CorruptRecordError)


class ManyCalls:
    """``claim_many``, ``complete_many``, ``release_many``, ``renew_many`` over the single calls.

    A base class of :class:`~onceonly.stores.dynamodb.DynamoDBStore`: the
    subclass has the single calls and sets ``_parallel``.
    """

    _parallel: ParallelCalls

    @property
    def max_parallel(self) -> int:
        """The most calls of one batch in flight at once."""
        return self._parallel.workers

    claim: Callable[..., ClaimResult]
    complete: Callable[..., bool]
    release: Callable[..., bool]
    renew: Callable[..., bool]

    def claim_many(self, calls: Sequence[ClaimCall]) -> list[ClaimResult | Exception]:
        """Claim many keys side by side: each a ``claim``, its answer in its place.

        Raises:
            IdempotencyStoreError: DynamoDB failed (the first such call's error).
        """
        return self._parallel.run(partial(claim_one, self), calls)

    def complete_many(self, calls: Sequence[CompleteCall]) -> list[bool | Exception]:
        """Complete many claims side by side: each a ``complete``, its answer in its place.

        Raises:
            IdempotencyStoreError: DynamoDB failed, or an outcome is too large
                (the first such call's error).
        """
        return self._parallel.run(partial(complete_one, self), calls)

    def release_many(self, calls: Sequence[ReleaseCall]) -> list[bool | Exception]:
        """Release many claims side by side: each a ``release``, its answer in its place.

        Raises:
            IdempotencyStoreError: DynamoDB failed (the first such call's error).
        """
        return self._parallel.run(partial(release_one, self), calls)

    def renew_many(self, calls: Sequence[RenewCall]) -> list[bool | Exception]:
        """Renew many claims side by side (a batch's heartbeat): each a ``renew``.

        Raises:
            IdempotencyStoreError: DynamoDB failed (the first such call's error).
        """
        return self._parallel.run(partial(renew_one, self), calls)
