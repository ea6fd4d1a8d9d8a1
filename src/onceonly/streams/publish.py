"""publish / apublish: append a stream entry once per event id.

A producer that retries after a lost reply (or a timeout, or a crash before
it noted the result) would append the event twice with plain ``XADD``. One
script here appends the entry and records the event id under the stream's
hash tag (``<base>:published:<event id>``, with a TTL), so a retry with the
same event id and the same fields appends nothing and returns the first
entry's id; the same event id with other fields is a reused key and raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import IdempotencyConfigError, IdempotencyKeyReuseError
from . import scripts
from .config import MAX_EVENT_ID_BYTES, published_key
from .effects import MAX_KEY_BYTES, Value
from .redis_io import arun_call, check_client, run_call

__all__ = ["DEFAULT_PUBLISH_TTL_SECONDS", "apublish", "publish"]

DEFAULT_PUBLISH_TTL_SECONDS = 86_400
_MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def _call(
    stream: object, fields: object, event_id: object, maxlen: object, ttl_seconds: object
) -> scripts.Call:
    if not isinstance(stream, str) or not stream or len(stream.encode()) > MAX_KEY_BYTES:
        raise IdempotencyConfigError(
            f"stream must be a non-empty string of at most {MAX_KEY_BYTES} bytes, got {stream!r}"
        )
    if not isinstance(event_id, str) or not event_id:
        raise IdempotencyConfigError(f"event_id must be a non-empty string, got {event_id!r}")
    if len(event_id.encode()) > MAX_EVENT_ID_BYTES:
        raise IdempotencyConfigError(f"event_id must be at most {MAX_EVENT_ID_BYTES} bytes")
    if maxlen is not None and (type(maxlen) is not int or maxlen < 1):
        raise IdempotencyConfigError(f"maxlen must be None or an int >= 1, got {maxlen!r}")
    if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= _MAX_TTL_SECONDS:
        raise IdempotencyConfigError(
            f"ttl_seconds must be an int from 1 to {_MAX_TTL_SECONDS}, got {ttl_seconds!r}"
        )
    pairs = scripts.publish_fields(fields)
    return scripts.publish_call(
        stream, published_key(stream, event_id), pairs, ttl_ms=ttl_seconds * 1000, maxlen=maxlen
    )


def _entry_id(reply: object, event_id: str) -> str:
    code, entry_id = scripts.publish_reply(reply)
    if code == 0:
        raise IdempotencyKeyReuseError(
            f"event id {event_id!r} was published before with other fields (entry {entry_id}); "
            "an event id must name one event"
        )
    return entry_id


def publish(
    client: Any,
    stream: str,
    fields: Mapping[Value, Value],
    *,
    event_id: str,
    maxlen: int | None = None,
    ttl_seconds: int = DEFAULT_PUBLISH_TTL_SECONDS,
) -> str:
    """Append ``fields`` to ``stream`` once per ``event_id``; return the entry's id.

    One script call (one round trip): ``XADD`` and the event id's record
    (its entry id and a SHA-256 of the fields) with ``ttl_seconds``. Sent
    again with the same event id and fields, it appends nothing and returns
    the first entry's id (even if that entry was trimmed since).

    Args:
        client: A sync redis-py client (standalone, ``RedisCluster``, Sentinel master).
        stream: The stream (created if absent).
        fields: The entry's fields (str / bytes / int / float values).
        event_id: The event's id: the producer's idempotency key.
        maxlen: Trim the stream to about this many entries (``MAXLEN ~``).
        ttl_seconds: How long the event id is remembered.

    Returns:
        The stream entry id.

    Raises:
        IdempotencyKeyReuseError: The event id was published with other fields.
        IdempotencyConfigError: A bad stream, event id, maxlen or ttl.
        TypeError, ValueError: ``fields`` is not a non-empty mapping of
            str / bytes names to str / bytes / int / finite float values.
        IdempotencyStoreError: Redis failed or could not be reached (the
            entry may have been appended: publish again with the same id).
    """
    check_client(client, asyncio=False)
    call = _call(stream, fields, event_id, maxlen, ttl_seconds)
    return _entry_id(run_call(client, call), event_id)


async def apublish(
    client: Any,
    stream: str,
    fields: Mapping[Value, Value],
    *,
    event_id: str,
    maxlen: int | None = None,
    ttl_seconds: int = DEFAULT_PUBLISH_TTL_SECONDS,
) -> str:
    """The asyncio twin of :func:`publish` (a ``redis.asyncio`` client)."""
    check_client(client, asyncio=True)
    call = _call(stream, fields, event_id, maxlen, ttl_seconds)
    return _entry_id(await arun_call(client, call), event_id)
