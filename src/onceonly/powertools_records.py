"""Records that Powertools' idempotency utility wrote, read as onceonly records.

A team that moves a function from Powertools for AWS Lambda (Python) to
onceonly on a live table or Redis meets, under the same keys, what Powertools
stored. This module is the one rule that turns such a record into a
:class:`~onceonly.records.Record`; the DynamoDB store (an item) and the Redis
store (a JSON value) both use it, and the Redis scripts apply the same checks
in Lua (``stores/redis/lua/_prelude.lua``, ``powertools``). Only Powertools'
default attribute names are read:

- ``status``: ``"COMPLETED"``, ``"INPROGRESS"`` or ``"EXPIRED"`` (Powertools
  never stores the last one; it is read as ended).
- ``expiration``: epoch seconds (in DynamoDB the store's ``expiry_attr``).
- ``in_progress_expiration``: epoch milliseconds, optional (Powertools writes
  it when it knew the Lambda's remaining time, and leaves it on the item once
  COMPLETED).
- ``data``: the JSON text of the stored response, optional.
- ``validation``: the hex digest of the validated payload, optional.

The record it gives:

- COMPLETED: kept until ``expiration * 1000``; the outcome is the plain JSON
  envelope of ``data`` (``b"j"`` and the text itself, so it decodes to
  ``json.loads(data)``; ``null`` when ``data`` is absent or empty), checked
  when it is replayed, as the outcome of any record is.
- IN_PROGRESS: held until ``in_progress_expiration``, or ``expiration * 1000``
  if that comes first or there is none (without it Powertools itself keeps
  the key locked until the record expires).
- EXPIRED: ended (deadline 0), so a claim takes the key.

Its token is :data:`PLACEHOLDER_TOKEN`. The stores never take a Powertools
record for the caller's own claim, whatever token the caller holds: they tell
the two kinds apart by what is stored (an onceonly item has a ``token``
attribute, an onceonly value starts with ``o1|``), never by the token.

Anything else (not a JSON object, another status, a field of the wrong type
or out of range, an attribute Powertools' default layout does not write,
as a layout with custom attribute names does) is a
:class:`~onceonly.errors.CorruptRecordError`, and a claim never overwrites it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .codec import corrupt
from .records import Record, Status

__all__ = [
    "DATA",
    "EXPIRATION",
    "FIELDS",
    "IN_PROGRESS_EXPIRATION",
    "MAX_EXPIRATION_S",
    "MAX_MS",
    "PLACEHOLDER_TOKEN",
    "STATUS",
    "STATUSES",
    "VALIDATION",
    "from_fields",
    "from_json",
]

STATUS = "status"
EXPIRATION = "expiration"
IN_PROGRESS_EXPIRATION = "in_progress_expiration"
DATA = "data"
VALIDATION = "validation"
FIELDS = frozenset({STATUS, EXPIRATION, IN_PROGRESS_EXPIRATION, DATA, VALIDATION})

# Powertools' status -> ours; EXPIRED has none: it has ended whatever it was.
STATUSES: Mapping[str, Status | None] = {
    "COMPLETED": Status.COMPLETED,
    "INPROGRESS": Status.IN_PROGRESS,
    "EXPIRED": None,
}

# The token of every record read from Powertools: 32 zeros. A real claim's
# token is 128 random bits, so it is this one with a chance of 2**-128; and
# even then no store takes a Powertools record for that claim's own (see above).
PLACEHOLDER_TOKEN = "0" * 32

# Bounds of the numbers: Redis' cjson reads every number as a double, exact
# for whole numbers up to 2**53, so both bounds keep the deadline in ms below
# that (10**15 ms is the year 33658). The Lua scripts use the same two.
MAX_EXPIRATION_S = 10**12
MAX_MS = 10**15

_FINGERPRINT = re.compile(r"[0-9a-f]{0,128}")
_NULL_OUTCOME = b"jnull"
_ABSENT = object()  # a field that is not there (JSON null is there, and of the wrong type)


def _whole(value: object, limit: int) -> int | None:
    """``value`` as an int when it is a whole number from 0 to ``limit``, else None.

    A float with a whole value counts (JSON's ``1e3`` is 1000), as it does for
    the scripts, which cannot tell ``1000`` from ``1000.0``; a bool does not.
    """
    if type(value) is int:
        number = value
    elif type(value) is float and value.is_integer():
        number = int(value)
    else:
        return None
    return number if 0 <= number <= limit else None


def from_fields(fields: Mapping[str, object], *, store: str = "the store") -> Record:
    """Build the record that Powertools' fields describe, checking each.

    Args:
        fields: The record's fields by Powertools' default names (see the
            module), already plain Python values: str, int (or a whole
            float), or absent. Any other name is refused.
        store: Which store they come from, for the error message.

    Returns:
        The record (see the module for its deadline, token and outcome).

    Raises:
        CorruptRecordError: A field is missing, of the wrong type or out of
            range, or one Powertools' default layout does not write is there.
    """
    problem = None
    status = fields.get(STATUS)
    expiration = _whole(fields.get(EXPIRATION), MAX_EXPIRATION_S)
    progress = fields.get(IN_PROGRESS_EXPIRATION, _ABSENT)
    progress_ms = None if progress is _ABSENT else _whole(progress, MAX_MS)
    data = fields.get(DATA, _ABSENT)
    validation = fields.get(VALIDATION, _ABSENT)
    if not isinstance(status, str) or status not in STATUSES:
        problem = "a status other than COMPLETED, INPROGRESS or EXPIRED"
    elif expiration is None:
        problem = f"an expiration that is not whole epoch seconds from 0 to {MAX_EXPIRATION_S}"
    elif progress is not _ABSENT and progress_ms is None:
        problem = f"an in_progress_expiration that is not whole epoch ms from 0 to {MAX_MS}"
    elif data is not _ABSENT and not isinstance(data, str):
        problem = "data that is not a string"
    elif validation is not _ABSENT and (
        not isinstance(validation, str) or _FINGERPRINT.fullmatch(validation) is None
    ):
        problem = "a validation hash that is not up to 128 lower-case hex digits"
    elif not FIELDS.issuperset(fields):
        # A layout with custom attribute names: reading it by the default
        # names would replay a wrong (empty) response. Refused, loudly.
        problem = "a field that Powertools' default layout does not write"
    if problem is not None:
        raise corrupt(store, f"a Powertools record with {problem}")
    assert isinstance(status, str)
    assert expiration is not None
    ours = STATUSES[status]
    fingerprint = validation if isinstance(validation, str) and validation else None
    if ours is None:  # EXPIRED: ended, and never an orphan (no takeover)
        return Record(Status.COMPLETED, PLACEHOLDER_TOKEN, 0, fingerprint, _NULL_OUTCOME)
    deadline = expiration * 1000
    if ours is Status.IN_PROGRESS:
        if progress_ms is not None:
            deadline = min(deadline, progress_ms)
        return Record(Status.IN_PROGRESS, PLACEHOLDER_TOKEN, deadline, fingerprint, None)
    outcome = _NULL_OUTCOME
    if isinstance(data, str) and data:
        # Not parsed here: like any record's outcome it is checked when it is
        # replayed (decode_outcome), which keeps this rule the scripts' rule.
        # A lone surrogate (no UTF-8 text holds one) is kept so, and fails then.
        outcome = b"j" + data.encode("utf-8", "surrogatepass")
    return Record(Status.COMPLETED, PLACEHOLDER_TOKEN, deadline, fingerprint, outcome)


def from_json(value: bytes, *, store: str = "the store") -> Record:
    """Build the record of a value that Powertools' Redis layer wrote (a JSON object).

    Args:
        value: The stored bytes.
        store: Which store they come from, for the error message.

    Returns:
        The record.

    Raises:
        CorruptRecordError: The bytes are not UTF-8 JSON, not an object, or
            not a Powertools record (see :func:`from_fields`).
    """
    try:
        # Bytes that are not UTF-8 are kept (as lone surrogates): the scripts'
        # JSON reader passes them through inside strings, so a field holding
        # them is judged as they judge it (a bad status, or data that fails
        # when replayed), not refused as a whole.
        # Control characters inside strings are read as the scripts read them.
        fields: Any = json.loads(value.decode("utf-8", "surrogateescape"), strict=False)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise corrupt(store, "bad or unknown header, and not a JSON object either") from None
    if not isinstance(fields, dict):
        raise corrupt(store, "bad or unknown header, and not a JSON object either")
    return from_fields(fields, store=store)
