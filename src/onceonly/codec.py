"""Record <-> bytes.

The layout is plain ASCII up to the outcome, so that a Redis Lua script can read
the header with ``string.sub``/``string.find`` without touching the outcome::

    o1|<status P|C>|<token, 32 hex>|<deadline ms, decimal>|<fingerprint hex or empty>|<outcome>

``o1`` is the format version. IN_PROGRESS records carry no outcome; COMPLETED
records always carry one. Anything else is a :class:`CorruptRecordError`.
Nothing here ever unpickles or evaluates stored bytes.
"""

from __future__ import annotations

import re
from typing import cast

from .errors import CorruptRecordError
from .records import Record, Status

__all__ = ["HEADER_PREFIX", "decode", "encode", "from_fields"]

HEADER_PREFIX = b"o1|"

_HEADER = re.compile(rb"o1\|([PC])\|([0-9a-f]{32})\|([0-9]{1,16})\|([0-9a-f]{0,128})\|")
_STATUS = {b"P": Status.IN_PROGRESS, b"C": Status.COMPLETED}


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


def decode(data: bytes) -> Record:
    """Parse stored bytes into a record.

    Args:
        data: Bytes read from a store.

    Returns:
        The record.

    Raises:
        CorruptRecordError: The bytes are not a record in a known format.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptRecordError(
            f"stored value is {type(data).__name__}, not bytes; delete the key to let it run again"
        )
    data = bytes(data)
    match = _HEADER.match(data)
    if match is None:
        raise CorruptRecordError(
            "stored value is not an onceonly record (bad or unknown header); "
            "delete the key (onceonly purge) or upgrade onceonly if a newer version wrote it"
        )
    status = _STATUS[match.group(1)]
    outcome = data[match.end() :]
    if status is Status.IN_PROGRESS:
        if outcome:
            raise CorruptRecordError("stored IN_PROGRESS record carries an outcome")
        outcome_or_none: bytes | None = None
    else:
        if not outcome:
            raise CorruptRecordError("stored COMPLETED record has no outcome")
        outcome_or_none = outcome
    fingerprint = match.group(4).decode()
    return Record(
        status=status,
        token=match.group(2).decode(),
        deadline_ms=int(match.group(3)),
        fingerprint=fingerprint or None,
        outcome=outcome_or_none,
    )


_TOKEN = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")
_STATUS_TEXT = {"P": Status.IN_PROGRESS, "C": Status.COMPLETED}


def from_fields(
    status: object, token: object, deadline_ms: object, fingerprint: object, outcome: object
) -> Record:
    """Build a record from separately stored fields (a SQL row, a DynamoDB item), checking each.

    Args:
        status: "P" or "C".
        token: 32 lowercase hex digits.
        deadline_ms: Integer milliseconds.
        fingerprint: Hex digest or None.
        outcome: Bytes for COMPLETED, None for IN_PROGRESS.

    Returns:
        The record.

    Raises:
        CorruptRecordError: A field is missing or malformed.
    """
    record_status = _STATUS_TEXT.get(status) if isinstance(status, str) else None
    problem = None
    if record_status is None:
        problem = f"status {status!r}"
    elif not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        problem = "token"
    elif type(deadline_ms) is not int or deadline_ms < 0:
        problem = "deadline"
    elif fingerprint is not None and (
        not isinstance(fingerprint, str) or _FINGERPRINT.fullmatch(fingerprint) is None
    ):
        problem = "fingerprint"
    elif record_status is Status.IN_PROGRESS and outcome is not None:
        problem = "outcome on an IN_PROGRESS record"
    elif record_status is Status.COMPLETED and (not isinstance(outcome, bytes) or not outcome):
        problem = "missing outcome on a COMPLETED record"
    if problem is not None:
        raise CorruptRecordError(
            f"stored record has a bad {problem}; "
            "delete the key (onceonly purge) to let it run again"
        )
    assert record_status is not None
    return Record(
        record_status,
        cast(str, token),
        cast(int, deadline_ms),
        cast("str | None", fingerprint),
        cast("bytes | None", outcome),
    )
