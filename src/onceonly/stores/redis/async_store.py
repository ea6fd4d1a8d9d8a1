"""The asyncio Redis store, with automatic pipelining.

Script calls that concurrent tasks issue in the same event-loop turn are sent
together in one pipeline (redis-py's cluster pipeline splits it per node), so
many concurrent idempotent calls share round trips. Every caller gets its own
reply or its own error, exactly as if it had been sent alone.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ...errors import IdempotencyConfigError, IdempotencyStoreError
from ...records import ClaimResult, Record
from ..protocol import check_key
from . import scripts
from .clients import url_client
from .common import (
    RedisBase,
    chained,
    check_waitaof_support,
    hiredis_packer,
    import_redis,
    needs_command_name,
    redis_errors,
    store_error,
)

__all__ = ["AsyncRedisStore"]

# A pipeline is cut at this many calls; the rest go in the next one.
_MAX_BATCH = 512

T = TypeVar("T")


async def _within(seconds: float | None, work: Awaitable[T]) -> T:
    """Await ``work``, raising the builtin TimeoutError past ``seconds`` (None: no limit)."""
    if seconds is None:
        return await work
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await work
    return await asyncio.wait_for(work, seconds)  # pragma: no cover - Python 3.10


@dataclass
class _Pending:
    script: scripts.Script
    key: str  # the Redis key
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class _Batcher:
    """Collects the script calls of one loop turn and sends them as one pipeline."""

    def __init__(self, store: AsyncRedisStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self.pending: list[_Pending] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(
        self, script: scripts.Script, key: str, args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.pending:
            # Runs after every task that is ready in this turn has had its go.
            self.loop.call_soon(self.flush)
        self.pending.append(_Pending(script, key, args, future))
        return future

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        for start in range(0, len(batch), _MAX_BATCH):
            task = self.loop.create_task(self.send(batch[start : start + _MAX_BATCH]))
            self.tasks.add(task)  # held until done, so it is not collected mid-flight
            task.add_done_callback(self.tasks.discard)

    async def send(self, batch: list[_Pending]) -> None:
        store = self.store
        # A cluster client splits the batch per node with redis-py's cluster
        # pipeline; on one server the batch goes straight to one connection.
        round_trip = store._pipeline if store._cluster else store._raw_batch
        try:
            replies = await round_trip(batch, use_sha=True)
            missing = [i for i, r in enumerate(replies) if isinstance(r, store._noscript)]
            if missing:
                # A restart, failover or SCRIPT FLUSH: EVAL runs and caches the scripts.
                again = await round_trip([batch[i] for i in missing], use_sha=False)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the whole pipeline failed: every caller hears of it
            for item in batch:
                _fail(item, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                _fail(item, reply)
            elif not item.future.done():
                item.future.set_result(reply)


def _fail(item: _Pending, exc: BaseException) -> None:
    if item.future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(exc, redis_errors()):
        error: BaseException = chained(store_error(exc, item.key), exc)
    elif isinstance(exc, IdempotencyStoreError):
        error = exc
    else:
        error = IdempotencyStoreError(f"Redis pipeline failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
    item.future.set_exception(error)


class AsyncRedisStore(RedisBase):
    """The asyncio twin of ``RedisStore``, on ``redis.asyncio`` clients.

    Args:
        client: A ``redis.asyncio.Redis``, ``redis.asyncio.RedisCluster`` or an
            asyncio Sentinel master client.
        prefix, wait_replicas, wait_timeout_ms, wait_aof, clock: As for
            ``RedisStore``. ``wait_aof`` is checked against the server on the
            first call (a constructor cannot await).
        pipelining: Send the script calls of one event-loop turn together
            (default True). False sends each call on its own.

    Raises:
        IdempotencyConfigError: Bad options, a sync client (use ``RedisStore``),
            or ``wait_replicas`` / ``wait_aof`` with a cluster client.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "onceonly",
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        wait_aof: bool = False,
        clock: Callable[[], int] | None = None,
        pipelining: bool = True,
    ) -> None:
        super().__init__(
            client,
            prefix=prefix,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            wait_aof=wait_aof,
            clock=clock,
        )
        if not inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
            raise IdempotencyConfigError("this is a sync client: use RedisStore")
        if self._cluster and self._waits() is not None:
            raise IdempotencyConfigError(
                "wait_replicas / wait_aof are not available with an asyncio cluster client yet; "
                "use RedisStore, or a standalone / Sentinel client"
            )
        if not isinstance(pipelining, bool):
            raise IdempotencyConfigError("pipelining must be True or False")
        self.pipelining = pipelining
        self._batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}
        self._hiredis_pack = hiredis_packer()
        exceptions = import_redis().exceptions
        self._response_error: type[BaseException] = exceptions.ResponseError
        self._timeout_error: type[BaseException] = exceptions.TimeoutError
        self._pool_wants_name: bool | None = None  # redis-py < 5.3: get_connection(name)
        self._waitaof_checked = not wait_aof

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "onceonly",
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        wait_aof: bool = False,
        pipelining: bool = True,
        **client_options: Any,
    ) -> AsyncRedisStore:
        """Build the store and its asyncio client from a URL (see ``RedisStore.from_url``)."""
        client = url_client(url, cluster=cluster, asyncio=True, options=client_options)
        return cls(
            client,
            prefix=prefix,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            wait_aof=wait_aof,
            pipelining=pipelining,
        )

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()

    # -- I/O ---------------------------------------------------------------

    async def _check_waitaof(self) -> None:
        try:
            server = await self.client.info("server")
            persistence = await self.client.info("persistence")
        except redis_errors() as exc:
            raise store_error(exc, None) from exc
        check_waitaof_support(server, persistence)
        self._waitaof_checked = True

    async def _raw_batch(self, batch: list[_Pending], *, use_sha: bool) -> list[Any]:
        """Send a batch of script calls (and WAIT, if asked) on one pooled connection.

        What redis-py's pipeline does, without its per-command machinery: the
        commands are packed together (by hiredis when it is there), written
        at once, and their replies read in order. An error reply is that
        call's answer; a connection failure is retried as the client's retry
        policy says and otherwise fails the whole batch, and the connection
        is closed before it goes back to the pool, so a half-read stream is
        never reused.
        """
        if use_sha:
            commands: list[tuple[Any, ...]] = [
                ("EVALSHA", item.script.sha, 1, item.key, *item.args) for item in batch
            ]
        else:
            commands = [("EVAL", item.script.source, 1, item.key, *item.args) for item in batch]
        waits = self._wait_command
        if waits is not None:
            commands.append(waits)  # one WAIT covers every write before it
        pool = self.client.connection_pool
        if self._pool_wants_name is None:
            self._pool_wants_name = needs_command_name(pool.get_connection)
        conn = await (
            pool.get_connection("EVALSHA") if self._pool_wants_name else pool.get_connection()
        )
        try:
            packed = self._pack(conn, commands)
            replies: list[Any] = await conn.retry.call_with_retry(
                lambda: self._exchange(conn, packed, len(commands)),
                lambda _error: conn.disconnect(),
            )
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return self._split_wait(replies, batch[0].key)

    def _pack(self, conn: Any, commands: list[tuple[Any, ...]]) -> Any:
        encoder = conn.encoder
        if (
            self._hiredis_pack is not None
            and encoder.encoding.lower().replace("-", "") == "utf8"
            and encoder.encoding_errors == "strict"
        ):
            pack = self._hiredis_pack
            return b"".join([pack(command) for command in commands])
        return conn.pack_commands(commands)

    async def _exchange(self, conn: Any, packed: Any, count: int) -> list[Any]:
        """Write the packed commands, read ``count`` replies (one deadline for them all)."""
        await conn.send_packed_command(packed)
        try:
            return await _within(conn.socket_timeout, self._read_replies(conn, count))
        except asyncio.TimeoutError:  # the deadline: read_response has closed the connection
            where = getattr(conn, "host", None) or getattr(conn, "path", "the server")
            raise self._timeout_error(f"Timeout reading from {where}") from None

    async def _read_replies(self, conn: Any, count: int) -> list[Any]:
        response_error = self._response_error
        read = conn.read_response
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await read(timeout=math.inf))
            except response_error as exc:  # that call's own error (NOSCRIPT, WRONGTYPE...)
                replies.append(exc)
        return replies

    async def _pipeline(self, batch: list[_Pending], *, use_sha: bool) -> list[Any]:
        """Send a batch of script calls (and WAIT, if asked) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for item in batch:
            body = item.script.sha if use_sha else item.script.source
            pipe.execute_command("EVALSHA" if use_sha else "EVAL", body, 1, item.key, *item.args)
        waits = self._wait_command
        if waits is not None:
            pipe.execute_command(*waits)  # one WAIT covers every write before it
        replies = list(await pipe.execute(raise_on_error=False))
        return self._split_wait(replies, batch[0].key)

    async def _run(self, script: scripts.Script, key: str, args: tuple[Any, ...]) -> Any:
        if not self._waitaof_checked:
            await self._check_waitaof()
        full = self.full_key(key)
        args = (*args, self._now_arg())
        if self.pipelining:
            loop = asyncio.get_running_loop()
            batcher = self._batchers.get(loop)
            if batcher is None:
                # One batcher per loop: a store may serve several loops over its life.
                self._batchers = {lp: b for lp, b in self._batchers.items() if not lp.is_closed()}
                batcher = self._batchers[loop] = _Batcher(self, loop)
            return await batcher.submit(script, full, args)
        try:
            try:
                return await self.client.evalsha(script.sha, 1, full, *args)
            except self._noscript:
                return await self.client.eval(script.source, 1, full, *args)
        except self._errors as exc:
            raise store_error(exc, full) from exc

    async def _command(self, *command: Any) -> Any:
        try:
            return await self.client.execute_command(*command)
        except self._errors as exc:
            raise store_error(exc, str(command[1])) from exc

    # -- the protocol ------------------------------------------------------

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it: one script call."""
        return scripts.claim_result(
            await self._run(*self._claim_call(key, token, lease_ms, ttl_ms, fingerprint))
        )

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim: one script call."""
        return scripts.write_result(
            await self._run(*self._complete_call(key, token, outcome, ttl_ms)), key
        )

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it: one script call."""
        return scripts.write_result(await self._run(*self._release_call(key, token)), key)

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it: one script call."""
        return scripts.write_result(await self._run(*self._renew_call(key, token, lease_ms)), key)

    async def get(self, key: str) -> Record | None:
        """Return the record under ``key`` (Redis drops expired ones), or None."""
        check_key(key)
        return self._record(await self._command("GET", self.full_key(key)))

    async def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        check_key(key)
        return int(await self._command("DEL", self.full_key(key))) > 0
