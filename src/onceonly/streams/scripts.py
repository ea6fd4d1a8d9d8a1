"""The stream scripts, the calls that carry them, and what their replies mean.

I/O-free: the sync consumer (and, later, the async one) and ``publish`` build
their calls here and read their replies here, so both share every byte of
script and every reply rule.

Every call lists all of its keys in ``KEYS`` (the stream first), so Redis
Cluster routes it to the stream's node and refuses it (CROSSSLOT) if a key is
elsewhere; the scripts refuse that on a standalone server too.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import IdempotencyStoreError
from ..stores.redis.common import import_redis, store_error
from ..stores.redis.scripts import Script, load_script
from .config import CONSUMER_ACL_COMMANDS, PUBLISH_ACL_COMMANDS, ConsumerConfig
from .effects import Effects, encode_value

__all__ = [
    "COMMIT",
    "DEAD_LETTER",
    "EXTEND",
    "MAX_CALL_BYTES",
    "MAX_CALL_EFFECTS",
    "MAX_CALL_ENTRIES",
    "PENDING",
    "PUBLISH",
    "RECLAIM",
    "Call",
    "Code",
    "Command",
    "Commit",
    "Script",
    "commit_call",
    "commit_chunks",
    "commit_entry",
    "commit_reply",
    "commits_call",
    "dead_letter_call",
    "extend_call",
    "fields_digest",
    "mark",
    "pending_call",
    "pending_entries",
    "publish_call",
    "publish_fields",
    "publish_reply",
    "reclaim_call",
    "reclaim_reply",
    "script_reply",
    "stream_error",
]


COMMIT = load_script(__package__, "commit")
DEAD_LETTER = load_script(__package__, "dead_letter")
EXTEND = load_script(__package__, "extend")
PENDING = load_script(__package__, "pending")
PUBLISH = load_script(__package__, "publish")
RECLAIM = load_script(__package__, "reclaim")


class Code(enum.IntEnum):
    """The first element of a stream script's reply (``_prelude.lua`` has the same table)."""

    APPLIED = 1
    DUPLICATE = 2
    FENCED = 3
    REFUSED = 4
    DEAD = 5
    LOST = 6
    ERROR = 7  # a commit's entry only: Redis answered one of its commands with an error


Command = tuple[Any, ...]  # a plain command sent beside the scripts, e.g. ("XACK", stream, ...)


@dataclass(frozen=True)
class Call:
    """One script call: the script, its keys (the stream first) and its arguments.

    Attributes:
        script: The script.
        keys: Its keys, the stream first.
        args: Its arguments.
        encoded: Whether every key and argument is bytes already (``wire``
            then sends them as they are).
    """

    script: Script
    keys: tuple[bytes | str, ...]
    args: tuple[bytes | str | int, ...]
    encoded: bool = False

    @property
    def stream(self) -> str:
        """The stream the call is about (its first key), for error messages."""
        first = self.keys[0]
        return first.decode(errors="replace") if isinstance(first, bytes) else first

    def wire(self, *, by_sha: bool) -> tuple[Any, ...]:
        """The command as sent: ``EVALSHA sha n keys... args...`` (or ``EVAL``), text as UTF-8."""
        head: tuple[Any, ...] = (
            ("EVALSHA", self.script.sha) if by_sha else ("EVAL", self.script.code)
        )
        if self.encoded:
            return (*head, len(self.keys), *self.keys, *self.args)
        body = tuple(a.encode() if isinstance(a, str) else a for a in (*self.keys, *self.args))
        return (*head, len(self.keys), *body)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def mark(entry_id: str, deliveries: int, consumer: str) -> str:
    """What a dedup record holds: the delivery that applied it (a retried commit knows its own)."""
    return f"{entry_id}|{deliveries}|{consumer}"


# Bounds of one commit call, so that the server is never blocked long by one
# script (a batch holds up to MAX_BATCH entries, each up to MAX_EFFECTS
# effects): a call closes at this many entries, effects or argument bytes
# (an entry larger than that alone goes alone). Calls of one batch still go in
# one pipeline, one round trip.
MAX_CALL_ENTRIES = 128
MAX_CALL_EFFECTS = 1024
MAX_CALL_BYTES = 1 << 20


class Commit(NamedTuple):
    """One entry's share of a commit call: its keys and its arguments, as sent.

    Attributes:
        entry_id: The entry.
        order: The entry id as (ms, seq), for the call's id range.
        keys: Its dedup record, its error record, its effects' keys (UTF-8).
        args: Its id, delivery count, effect key count, effect count, effect
            argument count, then the effects as ``Effects.encode`` gives them.
        effects: How many effects it has.
        size: The bytes of its keys and arguments.
    """

    entry_id: str
    order: tuple[int, int]
    keys: tuple[bytes, ...]
    args: tuple[bytes, ...]
    effects: int
    size: int


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def commit_entry(
    config: ConsumerConfig, entry_id: str, deliveries: int, event_id: str, effects: Effects | None
) -> Commit:
    """One entry's share of a commit call (the effects' keys are not checked here)."""
    keys = [config.dedup_key(event_id).encode(), config.error_key(entry_id).encode()]
    id_bytes = entry_id.encode()
    if effects is None:
        head = (id_bytes, str(deliveries).encode(), b"0", b"0", b"0")
        return Commit(entry_id, _order(entry_id), tuple(keys), head, 0, sum(map(len, keys)))
    effect_keys, flat = effects.encode()
    keys += [key.encode() for key in effect_keys]
    count = len(effects)
    head = (
        id_bytes,
        str(deliveries).encode(),
        str(len(effect_keys)).encode(),
        str(count).encode(),
        str(len(flat)).encode(),
    )
    size = sum(map(len, keys)) + sum(map(len, flat))
    return Commit(entry_id, _order(entry_id), tuple(keys), (*head, *flat), count, size)


def commit_chunks(commits: Sequence[Commit]) -> list[list[Commit]]:
    """``commits`` in order, cut into the calls they go in (see ``MAX_CALL_ENTRIES``)."""
    chunks: list[list[Commit]] = []
    chunk: list[Commit] = []
    effects = size = 0
    for commit in commits:
        if chunk and (
            len(chunk) >= MAX_CALL_ENTRIES
            or effects + commit.effects > MAX_CALL_EFFECTS
            or size + commit.size > MAX_CALL_BYTES
        ):
            chunks.append(chunk)
            chunk, effects, size = [], 0, 0
        chunk.append(commit)
        effects += commit.effects
        size += commit.size
    if chunk:
        chunks.append(chunk)
    return chunks


def commits_call(config: ConsumerConfig, commits: Sequence[Commit]) -> Call:
    """The commit script call of some entries (at least one); its reply: a code and detail each."""
    low = min(commits, key=lambda c: c.order).entry_id
    high = max(commits, key=lambda c: c.order).entry_id
    keys: list[bytes] = [config.stream.encode()]
    args: list[bytes] = [
        config.group.encode(),
        config.consumer.encode(),
        str(config.dedup_ttl_ms).encode(),
        _flag(config.same_slot).encode(),
        str(config.dedup_ttl_ms).encode(),
        low.encode(),
        high.encode(),
        str(len(commits)).encode(),
    ]
    for commit in commits:
        keys += commit.keys
        args += commit.args
    return Call(COMMIT, tuple(keys), tuple(args), encoded=True)


def commit_call(
    config: ConsumerConfig, entry_id: str, deliveries: int, event_id: str, effects: Effects | None
) -> Call:
    """The commit script call of one entry (the effects' keys are not checked here)."""
    return commits_call(config, [commit_entry(config, entry_id, deliveries, event_id, effects)])


def commit_reply(reply: object, count: int) -> list[tuple[Code, str]]:
    """A commit call's reply: (code, detail text) for each of its ``count`` entries.

    Raises:
        IdempotencyStoreError: The reply has another shape.
    """
    if not isinstance(reply, list) or len(reply) != 2 * count:
        raise IdempotencyStoreError(f"unexpected reply from the commit script: {reply!r}")
    return [script_reply(reply[i : i + 2]) for i in range(0, len(reply), 2)]


def dead_letter_call(config: ConsumerConfig, entry_id: str, deliveries: int) -> Call:
    """The dead-letter script call of one entry."""
    keys = (config.stream, config.dead_letters, config.error_key(entry_id))
    args = (
        config.group,
        config.consumer,
        entry_id,
        deliveries,
        _flag(config.same_slot),
        config.dedup_ttl_ms,
    )
    return Call(DEAD_LETTER, keys, args)


def pending_call(config: ConsumerConfig, after: str) -> Call:
    """The call that re-reads this consumer's pending entries after ``after``."""
    return Call(
        PENDING, (config.stream,), (config.group, config.consumer, config.batch_size, after)
    )


def extend_call(config: ConsumerConfig, held: Sequence[tuple[str, int]]) -> Call:
    """The call that resets the idle time of entries held: (id, delivery count read) pairs."""
    flat: list[bytes | str | int] = []
    for entry_id, deliveries in held:
        flat += [entry_id, deliveries]
    return Call(EXTEND, (config.stream,), (config.group, config.consumer, *flat))


def reclaim_call(config: ConsumerConfig, min_idle_ms: int, cursor: str) -> Call:
    """The call claiming up to ``batch_size`` entries idle past ``min_idle_ms`` from ``cursor``."""
    args = (config.group, config.consumer, min_idle_ms, cursor, config.batch_size)
    return Call(RECLAIM, (config.stream,), args)


def reclaim_reply(
    reply: object,
) -> tuple[str, list[tuple[str, dict[bytes, bytes] | None, int]], list[str]]:
    """The reclaim script's reply as (next cursor, claimed entries, ids deleted while pending)."""
    if not isinstance(reply, list) or len(reply) != 3 or not isinstance(reply[2], list):
        raise IdempotencyStoreError(f"unexpected reply from the reclaim script: {reply!r}")
    deleted = [_text(raw, "entry id") for raw in reply[2]]
    return _text(reply[0], "cursor"), pending_entries(reply[1]), deleted


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise IdempotencyStoreError(f"unexpected {what} in a stream script's reply: {value!r}")


def pending_entries(reply: object) -> list[tuple[str, dict[bytes, bytes] | None, int]]:
    """The pending script's reply as (id, fields or None when deleted, deliveries)."""
    if not isinstance(reply, list) or len(reply) % 3:
        raise IdempotencyStoreError(f"unexpected reply from the pending-entries script: {reply!r}")
    out: list[tuple[str, dict[bytes, bytes] | None, int]] = []
    for i in range(0, len(reply), 3):
        raw_id, raw_fields, deliveries = reply[i : i + 3]
        fields = None if raw_fields is None else _pairs(raw_fields)
        out.append((_text(raw_id, "entry id"), fields, int(deliveries)))
    return out


def _pairs(flat: object) -> dict[bytes, bytes]:
    if not isinstance(flat, list) or len(flat) % 2:
        raise IdempotencyStoreError("unexpected entry fields in a stream script's reply")
    return {bytes(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}


def script_reply(reply: object) -> tuple[Code, str]:
    """A commit / dead-letter / publish reply as (code, detail text)."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise IdempotencyStoreError(f"unexpected reply from a stream script: {reply!r}")
    try:
        code = Code(int(reply[0]))
    except (TypeError, ValueError):
        raise IdempotencyStoreError(f"unexpected reply from a stream script: {reply!r}") from None
    return code, _text(reply[1], "detail")


def publish_reply(reply: object) -> tuple[int, str]:
    """The publish script's reply: 2 appended, 1 appended before, 0 other fields; the entry id."""
    if not isinstance(reply, list) or len(reply) != 2 or reply[0] not in (0, 1, 2):
        raise IdempotencyStoreError(f"unexpected reply from the publish script: {reply!r}")
    return int(reply[0]), _text(reply[1], "entry id")


def fields_digest(fields: Sequence[tuple[bytes, bytes]]) -> str:
    """SHA-256 of an entry's fields, order-free, each name and value length-prefixed."""
    digest = hashlib.sha256()
    for name, value in sorted(fields):
        for part in (name, value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def publish_fields(fields: object) -> list[tuple[bytes, bytes]]:
    """``publish``'s fields as (name, value) bytes pairs, checked.

    Raises:
        TypeError, ValueError: Not a non-empty mapping of str / bytes / int / float.
    """
    if not isinstance(fields, Mapping) or not fields:
        raise TypeError(f"fields must be a non-empty mapping, got {fields!r}")
    pairs: list[tuple[bytes, bytes]] = []
    for name, value in fields.items():
        pairs.append((encode_value("a field name", name), encode_value(f"field {name!r}", value)))
    return pairs


def publish_call(
    stream: str,
    record_key: str,
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    ttl_ms: int,
    maxlen: int | None,
) -> Call:
    """The publish script call."""
    flat: list[bytes | str | int] = []
    for name, value in pairs:
        flat += [name, value]
    args = (fields_digest(pairs), ttl_ms, "" if maxlen is None else maxlen, *flat)
    return Call(PUBLISH, (stream, record_key), args)


# An ACL refusal inside a script is a plain error reply: Redis says "The user
# executing the script can't run this command or subcommand", Valkey "ACL
# failure in script: ... no permissions to run ..." (the Redis store reads them
# the same way).
_SCRIPT_ACL = re.compile(r"can't run this command|ACL failure|no permissions", re.IGNORECASE)
ACL_HINT = (
    "a consumer's ACL user needs "
    + " ".join("+" + c.lower() for c in CONSUMER_ACL_COMMANDS)
    + " and the commands its effects use; a producer's (publish) "
    + " ".join("+" + c.lower() for c in PUBLISH_ACL_COMMANDS)
    + "; both need the key pattern of the stream's hash tag (e.g. ~{p3}:*)"
)


def stream_error(exc: BaseException, key: str | None) -> IdempotencyStoreError:
    """Map a redis-py exception to the documented error; an ACL refusal lists what is needed."""
    redis = import_redis()
    text = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.exceptions.ResponseError) and _SCRIPT_ACL.search(text)
    ):
        where = f" (key {key})" if key is not None else ""
        return IdempotencyStoreError(f"Redis refused a command{where} (ACL): {text}; {ACL_HINT}")
    return store_error(exc, key)
