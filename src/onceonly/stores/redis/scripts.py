"""The Lua scripts of the Redis store, and what their replies mean.

Kept apart from the clients so that the sync and async stores share every
byte of script and every reply rule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from ... import codec, powertools_records
from ...errors import CorruptRecordError
from ...records import Acquired, ClaimResult, Found, Record

__all__ = [
    "CLAIM",
    "COMPLETE",
    "RELEASE",
    "RENEW",
    "Script",
    "claim_result",
    "decode_value",
    "load_script",
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
