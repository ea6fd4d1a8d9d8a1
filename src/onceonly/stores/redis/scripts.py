"""The Lua scripts of the Redis store, and what their replies mean.

Kept apart from the clients so that the sync and async stores share every
byte of script and every reply rule.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from importlib import resources

from ... import codec, powertools_records
from ...errors import CorruptRecordError
from ...records import Acquired, ClaimResult, Found, Record, Status

__all__ = [
    "CLAIM",
    "COMPLETE",
    "KEY_EXPIRY_DEADLINE",
    "RELEASE",
    "RENEW",
    "Script",
    "claim_result",
    "decode_value",
    "has_key_expiry",
    "load_script",
    "native_claim_result",
    "native_claim_value",
    "resolve_key_expiry",
    "write_result",
]


@dataclass(frozen=True)
class Script:
    """A Lua script with its SHA1, for EVALSHA, and its UTF-8 bytes, for EVAL."""

    name: str
    source: str
    sha: str
    code: bytes


def load_script(package: str, name: str) -> Script:
    """Read ``lua/<name>.lua`` of ``package``, its ``lua/_prelude.lua`` in front.

    Args:
        package: The package whose ``lua`` folder holds the script.
        name: The script's file name without ``.lua``.

    Returns:
        The script, with its SHA1 for EVALSHA.
    """
    folder = resources.files(package) / "lua"
    source = (folder / "_prelude.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()
    code = source.encode()
    return Script(name, source, hashlib.sha1(code, usedforsecurity=False).hexdigest(), code)


CLAIM = load_script(__package__, "claim")
COMPLETE = load_script(__package__, "complete")
RELEASE = load_script(__package__, "release")
RENEW = load_script(__package__, "renew")


def _bytes(value: object) -> bytes:
    # The stores read replies undecoded (NEVER_DECODE), whatever the client's
    # decode_responses: text decoded with some encoding and encoded back with
    # another would replay garbled, so text here is refused, never re-encoded.
    if isinstance(value, bytes):
        return value
    raise CorruptRecordError(f"unexpected reply from the claim script: {type(value).__name__}")


_STORE = "the Redis store"


def claim_result(reply: object) -> ClaimResult:
    """Turn the claim script's reply into ``Acquired`` or ``Found``.

    Raises:
        CorruptRecordError: The value under the key is not a record (the
            script left it as it was).
    """
    if not isinstance(reply, list) or len(reply) != 3:
        raise CorruptRecordError(f"unexpected reply from the claim script: {reply!r}")
    code, detail, now = reply
    if code == 1:
        return Acquired(takeover=detail == 1)
    if code == -1:
        # The script's rule and the decoder's are one; the decoder says what is wrong.
        decode_value(detail)
        raise codec.corrupt(_STORE, "the claim script's check refused it")
    return Found(decode_value(detail), int(now))


# The deadline of an IN_PROGRESS record written by the native claim (``SET key
# value NX PX lease GET``, no script): "until the key's own PX expiry". The
# client does not know the server's time, so it cannot write the real one;
# this is the largest deadline the codec takes (16 digits), which an older
# onceonly reads as "live while the key is there": under the server's time,
# exactly right. The scripts (``_prelude.lua``, ``parse``) and ``get`` read it
# as now + PTTL; renew and complete write real deadlines over it.
KEY_EXPIRY_DEADLINE = 9_999_999_999_999_999
_KEY_EXPIRY_FIELD = b"|9999999999999999|"
_NATIVE_HEAD = b"o1|P|"
_COMPLETED_HEAD = b"o1|C|"
_ACQUIRED = Acquired(takeover=False)


def native_claim_value(token: str, fingerprint: str | None) -> bytes:
    """The IN_PROGRESS record the native claim writes (deadline: the key's expiry).

    Args:
        token: The claim's token (checked by the caller: 32 lower-case hex digits).
        fingerprint: The payload fingerprint (checked by the caller), or None.

    Returns:
        The value, in codec.py's layout.
    """
    return f"o1|P|{token}|9999999999999999|{fingerprint or ''}|".encode()


def native_claim_result(reply: object) -> ClaimResult | None:
    """Turn the native claim's reply into an answer, or None when only the script can answer.

    ``SET key value NX PX lease GET`` answers nil when the key was absent and
    is now the caller's (Acquired; an ended record is absent too: Redis drops
    it at its ``PX``), or the value it found, which stays as it was. A
    COMPLETED record of ours is live (Redis keeps it only until its deadline)
    and is the answer. Anything else (an IN_PROGRESS record, the caller's own
    after a lost reply or another holder's; a value Powertools wrote; a value
    that is not a record) needs the claim script's judgement: None.

    ``Found.now_ms`` is the store's clock when it answered, and no clock was
    read here: the caller's clock stands in for it, capped below the record's
    deadline, since the server still held the record. The engine reads
    ``now_ms`` only for an IN_PROGRESS record's time left, which never comes
    from here; a local cache judges a COMPLETED record by its deadline alone.

    Args:
        reply: The reply, read undecoded.

    Returns:
        Acquired, Found, or None.
    """
    if reply is None:
        return _ACQUIRED
    if type(reply) is bytes and reply[:5] == _COMPLETED_HEAD:
        try:
            record = codec.decode(reply, store=_STORE)
        except CorruptRecordError:
            return None  # the script says what is wrong with it, as before
        return Found(record, min(record.deadline_ms - 1, time.time_ns() // 1_000_000))
    return None


def resolve_key_expiry(record: Record, pttl: int, now_ms: int) -> Record | None:
    """A record read with GET, its key-expiry deadline (if it has one) made real.

    Args:
        record: The record as decoded.
        pttl: The key's PTTL, read with it (-2: gone; -1: no expiry).
        now_ms: The server's TIME, read with it.

    Returns:
        The record with deadline ``now_ms + pttl`` when it carries the
        marker; as it is when it does not, or when the key has no expiry (it
        never ends); None when the key is gone.
    """
    if record.status is not Status.IN_PROGRESS or record.deadline_ms != KEY_EXPIRY_DEADLINE:
        return record
    if pttl == -2:
        return None
    if pttl < 0:
        return record
    return Record(record.status, record.token, now_ms + pttl, record.fingerprint, None)


def has_key_expiry(value: object) -> bool:
    """Whether a value read with GET is an IN_PROGRESS record of the native claim."""
    return type(value) is bytes and value[:5] == _NATIVE_HEAD and value[37:55] == _KEY_EXPIRY_FIELD


def write_result(reply: object, key: str) -> bool:
    """Turn a complete/release/renew reply into a bool.

    Raises:
        CorruptRecordError: The value under the key is not a record.
    """
    if reply == 1:
        return True
    if reply == 0:
        return False
    raise CorruptRecordError(
        f"the value under {key} is not an onceonly record; delete it (onceonly purge) "
        "to let the key run again"
    )


def is_ours(value: bytes) -> bool:
    """Whether a stored value is in onceonly's layout (else it may be one Powertools wrote)."""
    return value[:3] == codec.HEADER_PREFIX


def decode_value(value: object) -> Record:
    """Decode a value read with GET or answered by a script: ours, or one Powertools wrote.

    Raises:
        CorruptRecordError: It is neither.
    """
    data = _bytes(value)
    if is_ours(data):
        return codec.decode(data, store=_STORE)
    # Powertools' Redis layer stores a JSON object (powertools_records has the rule).
    return powertools_records.from_json(data, store=_STORE)
