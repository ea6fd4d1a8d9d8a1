"""Effects: the Redis writes a stream handler returns as data.

A handler does not write to Redis itself; it returns an :class:`Effects`, and
the consumer applies it in the same Lua script as the entry's dedup record and
its ``XACK``, so all of them happen or none do.

Each method checks its arguments when it is called (types, sizes, integers in
range) and turns them into the bytes the script receives. The builder is
mutable and every method returns it, so both styles work::

    return Effects().hincrby(user, "score", 5).zincrby(board, 5, user_id)

    effects = Effects()
    effects.hset(user, {"name": name})
    return effects

(An immutable builder whose methods return copies would silently drop the
writes of the second style.)

Encoding: a flat list of script arguments, per effect its command, the index
of its key, its argument count, then its arguments, not JSON. Values stay
bytes end to end (JSON would need base64 for binary values), numbers arrive as
Redis parses them (``repr`` of a float is read back to the same double by
Redis' ``strtod``), and the script reads its arguments by index, with no
decoder. Nothing is ever pickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

__all__ = [
    "MAX_EFFECTS",
    "MAX_EFFECTS_BYTES",
    "MAX_ITEMS",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Effect",
    "Effects",
    "Value",
    "encode_value",
]

# Bounds that keep one commit script short, so the server is never blocked long,
# and keep every effect's arguments well under Lua's unpack limit (8000).
MAX_EFFECTS = 256  # effects in one Effects
MAX_ITEMS = 1024  # fields or members in one effect
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20  # one value (1 MiB)
MAX_EFFECTS_BYTES = 4 << 20  # every argument of one Effects together (4 MiB)
_INT64 = (-(1 << 63), (1 << 63) - 1)
# EXPIRE seconds / SET PX: Redis refuses a deadline past its 64-bit ms range;
# 2**31 - 1 seconds (68 years) is far inside it.
_MAX_SECONDS = (1 << 31) - 1

Value = Union[str, bytes, int, float]  # noqa: UP007 - a runtime alias, Python 3.10


@dataclass(frozen=True)
class Effect:
    """One Redis write: its command, its key, its arguments as sent (bytes).

    Attributes:
        command: The Redis command, upper case (``HSET``, ``XADD``...).
        key: The key it writes.
        args: The arguments after the key, already encoded.
        family: The Redis type the key must hold (or not exist): ``hash``,
            ``zset``, ``set``, ``string``, ``stream``; None for ``EXPIRE``.
    """

    command: str
    key: str
    args: tuple[bytes, ...]
    family: str | None


# Encoded once: the commands, and the key numbers and argument counts most
# effects have.
_COMMANDS = {
    c: c.encode()
    for c in [
        *("HSET", "HINCRBY", "HDEL", "ZINCRBY", "ZADD", "ZREM"),
        *("SADD", "SREM", "INCRBY", "SET", "XADD", "EXPIRE"),
    ]
}
_COUNTS = [str(n).encode() for n in range(64)]


def _count(n: int) -> bytes:
    return _COUNTS[n] if n < 64 else str(n).encode()


def _key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"an effect's key must be a non-empty string, got {key!r}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"an effect's key must be at most {MAX_KEY_BYTES} bytes in UTF-8")
    return key


def encode_value(what: str, value: object) -> bytes:
    """A field name, member or value as sent: str as UTF-8, bytes as they are, numbers as text."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bool) or value is None:
        # Redis has no booleans or nulls; True would be sent as b"True" by some clients.
        raise TypeError(f"{what} must be str, bytes, int or float, got {value!r}")
    elif isinstance(value, int):
        data = str(value).encode()
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        data = repr(value).encode()
    else:
        raise TypeError(f"{what} must be str, bytes, int or float, got {type(value).__name__}")
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"{what} must be at most {MAX_VALUE_BYTES} bytes, got {len(data)}")
    return data


def _int64(what: str, value: object) -> bytes:
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, got {value!r}")
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{what} must fit in a signed 64-bit integer, got {value}")
    return str(value).encode()


def _score(what: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be an int or a float, got {value!r}")
    # Sent as the double Redis will hold (an int past 2**53 is rounded there anyway).
    # A finite score (or increment) can never make ZINCRBY answer "not a number"
    # (inf + -inf), so the script need not read the old score to know it works.
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return repr(number).encode()


def _seconds(what: str, value: object, *, scale: int = 1) -> bytes:
    if type(value) is not int or not 1 <= value <= _MAX_SECONDS * scale:
        raise ValueError(f"{what} must be an int from 1 to {_MAX_SECONDS * scale}, got {value!r}")
    return str(value).encode()


def _mapping(what: str, mapping: object) -> list[bytes]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise TypeError(f"{what} must be a non-empty mapping, got {mapping!r}")
    if len(mapping) > MAX_ITEMS:
        raise ValueError(f"{what} may hold at most {MAX_ITEMS} items, got {len(mapping)}")
    flat: list[bytes] = []
    for name, value in mapping.items():
        flat.append(encode_value(f"{what}: a name", name))
        flat.append(encode_value(f"{what}: the value of {name!r}", value))
    return flat


def _members(what: str, members: tuple[object, ...]) -> list[bytes]:
    if not members:
        raise TypeError(f"{what} needs at least one member")
    if len(members) > MAX_ITEMS:
        raise ValueError(f"{what} may name at most {MAX_ITEMS} members, got {len(members)}")
    return [encode_value(f"{what}: a member", m) for m in members]


class Effects:
    """A list of Redis writes, applied atomically with an entry's dedup record and XACK.

    Every key must be in the hash slot of the consumer's stream (share its
    hash tag, e.g. ``{p3}:user:42`` beside the stream ``{p3}:events``); the
    consumer checks that before anything is sent. One key takes effects of
    one Redis type only (a hash, a sorted set, a set, a string or a stream;
    ``expire`` goes with any); the script checks before any write that each
    key holds that type or does not exist, and that every ``incrby`` /
    ``hincrby`` will succeed (an integer value, no overflow), so a refused
    list writes nothing.
    """

    __slots__ = ("_bytes", "_families", "_flat", "_numbers", "_ops")

    def __init__(self) -> None:
        # (command, key, args, family) per effect; ``ops`` makes them Effects
        # (a frozen dataclass each costs more than the tuple, per effect).
        self._ops: list[tuple[str, str, tuple[bytes, ...], str | None]] = []
        self._families: dict[str, str] = {}
        self._bytes = 0
        # The keys in the order first written, numbered from 1, and the encoding
        # with those numbers, built as effects are added (encode() is then a copy).
        self._numbers: dict[str, int] = {}
        self._flat: list[bytes] = []

    def __repr__(self) -> str:
        # Commands only: keys and values may be personal data, never shown.
        return f"Effects({', '.join(op[0] for op in self._ops)})"

    def __len__(self) -> int:
        return len(self._ops)

    def __bool__(self) -> bool:
        return bool(self._ops)

    @property
    def ops(self) -> tuple[Effect, ...]:
        """The effects added so far, in order."""
        return tuple(Effect(*op) for op in self._ops)

    def keys(self) -> list[str]:
        """Every key the effects write, once each, in the order first written."""
        return list(self._numbers)

    def _add(self, command: str, key: object, args: list[bytes], family: str | None) -> Effects:
        checked = _key(key)
        if len(self._ops) >= MAX_EFFECTS:
            raise ValueError(f"an Effects may hold at most {MAX_EFFECTS} effects")
        size = len(checked) + sum(map(len, args))
        if self._bytes + size > MAX_EFFECTS_BYTES:
            raise ValueError(f"an Effects may carry at most {MAX_EFFECTS_BYTES} bytes in all")
        if family is not None:
            known = self._families.get(checked)
            if known is not None and known != family:
                raise ValueError(
                    f"{command} needs a {family} at {checked!r}, which these effects already "
                    f"use as a {known}: one key takes effects of one Redis type"
                )
            self._families[checked] = family
        self._ops.append((command, checked, tuple(args), family))
        self._bytes += size
        number = self._numbers.setdefault(checked, len(self._numbers) + 1)
        self._flat += [_COMMANDS[command], _count(number), _count(len(args)), *args]
        return self

    # -- hashes ------------------------------------------------------------------

    def hset(self, key: str, mapping: Mapping[Value, Value]) -> Effects:
        """``HSET key field value ...``: set fields of a hash."""
        return self._add("HSET", key, _mapping("hset", mapping), "hash")

    def hincrby(self, key: str, field: Value, amount: int = 1) -> Effects:
        """``HINCRBY key field amount``: add a signed 64-bit integer to a hash field."""
        args = [encode_value("hincrby: the field", field), _int64("hincrby: the amount", amount)]
        return self._add("HINCRBY", key, args, "hash")

    def hdel(self, key: str, *fields: Value) -> Effects:
        """``HDEL key field ...``: remove fields of a hash."""
        return self._add("HDEL", key, _members("hdel", fields), "hash")

    # -- sorted sets ---------------------------------------------------------------

    def zincrby(self, key: str, amount: float, member: Value) -> Effects:
        """``ZINCRBY key amount member``: add a finite number to a member's score."""
        args = [_score("zincrby: the amount", amount), encode_value("zincrby: the member", member)]
        return self._add("ZINCRBY", key, args, "zset")

    def zadd(self, key: str, mapping: Mapping[Value, float]) -> Effects:
        """``ZADD key score member ...``: set members' scores (finite numbers)."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise TypeError(f"zadd needs a non-empty mapping of member to score, got {mapping!r}")
        if len(mapping) > MAX_ITEMS:
            raise ValueError(f"zadd may hold at most {MAX_ITEMS} members, got {len(mapping)}")
        args: list[bytes] = []
        for member, score in mapping.items():
            args += [_score(f"zadd: the score of {member!r}", score), encode_value("zadd", member)]
        return self._add("ZADD", key, args, "zset")

    def zrem(self, key: str, *members: Value) -> Effects:
        """``ZREM key member ...``: remove members of a sorted set."""
        return self._add("ZREM", key, _members("zrem", members), "zset")

    # -- sets ------------------------------------------------------------------------

    def sadd(self, key: str, *members: Value) -> Effects:
        """``SADD key member ...``: add members to a set."""
        return self._add("SADD", key, _members("sadd", members), "set")

    def srem(self, key: str, *members: Value) -> Effects:
        """``SREM key member ...``: remove members of a set."""
        return self._add("SREM", key, _members("srem", members), "set")

    # -- strings ---------------------------------------------------------------------

    def incrby(self, key: str, amount: int = 1) -> Effects:
        """``INCRBY key amount``: add a signed 64-bit integer to a counter."""
        return self._add("INCRBY", key, [_int64("incrby: the amount", amount)], "string")

    def set(self, key: str, value: Value, *, px: int | None = None) -> Effects:
        """``SET key value [PX ms]``: set a string, with an expiry in ms if given.

        The key must hold a string or nothing (SET would replace a hash or a
        set without a word; here that is refused as a wrong type).
        """
        args = [encode_value("set: the value", value)]
        if px is not None:
            args += [b"PX", _seconds("set: px", px, scale=1000)]
        return self._add("SET", key, args, "string")

    # -- streams and expiry ----------------------------------------------------------

    def xadd(
        self, stream: str, fields: Mapping[Value, Value], *, maxlen: int | None = None
    ) -> Effects:
        """``XADD stream [MAXLEN ~ n] * field value ...``: append to an outbox stream.

        Args:
            stream: The outbox stream (in the consumer stream's slot).
            fields: The entry's fields, at least one.
            maxlen: Trim the outbox to about this many entries (``MAXLEN ~``).
        """
        args: list[bytes] = []
        if maxlen is not None:
            if type(maxlen) is not int or maxlen < 1:
                raise ValueError(f"xadd: maxlen must be an int >= 1, got {maxlen!r}")
            args += [b"MAXLEN", b"~", str(maxlen).encode()]
        args += [b"*", *_mapping("xadd", fields)]
        return self._add("XADD", stream, args, "stream")

    def expire(self, key: str, seconds: int) -> Effects:
        """``EXPIRE key seconds``: let a key written here (or before) expire.

        On a key that does not exist it does nothing, as in Redis.
        """
        return self._add("EXPIRE", key, [_seconds("expire: seconds", seconds)], None)

    # -- the script's view -------------------------------------------------------------

    def encode(self, first_key_index: int = 1) -> tuple[list[str], list[bytes]]:
        """The keys and the flat argument list the commit script reads.

        Args:
            first_key_index: The number the first of these keys gets (the
                script finds key ``i`` at ``KEYS[offset + i]``).

        Returns:
            The distinct keys in order, and per effect: the command, the
            key's number, the argument count, then the arguments.
        """
        keys = self.keys()
        if first_key_index == 1:
            return keys, list(self._flat)
        number = {key: first_key_index + i for i, key in enumerate(keys)}
        flat: list[bytes] = []
        for op in self.ops:
            flat += [op.command.encode(), str(number[op.key]).encode(), str(len(op.args)).encode()]
            flat += op.args
        return keys, flat
