"""The consumer's options (checked once), the keys it derives, and the hash-slot rule.

Every key one consumer touches lives in its stream's Redis Cluster hash slot:
the stream, the dedup records, the error records, the dead-letter stream and
the keys its effects write. Derived keys start with the stream's *base*: the
stream itself when it has a hash tag (``{p3}:events``), else the stream in
braces (``{events}``), which hashes to the same slot.

Nothing here does I/O or imports redis-py.
"""

from __future__ import annotations

import binascii
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import IdempotencyConfigError
from .effects import MAX_KEY_BYTES

__all__ = [
    "CONSUMER_ACL_COMMANDS",
    "MAX_BATCH",
    "MAX_EVENT_ID_BYTES",
    "PUBLISH_ACL_COMMANDS",
    "ConsumerConfig",
    "check_same_slot",
    "default_consumer_name",
    "hashed_part",
    "key_slot",
    "published_key",
    "stream_base",
]

# What an ACL user needs, besides the commands its effects use (HSET, HINCRBY,
# HDEL, ZADD, ZINCRBY, ZREM, SADD, SREM, INCRBY, SET, XADD, EXPIRE: only those
# it uses). The consumer sends XGROUP CREATE, XREADGROUP, EVALSHA, EVAL (on
# NOSCRIPT), SET (a FAILED entry's error record) and XINFO GROUPS (status());
# its scripts call XREADGROUP, XPENDING, XAUTOCLAIM (reclaim), XCLAIM (keeping
# entries in hand from being reclaimed), XACK, XRANGE, XADD (dead letters),
# GET, SET, DEL, TYPE and HGET (before an HINCRBY), which ACLs check inside
# scripts too. publish sends EVALSHA / EVAL and its script calls GET, SET, XADD.
CONSUMER_ACL_COMMANDS = (
    "XGROUP|CREATE",
    "XREADGROUP",
    "EVALSHA",
    "EVAL",
    "XPENDING",
    "XAUTOCLAIM",
    "XCLAIM",
    "XINFO|GROUPS",
    "XACK",
    "XRANGE",
    "XADD",
    "GET",
    "SET",
    "DEL",
    "TYPE",
    "HGET",
)
PUBLISH_ACL_COMMANDS = ("EVALSHA", "EVAL", "GET", "SET", "XADD")

MAX_BATCH = 1000  # entries read and committed in one round trip each
MAX_EVENT_ID_BYTES = 512
_MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
_MAX_BLOCK_MS = 3_600_000
_MAX_IDLE_MS = 7 * 24 * 3600 * 1000
SLOTS = 16384


def hashed_part(key: bytes) -> bytes:
    """What Redis Cluster hashes of ``key``: its hash tag (``{...}``, not empty) or all of it."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hashed part, mod 16384).

    Keys are sent as UTF-8, so a ``str`` is hashed as its UTF-8 bytes.
    """
    data = key.encode() if isinstance(key, str) else key
    return binascii.crc_hqx(hashed_part(data), 0) % SLOTS


def check_same_slot(keys: Iterable[str], stream: str, *, what: str) -> None:
    """Raise unless every key hashes to the slot of ``stream``.

    Args:
        keys: The keys to check.
        stream: The consumer's stream.
        what: What the keys are, for the message ("the effects' key").

    Raises:
        IdempotencyConfigError: Names the first key in another slot, and the fix.
    """
    home_part = hashed_part(stream.encode())
    home = binascii.crc_hqx(home_part, 0) % SLOTS
    for key in keys:
        data = key.encode()
        # A key with the stream's hash tag (the usual case) needs no CRC.
        if hashed_part(data) != home_part and key_slot(data) != home:
            tag = hashed_part(stream.encode()).decode(errors="replace")
            raise IdempotencyConfigError(
                f"{what} {key!r} hashes to slot {key_slot(key)}, not to slot {home} of the "
                f"stream {stream!r}: one script must touch one slot (Redis Cluster, MemoryDB). "
                f"Give the key the stream's hash tag, e.g. '{{{tag}}}:...'"
            )


def stream_base(stream: str) -> str:
    """The start of every key derived from ``stream``, in its hash slot.

    Raises:
        IdempotencyConfigError: A stream name without a hash tag that braces
            cannot wrap (one holding ``}``).
    """
    if hashed_part(stream.encode()) != stream.encode():
        return stream  # it has a hash tag: keys that start with it share it
    base = "{" + stream + "}"
    if key_slot(base) != key_slot(stream):
        raise IdempotencyConfigError(
            f"stream {stream!r} has no hash tag and holds '}}': give it a hash tag such as "
            "'{name}:events' so that its keys can share its slot"
        )
    return base


def default_consumer_name() -> str:
    """``host-pid``: unique per process, and the same again only for this process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _name(option: str, value: object, *, limit: int = MAX_KEY_BYTES) -> str:
    if not isinstance(value, str) or not value:
        raise IdempotencyConfigError(f"{option} must be a non-empty string, got {value!r}")
    if len(value.encode()) > limit:
        raise IdempotencyConfigError(f"{option} must be at most {limit} bytes in UTF-8")
    return value


def _int(option: str, value: object, low: int, high: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or not low <= value <= high:
        extra = " or None" if allow_none else ""
        raise IdempotencyConfigError(
            f"{option} must be an int from {low} to {high}{extra}, got {value!r}"
        )


@dataclass(frozen=True)
class ConsumerConfig:
    """What a stream consumer does, checked when built (shared by the sync and async consumers).

    Args:
        stream: The stream to consume (created, with the group, if absent).
        group: The consumer group (no ``:``; the dedup records are the group's own).
        consumer: This consumer's name in the group; default ``host-pid``.
            A restarted process that keeps its name drains its own pending
            entries first.
        batch_size: Entries read, handled and committed per round trip (1-1000).
        block_ms: How long a read waits for new entries (0: not at all; unlike
            Redis' ``BLOCK 0``, never forever). Keep it under the client's
            ``socket_timeout``.
        min_idle_ms: Entries of the group pending (on any consumer: a dead
            one, or this one after a FAILED handler) for longer than this
            are reclaimed (``XAUTOCLAIM``) and handled here; None: never.
            Keep it well above the time a batch takes to handle and commit.
        max_deliveries: An entry delivered more often is moved to the
            dead-letter stream instead of being handled again (None: never).
        dead_letter_stream: Where dead letters go; default
            ``<base>:<group>:dead`` (in the stream's slot).
        dedup_ttl_seconds: How long an applied event's dedup record is kept:
            longer than any entry can stay pending or be appended again.
        event_id_field: The entry field that holds the event's id (its dedup
            key); None: the stream entry id.
        same_slot: Refuse keys outside the stream's hash slot (needed on
            Redis Cluster and MemoryDB; keep it on standalone too, so the
            code runs unchanged on a cluster). False only with a standalone
            or Sentinel client.
        start_id: Where a group created here starts: ``"0"`` (default: every
            entry already in the stream) or ``"$"`` (only new ones).

    Raises:
        IdempotencyConfigError: An option out of range, or a dead-letter
            stream outside the stream's slot (with ``same_slot``).
    """

    stream: str
    group: str
    consumer: str = field(default_factory=default_consumer_name)
    batch_size: int = 100
    block_ms: int = 2000
    min_idle_ms: int | None = 60_000
    max_deliveries: int | None = 10
    dead_letter_stream: str | None = None
    dedup_ttl_seconds: int = 86_400
    event_id_field: str | None = None
    same_slot: bool = True
    start_id: str = "0"
    base: str = field(init=False, repr=False, compare=False)
    tag_prefix: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _name("stream", self.stream)
        _name("group", self.group, limit=256)
        if ":" in self.group:
            raise IdempotencyConfigError(
                f"group must not contain ':' (it is part of the dedup keys), got {self.group!r}"
            )
        _name("consumer", self.consumer, limit=256)
        _int("batch_size", self.batch_size, 1, MAX_BATCH)
        _int("block_ms", self.block_ms, 0, _MAX_BLOCK_MS)
        _int("min_idle_ms", self.min_idle_ms, 1, _MAX_IDLE_MS, allow_none=True)
        _int("max_deliveries", self.max_deliveries, 1, 1_000_000, allow_none=True)
        _int("dedup_ttl_seconds", self.dedup_ttl_seconds, 1, _MAX_TTL_SECONDS)
        if self.event_id_field is not None:
            _name("event_id_field", self.event_id_field)
        if not isinstance(self.same_slot, bool):
            raise IdempotencyConfigError(f"same_slot must be True or False, got {self.same_slot!r}")
        if self.start_id not in ("0", "$"):
            raise IdempotencyConfigError(f"start_id must be '0' or '$', got {self.start_id!r}")
        base = stream_base(self.stream)
        if self.dead_letter_stream is None:
            object.__setattr__(self, "dead_letter_stream", f"{base}:{self.group}:dead")
        else:
            _name("dead_letter_stream", self.dead_letter_stream)
            if self.dead_letter_stream == self.stream:
                raise IdempotencyConfigError("dead_letter_stream must not be the stream itself")
            if self.same_slot:
                check_same_slot([self.dead_letter_stream], self.stream, what="dead_letter_stream")
        # The start of every key derived from the stream (see stream_base).
        object.__setattr__(self, "base", base)
        # A key that starts with "{<the stream's hashed part>}" is in its slot
        # (no CRC needed); None when that part holds a '}' (no such prefix).
        part = hashed_part(self.stream.encode()).decode()
        object.__setattr__(self, "tag_prefix", None if "}" in part else "{" + part + "}")

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream's key."""
        assert self.dead_letter_stream is not None  # filled in by __post_init__
        return self.dead_letter_stream

    @property
    def dedup_ttl_ms(self) -> int:
        """``dedup_ttl_seconds`` in ms (also how long an error record is kept)."""
        return self.dedup_ttl_seconds * 1000

    def dedup_key(self, event_id: str) -> str:
        """The dedup record of one event in this group: ``<base>:<group>:dedup:<event id>``."""
        return f"{self.base}:{self.group}:dedup:{event_id}"

    def error_key(self, entry_id: str) -> str:
        """Where the last handler error of an entry waits for its dead letter."""
        return f"{self.base}:{self.group}:error:{entry_id}"

    def own_keys(self) -> list[str]:
        """Keys of this consumer other than the stream (for checks and ACL patterns)."""
        return [self.dead_letters, self.dedup_key("x"), self.error_key("0-0")]


def published_key(stream: str, event_id: str) -> str:
    """The record ``publish`` keeps of an event id: ``<base>:published:<event id>``."""
    return f"{stream_base(stream)}:published:{event_id}"
