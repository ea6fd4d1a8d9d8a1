"""State transitions shared by the stores that run their logic in Python.

Memory and SQLite read the current record, ask these functions what to write,
and write it inside one lock or transaction. Redis runs the same rules in Lua.
A record whose deadline has passed counts as absent.
"""

from __future__ import annotations

from ..records import Acquired, ClaimResult, Found, Record, Status

__all__ = ["claim", "complete", "is_live", "owns", "release", "renew"]


def is_live(record: Record | None, now: int) -> bool:
    """Whether a record exists and its deadline has not passed."""
    return record is not None and record.deadline_ms > now


def owns(record: Record | None, now: int, token: str) -> bool:
    """Whether ``token`` holds a running claim on this record."""
    return (
        record is not None
        and record.status is Status.IN_PROGRESS
        and record.token == token
        and record.deadline_ms > now
    )


def claim(
    existing: Record | None, now: int, *, token: str, lease_ms: int, fingerprint: str | None
) -> tuple[Record | None, ClaimResult]:
    """Return (record to write or None, answer) for a claim."""
    if existing is None or existing.deadline_ms <= now:
        takeover = (
            existing is not None
            and existing.status is Status.IN_PROGRESS
            and existing.token != token
        )
        return Record(Status.IN_PROGRESS, token, now + lease_ms, fingerprint), Acquired(takeover)
    if existing.status is Status.IN_PROGRESS and existing.token == token:
        return Record(Status.IN_PROGRESS, token, now + lease_ms, fingerprint), Acquired()
    return None, Found(existing, now)


def complete(
    existing: Record | None, now: int, *, token: str, outcome: bytes, ttl_ms: int
) -> Record | None:
    """Return the COMPLETED record to write, or None when the claim is lost.

    A complete retried after its reply was lost finds the record completed
    under its own token and succeeds again, leaving the record as it is.
    """
    if (
        existing is not None
        and existing.status is Status.COMPLETED
        and existing.token == token
        and existing.deadline_ms > now
    ):
        return existing
    if existing is None or not owns(existing, now, token):
        return None
    return Record(Status.COMPLETED, token, now + ttl_ms, existing.fingerprint, outcome)


def release(existing: Record | None, now: int, *, token: str) -> tuple[bool, bool]:
    """Return (delete the record?, answer) for a release.

    The caller's running claim is deleted (True). No live record at all is
    also True, with nothing to delete: a release retried after its reply was
    lost finds the key gone, and that is what it asked for. A live record of
    another owner, or a completed one, is False and stays.
    """
    if owns(existing, now, token):
        return True, True
    return False, not is_live(existing, now)


def renew(existing: Record | None, now: int, *, token: str, lease_ms: int) -> Record | None:
    """Return the IN_PROGRESS record with its lease extended, or None when lost."""
    if existing is None or not owns(existing, now, token):
        return None
    return Record(Status.IN_PROGRESS, token, now + lease_ms, existing.fingerprint)
