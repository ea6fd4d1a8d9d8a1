"""Record <-> bytes.

The layout is plain ASCII up to the outcome, so that a Redis Lua script can read
the header with ``string.sub``/``string.find`` without touching the outcome::

    o1|<status P|C>|<token, 32 hex>|<deadline ms, decimal>|<fingerprint hex or empty>|<outcome>

``o1`` is the format version. IN_PROGRESS records carry no outcome; COMPLETED
records always carry one. Anything else is a :class:`CorruptRecordError`.
Nothing here ever unpickles or evaluates stored bytes.

This is the one definition of a valid record. The Redis scripts apply the
same rule in Lua (``stores/redis/lua/_prelude.lua``, ``parse``), the SQLite
claim in SQL and the DynamoDB claim through :func:`from_fields`: a value that
breaks it is never overwritten by a claim, whatever its deadline says.
"""

from __future__ import annotations

import re
from typing import cast

from .errors import CorruptRecordError
from .records import Record, Status

__all__ = ["HEADER_PREFIX", "corrupt", "decode", "encode", "from_fields"]

HEADER_PREFIX = b"o1|"

_HEADER = re.compile(rb"o1\|([PC])\|([0-9a-f]{32})\|([0-9]{1,16})\|([0-9a-f]{0,128})\|")


def corrupt(store: str, problem: str) -> CorruptRecordError:
    """The error for a stored value that is not a record, saying where it is and what to do.

    Args:
        store: Which store holds it, e.g. ``"the Redis store"`` or ``"SQLite store db.sqlite3"``.
        problem: What is wrong with it, without any of its bytes.

    Returns:
        The error (the caller raises it).
    """
    return CorruptRecordError(
        f"{store} holds a value under this key that is not an onceonly record ({problem}); "
        "nothing was overwritten. Look at it with `onceonly inspect --store <store URL> <key>` "
        "and delete it with `onceonly purge --store <store URL> --key <key>` to let the key "
        "run again (or upgrade onceonly, if a newer version wrote it)"
    )


def encode(record: Record) -> bytes:
    """Return the stored form of a record.

    Args:
        record: The record; its token must be 32 lowercase hex digits.

    Returns:
        The bytes to store.

    Raises:
        ValueError: The record breaks the format (a programming error here,
            never caused by stored data).
    """
    outcome = record.outcome
    if (record.status is Status.COMPLETED) != (outcome is not None):
        raise ValueError("a COMPLETED record needs an outcome; an IN_PROGRESS one has none")
    header = (
        f"o1|{record.status.value}|{record.token}|{record.deadline_ms}|{record.fingerprint or ''}|"
    ).encode()
    if _HEADER.fullmatch(header) is None:
        raise ValueError("record fields do not fit the stored format")
    return header + outcome if outcome is not None else header


def decode(data: bytes, *, store: str = "the store") -> Record:
    """Parse stored bytes into a record.

    Args:
        data: Bytes read from a store.
        store: Which store they come from, for the error message.

    Returns:
        The record.

    Raises:
        CorruptRecordError: The bytes are not a record in a known format.
    """
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise corrupt(store, f"{type(data).__name__}, not bytes")
        data = bytes(data)
    match = _HEADER.match(data)
    if match is None:
        raise corrupt(store, "bad or unknown header")
    # One groups() call and positional fields: this runs on every duplicate's path.
    status_code, token, deadline, fingerprint = match.groups()
    outcome = data[match.end() :]
    if status_code == b"P":
        if outcome:
            raise corrupt(store, "an IN_PROGRESS record that carries an outcome")
        return Record(
            Status.IN_PROGRESS, token.decode(), int(deadline), fingerprint.decode() or None, None
        )
    if not outcome:
        raise corrupt(store, "a COMPLETED record without an outcome")
    return Record(
        Status.COMPLETED, token.decode(), int(deadline), fingerprint.decode() or None, outcome
    )


_TOKEN = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")
_STATUS_TEXT = {"P": Status.IN_PROGRESS, "C": Status.COMPLETED}


def from_fields(
    status: object,
    token: object,
    deadline_ms: object,
    fingerprint: object,
    outcome: object,
    *,
    store: str = "the store",
) -> Record:
    """Build a record from separately stored fields (a SQL row, a DynamoDB item), checking each.

    Args:
        status: "P" or "C".
        token: 32 lowercase hex digits.
        deadline_ms: Integer milliseconds.
        fingerprint: Hex digest or None.
        outcome: Bytes for COMPLETED, None for IN_PROGRESS.
        store: Which store they come from, for the error message.

    Returns:
        The record.

    Raises:
        CorruptRecordError: A field is missing or malformed.
    """
    record_status = _STATUS_TEXT.get(status) if isinstance(status, str) else None
    problem = None
    if record_status is None:
        problem = "a status that is neither P nor C"
    elif not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        problem = "a token that is not 32 lower-case hex digits"
    elif type(deadline_ms) is not int or deadline_ms < 0:
        problem = "a deadline that is not an integer >= 0"
    elif fingerprint is not None and (
        not isinstance(fingerprint, str) or _FINGERPRINT.fullmatch(fingerprint) is None
    ):
        problem = "a fingerprint that is not 1 to 128 lower-case hex digits"
    elif record_status is Status.IN_PROGRESS and outcome is not None:
        problem = "an IN_PROGRESS record that carries an outcome"
    elif record_status is Status.COMPLETED and (not isinstance(outcome, bytes) or not outcome):
        problem = "a COMPLETED record without an outcome"
    if problem is not None:
        raise corrupt(store, problem)
    assert record_status is not None
    return Record(
        record_status,
        cast(str, token),
        cast(int, deadline_ms),
        cast("str | None", fingerprint),
        cast("bytes | None", outcome),
    )
