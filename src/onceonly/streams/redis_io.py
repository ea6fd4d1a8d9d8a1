"""Sending the stream scripts and commands with redis-py: sync and asyncio.

Scripts go as ``EVALSHA``; one the server does not know yet (``NOSCRIPT``: a
first use, a restart, a failover, ``SCRIPT FLUSH``) is sent again as ``EVAL``,
which also caches it. A batch goes in one pipeline (one round trip; on a
cluster every key of a batch is in one slot, so one node), each call getting
its own reply or its own error. Replies are read undecoded, whatever the
client's ``decode_responses``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..errors import IdempotencyConfigError
from ..stores.redis.common import NEVER_DECODE, import_redis, redis_errors
from .scripts import Call, Command, stream_error

__all__ = ["arun_call", "asend_batch", "check_client", "is_cluster", "run_call", "send_batch"]

_RAW = {NEVER_DECODE: True}


def check_client(client: Any, *, asyncio: bool) -> None:
    """Raise unless ``client`` is a redis-py client of the right flavour (sync or asyncio)."""
    import_redis()  # says which extra to install when redis-py is missing
    if not callable(getattr(client, "execute_command", None)) or not callable(
        getattr(client, "pipeline", None)
    ):
        raise IdempotencyConfigError(
            "client must be a redis-py client (Redis, RedisCluster or a Sentinel master), "
            f"got {type(client).__name__}"
        )
    if inspect.iscoroutinefunction(client.execute_command) != asyncio:
        raise IdempotencyConfigError(
            "this is an asyncio client: use the asyncio API"
            if not asyncio
            else "this is a sync client: use the sync API"
        )


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a ``RedisCluster`` (it routes by key itself)."""
    return callable(getattr(client, "get_node_from_key", None))


def _wire(args: Sequence[Any]) -> tuple[Any, ...]:
    # Arguments as UTF-8; the command name stays text (redis-py routes and parses by it).
    return (args[0], *(a.encode() if isinstance(a, str) else a for a in args[1:]))


def run_call(client: Any, call: Call) -> Any:
    """Send one script call (EVALSHA, then EVAL on NOSCRIPT); its reply, undecoded.

    Raises:
        IdempotencyStoreError: Redis failed, refused or could not be reached.
    """
    noscript = import_redis().exceptions.NoScriptError
    try:
        try:
            return client.execute_command(*call.wire(by_sha=True), **_RAW)
        except noscript:
            return client.execute_command(*call.wire(by_sha=False), **_RAW)
    except redis_errors() as exc:
        raise stream_error(exc, call.stream) from exc


async def arun_call(client: Any, call: Call) -> Any:
    """The asyncio twin of :func:`run_call`."""
    noscript = import_redis().exceptions.NoScriptError
    try:
        try:
            return await client.execute_command(*call.wire(by_sha=True), **_RAW)
        except noscript:
            return await client.execute_command(*call.wire(by_sha=False), **_RAW)
    except redis_errors() as exc:
        raise stream_error(exc, call.stream) from exc


def _queued(client: Any, items: Sequence[Call | Command], *, by_sha: bool) -> Any:
    # Queuing is sync in both flavours of pipeline; only execute() differs.
    pipe = client.pipeline(transaction=False)
    for item in items:
        if isinstance(item, Call):
            pipe.execute_command(*item.wire(by_sha=by_sha), **_RAW)
        else:
            pipe.execute_command(*_wire(item), **_RAW)
    return pipe


def _pipeline(client: Any, items: Sequence[Call | Command], *, by_sha: bool) -> list[Any]:
    return list(_queued(client, items, by_sha=by_sha).execute(raise_on_error=False))


def _noscript(items: Sequence[Call | Command], replies: Sequence[Any]) -> list[int]:
    """Where the server answered NOSCRIPT to a script call (its cache was emptied)."""
    noscript = import_redis().exceptions.NoScriptError
    return [
        i for i, r in enumerate(replies) if isinstance(r, noscript) and isinstance(items[i], Call)
    ]


def send_batch(client: Any, items: Sequence[Call | Command]) -> list[Any]:
    """Send script calls and commands in one pipeline; each answer is a reply or an exception.

    Calls the server answered ``NOSCRIPT`` are sent again as ``EVAL`` in a
    second pipeline (only on a server that lost its script cache).

    Raises:
        IdempotencyStoreError: The pipeline itself failed (connection,
            timeout): which of its calls ran is unknown; each is safe to send
            again (see the scripts).
    """
    if not items:
        return []
    try:
        replies = _pipeline(client, items, by_sha=True)
        missing = _noscript(items, replies)
        if missing:
            again = _pipeline(client, [items[i] for i in missing], by_sha=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
    except redis_errors() as exc:
        raise stream_error(exc, None) from exc
    return replies


async def asend_batch(client: Any, items: Sequence[Call | Command]) -> list[Any]:
    """The asyncio twin of :func:`send_batch` (a ``redis.asyncio`` client)."""
    if not items:
        return []
    try:
        pipe = _queued(client, items, by_sha=True)
        replies = list(await pipe.execute(raise_on_error=False))
        missing = _noscript(items, replies)
        if missing:
            pipe = _queued(client, [items[i] for i in missing], by_sha=False)
            again = await pipe.execute(raise_on_error=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
    except redis_errors() as exc:
        raise stream_error(exc, None) from exc
    return replies
