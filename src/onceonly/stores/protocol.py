"""The store protocol: six atomic operations, sync and async.

A store keeps one record per key. ``claim`` takes the key when it is absent,
expired, or an orphan (IN_PROGRESS past its lease), and also when it is
IN_PROGRESS under the caller's own token (a retried claim whose reply was
lost); otherwise it returns the live record in the same call. ``complete``
and ``renew`` succeed only while the record is IN_PROGRESS under the caller's
token with its lease running: the token fences every write. ``release`` drops
such a claim; it also answers True, writing nothing, when no live record is
there at all (a release retried after its reply was lost finds the key gone:
its job is done), and False only when a live record of another owner (or a
completed one) holds the key. Times are judged by the store's own clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from ..errors import CorruptRecordError
from ..records import ClaimResult, Record

__all__ = [
    "AsyncStore",
    "Store",
    "check_claim",
    "check_complete",
    "check_key",
    "check_ms",
    "check_token",
    "wall_ms",
]

C = TypeVar("C")
R = TypeVar("R")

_TOKEN = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")


def wall_ms() -> int:
    """Return the host's wall clock in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@runtime_checkable
class Store(Protocol):
    """A synchronous idempotency store."""

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key for one execution, or return the live record holding it."""
        ...

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if the caller still holds the claim."""
        ...

    def release(self, key: str, *, token: str) -> bool:
        """Drop the caller's claim for a retry; True too when no live record is left."""
        ...

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the caller's lease to ``lease_ms`` from now."""
        ...

    def get(self, key: str) -> Record | None:
        """Return the live record under a key, or None."""
        ...

    def delete(self, key: str) -> bool:
        """Remove a key whatever it holds; True if something was there."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """An asyncio idempotency store: the same operations, awaited."""

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key for one execution, or return the live record holding it."""
        ...

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if the caller still holds the claim."""
        ...

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the caller's claim for a retry; True too when no live record is left."""
        ...

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the caller's lease to ``lease_ms`` from now."""
        ...

    async def get(self, key: str) -> Record | None:
        """Return the live record under a key, or None."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove a key whatever it holds; True if something was there."""
        ...


def check_key(key: object) -> None:
    """Raise ValueError unless ``key`` is a non-empty string."""
    if type(key) is not str or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")


def check_token(token: object) -> None:
    """Raise ValueError unless ``token`` is 32 lowercase hex digits (see ``new_token``)."""
    if type(token) is not str or _TOKEN.fullmatch(token) is None:
        raise ValueError("token must be 32 lowercase hex digits (onceonly.records.new_token())")


def check_ms(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a positive integer number of milliseconds."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive integer of milliseconds, got {value!r}")


def check_claim(key: object, token: object, lease_ms: object, ttl_ms: object, fp: object) -> None:
    """Check the arguments of ``claim``; raise ValueError on the first bad one."""
    check_key(key)
    check_token(token)
    check_ms("lease_ms", lease_ms)
    check_ms("ttl_ms", ttl_ms)
    if fp is not None and (type(fp) is not str or _FINGERPRINT.fullmatch(fp) is None):
        raise ValueError("fingerprint must be None or a lowercase hex digest")


def check_complete(key: object, token: object, outcome: object, ttl_ms: object) -> None:
    """Check the arguments of ``complete``; raise ValueError on the first bad one."""
    check_key(key)
    check_token(token)
    check_ms("ttl_ms", ttl_ms)
    if type(outcome) is not bytes or not outcome:
        raise ValueError("outcome must be non-empty bytes (an outcome envelope)")


# -- many keys at once (record batches) ---------------------------------------------
#
# A store may offer claim_many / complete_many / release_many / renew_many,
# sending every call in one round trip (RedisStore pipelines them). Otherwise
# the calls go one by one. Either way each call gets its own answer: a result, or the
# CorruptRecordError of its key. A failure of the store itself (it is down)
# raises for the whole batch.


class ClaimCall(NamedTuple):
    """The arguments of one ``claim``."""

    key: str
    token: str
    lease_ms: int
    ttl_ms: int
    fingerprint: str | None


class CompleteCall(NamedTuple):
    """The arguments of one ``complete``."""

    key: str
    token: str
    outcome: bytes
    ttl_ms: int


class ReleaseCall(NamedTuple):
    """The arguments of one ``release``."""

    key: str
    token: str


class RenewCall(NamedTuple):
    """The arguments of one ``renew``."""

    key: str
    token: str
    lease_ms: int


def one_by_one(calls: Sequence[C], operation: Callable[[C], R]) -> list[R | Exception]:
    """``operation(call)`` for each call in turn; a CorruptRecordError is that call's answer.

    Raises:
        Exception: Any other error of a call; the calls after it are not made.
    """
    answers: list[R | Exception] = []
    for call in calls:
        try:
            answers.append(operation(call))
        except CorruptRecordError as exc:
            answers.append(exc)
    return answers


def claim_one(store: Any, c: ClaimCall) -> ClaimResult:
    """One ``store.claim`` with the arguments of ``c``."""
    result: ClaimResult = store.claim(
        c.key, token=c.token, lease_ms=c.lease_ms, ttl_ms=c.ttl_ms, fingerprint=c.fingerprint
    )
    return result


def complete_one(store: Any, c: CompleteCall) -> bool:
    """One ``store.complete`` with the arguments of ``c``."""
    answer: bool = store.complete(c.key, token=c.token, outcome=c.outcome, ttl_ms=c.ttl_ms)
    return answer


def release_one(store: Any, c: ReleaseCall) -> bool:
    """One ``store.release`` with the arguments of ``c``."""
    answer: bool = store.release(c.key, token=c.token)
    return answer


def renew_one(store: Any, c: RenewCall) -> bool:
    """One ``store.renew`` with the arguments of ``c``."""
    answer: bool = store.renew(c.key, token=c.token, lease_ms=c.lease_ms)
    return answer


def claim_many(store: Any, calls: Sequence[ClaimCall]) -> list[ClaimResult | Exception]:
    """Claim many keys, in one round trip where the store can."""
    if callable(getattr(store, "claim_many", None)):
        return list(store.claim_many(calls))
    return one_by_one(calls, partial(claim_one, store))


def complete_many(store: Any, calls: Sequence[CompleteCall]) -> list[bool | Exception]:
    """Complete many claims, in one round trip where the store can."""
    if callable(getattr(store, "complete_many", None)):
        return list(store.complete_many(calls))
    return one_by_one(calls, partial(complete_one, store))


def release_many(store: Any, calls: Sequence[ReleaseCall]) -> list[bool | Exception]:
    """Release many claims, in one round trip where the store can."""
    if callable(getattr(store, "release_many", None)):
        return list(store.release_many(calls))
    return one_by_one(calls, partial(release_one, store))


def renew_many(store: Any, calls: Sequence[RenewCall]) -> list[bool | Exception]:
    """Renew many claims, in one round trip where the store can (a batch's heartbeat)."""
    if callable(getattr(store, "renew_many", None)):
        return list(store.renew_many(calls))
    return one_by_one(calls, partial(renew_one, store))


async def _gathered(awaitables: list[Any]) -> list[Any]:
    import asyncio  # here, not at the top: the sync stores' cold start never loads it

    # Issued in one loop turn: AsyncRedisStore pipelines them into one round trip.
    answers = await asyncio.gather(*awaitables, return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, CorruptRecordError):
            raise answer  # the store itself failed (or a bug): the whole batch fails
    return list(answers)


async def claim_many_async(store: Any, calls: Sequence[ClaimCall]) -> list[ClaimResult | Exception]:
    """The asyncio twin of :func:`claim_many`."""
    return await _gathered(
        [
            store.claim(
                c.key,
                token=c.token,
                lease_ms=c.lease_ms,
                ttl_ms=c.ttl_ms,
                fingerprint=c.fingerprint,
            )
            for c in calls
        ]
    )


async def complete_many_async(store: Any, calls: Sequence[CompleteCall]) -> list[bool | Exception]:
    """The asyncio twin of :func:`complete_many`."""
    return await _gathered(
        [store.complete(c.key, token=c.token, outcome=c.outcome, ttl_ms=c.ttl_ms) for c in calls]
    )


async def release_many_async(store: Any, calls: Sequence[ReleaseCall]) -> list[bool | Exception]:
    """The asyncio twin of :func:`release_many`."""
    return await _gathered([store.release(c.key, token=c.token) for c in calls])


async def renew_many_async(store: Any, calls: Sequence[RenewCall]) -> list[bool | Exception]:
    """The asyncio twin of :func:`renew_many`."""
    return await _gathered([store.renew(c.key, token=c.token, lease_ms=c.lease_ms) for c in calls])
