"""The asyncio Redis store, with automatic pipelining.

Script calls that concurrent tasks issue in the same event-loop turn are sent
together in one pipeline (redis-py's cluster pipeline splits it per node), so
many concurrent idempotent calls share round trips. Every caller gets its own
reply or its own error, exactly as if it had been sent alone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import IdempotencyConfigError, IdempotencyStoreError
from ...metrics import log_extra
from ...records import ClaimResult, Record
from ..protocol import check_claim, check_key
from . import scripts
from .async_batch import Batcher, LoopState, Pending, close_at_shutdown, within
from .clients import url_client
from .common import (
    NEVER_DECODE,
    RedisBase,
    chained,
    check_waitaof_support,
    hiredis_packer,
    import_redis,
    needs_command_name,
    redis_errors,
    store_error,
    time_ms,
)

__all__ = ["AsyncRedisStore"]

logger = logging.getLogger("onceonly")


# Replies are read as bytes, whatever the client's decode_responses (see wire_args).
_RAW = {NEVER_DECODE: True}
# The native claim's options: get=True makes redis-py's SET callback hand back
# the GET reply as it is (without it, the reply would be turned into a bool).
_SET_GET = {NEVER_DECODE: True, "get": True}


class AsyncRedisStore(RedisBase):
    """The asyncio twin of ``RedisStore``, on ``redis.asyncio`` clients.

    Args:
        client: A ``redis.asyncio.Redis``, ``redis.asyncio.RedisCluster`` or an
            asyncio Sentinel master client (any ``decode_responses`` and
            ``encoding``, as for ``RedisStore``).
        prefix: As for ``RedisStore``.
        wait_replicas: As for ``RedisStore``.
        wait_timeout_ms: As for ``RedisStore``.
        wait_aof: As for ``RedisStore``; checked against the server on the
            first call (a constructor cannot await).
        clock: As for ``RedisStore``.
        pipelining: Send the script calls of one event-loop turn together
            (default True). False sends each call on its own.

    One store may serve successive event loops (``asyncio.run`` per call):
    its connections are closed as each loop shuts down (``asyncio.run`` does
    that through ``shutdown_asyncgens``) and reopened on the next loop.
    Loops that run at the same time (one per thread) need a client, and so a
    store, each: redis.asyncio connections cannot be shared between them.

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
        # redis.asyncio connections belong to the loop that opened them; the
        # store follows the running loop (see _enter_loop).
        self._loops: dict[asyncio.AbstractEventLoop, LoopState] = {}
        # (loop, its batcher) of the last call, read and replaced as one tuple.
        self._current: tuple[asyncio.AbstractEventLoop | None, Batcher | None] = (None, None)
        self._hiredis_pack = hiredis_packer()
        exceptions = import_redis().exceptions
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
        """Build the store and its asyncio client from a URL (see ``RedisStore.from_url``).

        Returns:
            The store.

        Raises:
            IdempotencyConfigError: A URL or option redis-py cannot use (the
                message names it, never the password).
        """
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
        if asyncio.get_running_loop() is not self._current[0]:
            await self._enter_loop()
        await self.client.aclose()

    # -- event loops -------------------------------------------------------

    async def _enter_loop(self) -> tuple[asyncio.AbstractEventLoop, Batcher | None]:
        """Make the running loop the store's own (once per loop; later calls skip this).

        A store used from successive loops (``asyncio.run`` per call) would
        otherwise send on connections of a closed loop. Each loop gets its own
        batcher, and a guard that closes the connections as the loop shuts
        down. When an earlier loop was closed without that (no
        ``shutdown_asyncgens``), its connections are dropped here first.
        """
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            stale = False
            for old in [lp for lp in list(self._loops) if lp.is_closed()]:
                gone = self._loops.pop(old, None)
                stale = stale or (gone is not None and not gone.closed)
            state = LoopState(Batcher(self, loop) if self.pipelining else None)
            self._loops[loop] = state  # before any await: one setup per loop
            state.ready = loop.create_task(self._start_loop(state, stale))
        assert state.ready is not None
        if not state.ready.done():
            await asyncio.shield(state.ready)  # concurrent first calls wait for the one setup
        current = self._current = (loop, state.batcher)
        return current

    async def _start_loop(self, state: LoopState, stale: bool) -> None:
        if stale:
            await self._drop_connections()
        guard = close_at_shutdown(weakref.ref(self), state)
        await guard.__anext__()  # started: the loop now tracks it
        state.guard = guard

    async def _drop_connections(self) -> None:
        """Close the client's connections (they reconnect on their next use).

        On a closed loop's connections this cannot close the sockets (their
        loop is gone); it forgets them, and they close when collected.
        """
        if self._cluster:
            # aclose() marks the client to rediscover its nodes on its next
            # call, but does nothing while it already is; and startup nodes
            # hold connections of their own: so node by node as well.
            closing = [self.client.aclose()]
            nodes = {id(node): node for node in self.client.get_nodes()}
            startup = getattr(self.client.nodes_manager, "startup_nodes", {})
            nodes.update((id(node), node) for node in startup.values())
            closing += [node.disconnect() for node in nodes.values()]
        else:
            closing = [self.client.connection_pool.disconnect()]
        for step in closing:
            try:
                await step
            except Exception as exc:  # a closed loop's transport refuses; it is forgotten
                logger.debug(
                    "onceonly: closing a finished loop's Redis connections: %r",
                    exc,
                    extra=log_extra(None, None, "connections_dropped", "AsyncRedisStore"),
                )

    # -- I/O ---------------------------------------------------------------

    async def _check_waitaof(self) -> None:
        try:
            server = await self.client.info("server")
            persistence = await self.client.info("persistence")
        except redis_errors() as exc:
            raise store_error(exc, None) from exc
        check_waitaof_support(server, persistence)
        self._waitaof_checked = True

    async def _raw_batch(self, batch: list[Pending], *, use_sha: bool) -> list[Any]:
        """Send a batch of script calls (and WAIT, if asked) on one pooled connection.

        What redis-py's pipeline does, without its per-command machinery: the
        commands are packed together (by hiredis when it is there), written
        at once, and their replies read in order. An error reply is that
        call's answer; a connection failure is retried as the client's retry
        policy says and otherwise fails the whole batch, and the connection
        is closed before it goes back to the pool, so a half-read stream is
        never reused.
        """
        commands = [item.command(use_sha) for item in batch]
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
        # Every argument is bytes or an integer already (wire_args), so hiredis
        # packs them as the client's encoder would, whatever its encoding.
        if self._hiredis_pack is not None:
            pack = self._hiredis_pack
            return b"".join([pack(command) for command in commands])
        return conn.pack_commands(commands)

    async def _exchange(self, conn: Any, packed: Any, count: int) -> list[Any]:
        """Write the packed commands, read ``count`` replies (one deadline for them all)."""
        await conn.send_packed_command(packed)
        try:
            return await within(conn.socket_timeout, self._read_replies(conn, count))
        except asyncio.TimeoutError:  # the deadline: read_response has closed the connection
            where = getattr(conn, "host", None) or getattr(conn, "path", "the server")
            raise self._timeout_error(f"Timeout reading from {where}") from None

    async def _read_replies(self, conn: Any, count: int) -> list[Any]:
        response_error = self._response_error
        read = conn.read_response
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await read(disable_decoding=True, timeout=math.inf))
            except response_error as exc:  # that call's own error (NOSCRIPT, WRONGTYPE...)
                replies.append(exc)
        return replies

    async def _pipeline(self, batch: list[Pending], *, use_sha: bool) -> list[Any]:
        """Send a batch of script calls (and WAIT, if asked) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for item in batch:
            pipe.execute_command(*item.command(use_sha), **(_RAW if item.script else _SET_GET))
        waits = self._wait_command
        if waits is not None:
            pipe.execute_command(*waits)  # one WAIT covers every write before it
        replies = list(await pipe.execute(raise_on_error=False))
        return self._split_wait(replies, batch[0].key)

    async def _run(
        self,
        script: scripts.Script,
        key: str,
        args: tuple[Any, ...],
        abandoned: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> Any:
        current = self._current
        if asyncio.get_running_loop() is not current[0]:
            current = await self._enter_loop()
        if not self._waitaof_checked:
            await self._check_waitaof()
        full = self.full_key(key)
        args = self.wire(full, (*args, self._now_arg()))
        batcher = current[1]
        if batcher is not None:
            return await batcher.submit(script, full, args, abandoned)
        try:
            if self._wait_command is not None:
                return await self._one_with_wait(script, full, args)
            try:
                return await self.client.execute_command("EVALSHA", script.sha, 1, *args, **_RAW)
            except self._noscript:
                return await self.client.execute_command("EVAL", script.code, 1, *args, **_RAW)
        except self._errors as exc:
            raise store_error(exc, full) from exc

    async def _one_with_wait(
        self, script: scripts.Script | None, full: str, args: tuple[Any, ...]
    ) -> Any:
        """One call and its WAIT / WAITAOF in one pipeline (``pipelining=False``).

        WAIT acts on its own connection's writes, so it goes with the call;
        a script the server does not have yet is sent again as EVAL.
        """
        item = Pending(script, full, args, asyncio.get_running_loop().create_future())
        (reply,) = await self._pipeline([item], use_sha=True)
        if isinstance(reply, self._noscript):
            (reply,) = await self._pipeline([item], use_sha=False)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _native_claim(
        self,
        full: str,
        command: tuple[Any, ...],
        abandoned: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> ClaimResult | None:
        """Send the native claim: its answer, or None when the claim script must answer."""
        current = self._current
        if asyncio.get_running_loop() is not current[0]:
            current = await self._enter_loop()
        if not self._waitaof_checked:
            await self._check_waitaof()
        batcher = current[1]
        try:
            if batcher is not None:
                reply = await batcher.submit(None, full, command, abandoned)
            else:
                try:
                    if self._wait_command is not None:
                        reply = await self._one_with_wait(None, full, command)
                    else:
                        reply = await self.client.execute_command(*command, **_SET_GET)
                except self._errors as exc:
                    raise chained(store_error(exc, full), exc) from exc
        except IdempotencyStoreError as exc:
            if self._native_refused(exc.__cause__):
                return None
            raise
        return scripts.native_claim_result(reply)

    async def _read_with_expiry(self, full: str) -> tuple[Any, int, int]:
        """GET, PTTL and the server's TIME of one key (see ``RedisStore``).

        One MULTI on one server; on a cluster GET and PTTL in one pipeline
        and TIME from the key's node.
        """
        key = self.key_bytes(full)
        try:
            if self._cluster:
                pipe = self.client.pipeline(transaction=False)
                pipe.execute_command("GET", key, **_RAW)
                pipe.execute_command("PTTL", key)
                value, pttl = await pipe.execute()
                node = self.client.get_node_from_key(full)
                now = await self.client.execute_command("TIME", target_nodes=node)
            else:
                pipe = self.client.pipeline(transaction=True)
                pipe.execute_command("GET", key, **_RAW)
                pipe.execute_command("PTTL", key)
                pipe.execute_command("TIME")
                value, pttl, now = await pipe.execute()
        except self._errors as exc:
            raise store_error(exc, full) from exc
        return value, int(pttl), time_ms(now)

    async def _command(self, name: str, full: str) -> Any:
        """One command on one key (GET, DEL), its reply undecoded."""
        if asyncio.get_running_loop() is not self._current[0]:
            await self._enter_loop()
        try:
            return await self.client.execute_command(name, self.key_bytes(full), **_RAW)
        except self._errors as exc:
            raise store_error(exc, full) from exc

    async def _server_ms(self) -> int:
        """The server's clock (TIME), in integer ms."""
        try:
            return time_ms(await self.client.time())
        except self._errors as exc:
            raise store_error(exc, None) from exc

    # -- the protocol ------------------------------------------------------

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it (see ``RedisStore.claim``).

        The native claims of one loop turn join the same pipeline as its script calls.
        """

        # Pipelined, a claim whose caller is cancelled while it is in flight is
        # given back by the batcher once its reply comes (see
        # gives_back_abandoned_claims): the caller needs no task to shield it.
        def give_back(_reply: Any) -> Awaitable[bool]:
            return self.release(key, token=token)

        if self._native:
            check_claim(key, token, lease_ms, ttl_ms, fingerprint)
            full = self._key_head + key
            answer = await self._native_claim(
                full, self._native_claim_command(full, token, lease_ms, fingerprint), give_back
            )
            if answer is not None:
                return answer
        return scripts.claim_result(
            await self._run(
                *self._claim_call(key, token, lease_ms, ttl_ms, fingerprint), abandoned=give_back
            )
        )

    @property
    def gives_back_abandoned_claims(self) -> bool:
        """Whether a claim cancelled in flight is released by the store itself (pipelining).

        The asyncio driver then awaits ``claim`` as it is; otherwise it runs
        each claim in a task of its own, shielded, and releases it itself.
        """
        return self.pipelining

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
        """Return the record under ``key`` (Redis drops expired ones), or None.

        One GET; a record Powertools wrote costs a TIME besides (see
        ``_judged_by_server``), and a natively written claim GET, PTTL and
        TIME again (see ``RedisStore.get``).
        """
        check_key(key)
        full = self.full_key(key)
        value = await self._command("GET", full)
        if scripts.has_key_expiry(value):
            return self._record_read(*await self._read_with_expiry(full))
        if self._judged_by_server(value):
            record = scripts.decode_value(value)  # a corrupt value raises before the TIME
            return record if record.deadline_ms > await self._server_ms() else None
        return self._record(value)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        check_key(key)
        return int(await self._command("DEL", self.full_key(key))) > 0
