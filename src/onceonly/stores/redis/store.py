"""The Redis store: Redis, Valkey, Amazon ElastiCache and Amazon MemoryDB.

One string value per record under ``"{prefix}:{key}"`` (or ``key`` itself
with ``prefix=""``), with ``PX`` set to the lease while IN_PROGRESS (an orphan
vanishes by itself) and to the retention once COMPLETED. Each operation is one
Lua script call (``EVALSHA``, sent as ``EVAL`` when the server answers
``NOSCRIPT``), on one key, so it runs as it is on Redis Cluster and MemoryDB.
Expiry is judged by the server's ``TIME``.

The client is injected: a ``redis.Redis``, a ``redis.RedisCluster`` or a
Sentinel master client (``Sentinel(...).master_for(name)``).
``RedisStore.from_url`` builds one from a URL. ``AsyncRedisStore`` is the
asyncio twin, with automatic pipelining.

Values that Powertools' idempotency utility wrote (a JSON object under the
bare key: use ``prefix=""`` to meet them) are read as records (see
``onceonly.powertools_records``); the scripts apply the same rule.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import CorruptRecordError, IdempotencyConfigError
from ...records import ClaimResult, Record
from ..protocol import (
    ClaimCall,
    CompleteCall,
    ReleaseCall,
    RenewCall,
    check_claim,
    check_key,
)
from . import scripts
from .clients import url_client
from .common import (
    NEVER_DECODE,
    Call,
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

__all__ = ["RedisStore"]

# Replies are read as bytes, whatever the client's decode_responses (see wire_args).
_RAW = {NEVER_DECODE: True}
# The native claim's options: get=True makes redis-py's SET callback hand back
# the GET reply as it is (without it, the reply would be turned into a bool).
_SET_GET = {NEVER_DECODE: True, "get": True}


class RedisStore(RedisBase):
    """A store on Redis, Valkey, ElastiCache or MemoryDB.

    Args:
        client: A ``redis.Redis``, ``redis.RedisCluster`` or Sentinel master
            client. Its ``decode_responses`` and ``encoding`` do not matter:
            the store sends UTF-8 bytes and reads its replies undecoded.
        prefix: Every record key is ``"{prefix}:{key}"``; with ``""`` it is
            ``key`` as given (as Powertools' Redis layer stores them, for a
            move from Powertools: its records are then read as records).
        wait_replicas: After each write, ``WAIT`` for this many replicas to
            acknowledge it (0: do not wait). A shortfall is logged and counted
            in ``wait_shortfalls``; the write itself stands either way.
        wait_timeout_ms: Longest ``WAIT`` / ``WAITAOF`` in milliseconds.
        wait_aof: After each write, ``WAITAOF`` until it is fsynced to the
            primary's append-only file (and to ``wait_replicas`` replicas').
            Needs Redis or Valkey >= 7.2 with ``appendonly yes``; checked here.
        clock: None (default) judges leases and expiry by the server's ``TIME``.
            A callable returning integer milliseconds replaces it, for tests
            that move time by hand; keys still vanish by the server's own
            ``PX`` expiry.

    Raises:
        IdempotencyConfigError: Bad options, an asyncio client (use
            ``AsyncRedisStore``), or ``wait_aof`` on a server without WAITAOF.
        IdempotencyStoreError: ``wait_aof`` was asked and the server could
            not be reached to check it.
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
    ) -> None:
        super().__init__(
            client,
            prefix=prefix,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            wait_aof=wait_aof,
            clock=clock,
        )
        if inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
            raise IdempotencyConfigError("this is an asyncio client: use AsyncRedisStore")
        self._hiredis_pack = hiredis_packer()
        pool = getattr(client, "connection_pool", None)
        # Single calls skip redis-py's per-command machinery on a plain pooled
        # client (standalone or Sentinel master) when hiredis packs the command.
        self._direct = (
            self._hiredis_pack is not None
            and not self._cluster
            and pool is not None
            and getattr(client, "connection", None) is None  # not single_connection_client
            and getattr(pool, "cache", None) is None  # no client-side caching
        )
        self._pool_wants_name = pool is not None and needs_command_name(pool.get_connection)
        if wait_aof:
            self._check_waitaof()

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
        **client_options: Any,
    ) -> RedisStore:
        """Build the store and its client from a URL.

        Args:
            url: ``redis://[user:password@]host:port/db``, ``rediss://...``
                (TLS), or ``redis+sentinel://[user:password@]host:port[,host:port]/service[/db]``.
            cluster: Use ``RedisCluster`` (the URL names any one node).
            prefix: As for the constructor.
            wait_replicas: As for the constructor.
            wait_timeout_ms: As for the constructor.
            wait_aof: As for the constructor.
            **client_options: Passed to redis-py, e.g. ``ssl_ca_certs``,
                ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
                ``username``, ``password``, ``socket_timeout`` (default 5 s),
                ``retry``.

        A standalone or Sentinel client built here retries a call whose
        connection failed (a lost reply, a restarted server) on a new
        connection, with exponential backoff and jitter, for at most
        ``socket_timeout`` seconds: every script is safe to send twice under
        the same token (a repeated claim answers Acquired, a repeated complete
        finds its own outcome). ``retry=`` replaces that policy (``None``:
        no retry). A cluster client keeps redis-py's cluster retry.

        Returns:
            The store.

        Raises:
            IdempotencyConfigError: A URL or option redis-py cannot use (the
                message names it, never the password), or ``cluster=True``
                against a server that is not a cluster node.
            IdempotencyStoreError: ``cluster=True`` and no node answered.
        """
        client = url_client(url, cluster=cluster, asyncio=False, options=client_options)
        return cls(
            client,
            prefix=prefix,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            wait_aof=wait_aof,
        )

    # -- I/O ---------------------------------------------------------------

    def _check_waitaof(self) -> None:
        try:
            server = self.client.info("server")
            persistence = self.client.info("persistence")
        except redis_errors() as exc:
            raise store_error(exc, None) from exc
        check_waitaof_support(server, persistence)

    def _run(self, script: scripts.Script, key: str, args: tuple[Any, ...]) -> Any:
        full = self.full_key(key)
        args = self.wire(full, (*args, self._now_arg()))
        try:
            if self._wait_command is None:
                try:
                    if self._direct:
                        return self._direct_call(("EVALSHA", script.sha, 1, *args))
                    return self.client.execute_command("EVALSHA", script.sha, 1, *args, **_RAW)
                except self._noscript:
                    # First use on this server, a restart, a failover or SCRIPT FLUSH:
                    # EVAL runs it and caches it for the next EVALSHA.
                    return self.client.execute_command("EVAL", script.code, 1, *args, **_RAW)
            try:
                return self._call_and_wait(full, ("EVALSHA", script.sha, 1, *args))
            except self._noscript:
                return self._call_and_wait(full, ("EVAL", script.code, 1, *args))
        except self._errors as exc:
            raise store_error(exc, full) from exc

    def _direct_call(self, command: tuple[Any, ...]) -> Any:
        """One command on a pooled connection, without the client's per-command machinery.

        What ``client.execute_command`` does, less its bookkeeping: take a
        pooled connection, send, read, under the connection's retry policy (a
        failed attempt closes the connection; the next one reconnects, to the
        new primary after a Sentinel failover), and give the connection back.
        An error reply (NOSCRIPT included) is raised as the client raises it.
        The reply is read undecoded, with no response callback. ``command``
        holds bytes and integers only (so hiredis packs it as the client would).
        """
        pool = self.client.connection_pool
        conn = pool.get_connection(command[0]) if self._pool_wants_name else pool.get_connection()
        try:
            pack = self._hiredis_pack
            assert pack is not None  # _direct needs it
            packed = [pack(command)]

            def attempt() -> Any:
                conn.send_packed_command(packed)
                return conn.read_response(disable_decoding=True)

            return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        except self._response_error:
            raise  # a whole reply was read: the connection is fine
        except BaseException:
            conn.disconnect()  # never hand back a half-read connection
            raise
        finally:
            pool.release(conn)

    def _call_and_wait(self, full: str, command: tuple[Any, ...]) -> Any:
        """One write command, then WAIT / WAITAOF on the same connection (one round trip)."""
        wait = self._wait_command
        assert wait is not None
        target = self.client
        if self._cluster:
            target = self.client.get_node_from_key(full).redis_connection
        pipe = target.pipeline(transaction=False)
        pipe.execute_command(*command, **(_SET_GET if command[0] == "SET" else _RAW))
        pipe.execute_command(*wait)
        try:
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except self._errors as exc:
            self._after_node_error(exc)
            raise
        self._note_wait(replies[1], full)
        return replies[0]

    def _after_node_error(self, exc: BaseException) -> None:
        """Refresh a cluster client's slot map after an error that says it may be stale.

        The per-node paths (a write with WAIT / WAITAOF, GET with PTTL and
        TIME) send to the node the client's cached slot map names, so the
        client's own refresh on errors, which runs inside its
        ``execute_command``, never runs for them: after a failover they would
        keep sending to the dead node. Best effort: the call fails closed
        either way, and the next one uses the map as refreshed.
        """
        if not self._cluster:
            return
        exceptions = import_redis().exceptions
        stale = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            exceptions.MovedError,
            exceptions.ClusterDownError,
        )
        if isinstance(exc, stale):
            # No node answering yet is no worse: the next call's error tries again.
            with contextlib.suppress(*self._errors):
                self.client.nodes_manager.initialize()

    def _native_claim(self, full: str, command: tuple[Any, ...]) -> ClaimResult | None:
        """Send the native claim: its answer, or None when the claim script must answer."""
        try:
            if self._wait_command is not None:
                reply = self._call_and_wait(full, command)
            elif self._direct:
                reply = self._direct_call(command)
            else:
                reply = self.client.execute_command(*command, **_SET_GET)
        except self._errors as exc:
            if self._native_refused(exc):
                return None
            raise store_error(exc, full) from exc
        return scripts.native_claim_result(reply)

    def _send_many(self, fulls: list[str], commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send native claims in one pipeline (and WAIT): each answer a reply or its error."""
        if self._wait_command is not None and self._cluster:
            # WAIT needs the connection of each key's node: one call (and WAIT) per key.
            answers: list[Any] = []
            for full, command in zip(fulls, commands, strict=True):
                try:
                    answers.append(self._call_and_wait(full, command))
                except self._response_error as exc:
                    answers.append(exc)
                except self._errors as exc:
                    raise store_error(exc, full) from exc
            return answers
        try:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command, **_SET_GET)
            if self._wait_command is not None:
                pipe.execute_command(*self._wait_command)  # one WAIT covers every write
            return self._split_wait(list(pipe.execute(raise_on_error=False)), fulls[0])
        except self._errors as exc:
            raise store_error(exc, None) from exc

    def _read_with_expiry(self, full: str) -> tuple[Any, int, int]:
        """GET, PTTL and the server's TIME of one key, at one instant (MULTI, one round trip)."""
        target = self.client
        if self._cluster:
            target = self.client.get_node_from_key(full).redis_connection
        key = self.key_bytes(full)
        try:
            pipe = target.pipeline(transaction=True)
            pipe.execute_command("GET", key, **_RAW)
            pipe.execute_command("PTTL", key)
            pipe.execute_command("TIME")
            value, pttl, now = pipe.execute()
        except self._errors as exc:
            self._after_node_error(exc)
            raise store_error(exc, full) from exc
        return value, int(pttl), time_ms(now)

    def _run_many(self, calls: list[Call]) -> list[Any]:
        """Send many script calls in one pipeline: each answer is a reply or its own error."""
        if not calls:
            return []
        if self._wait_command is not None and self._cluster:
            # WAIT needs the connection of each key's node: one call (and WAIT) per key.
            answers: list[Any] = []
            for call in calls:
                try:
                    answers.append(self._run(*call))
                except CorruptRecordError as exc:
                    answers.append(exc)
            return answers
        now = self._now_arg()
        fulls = [self.full_key(key) for _, key, _ in calls]
        try:
            replies = self._pipeline(calls, fulls, now, use_sha=True)
            missing = [i for i, r in enumerate(replies) if isinstance(r, self._noscript)]
            if missing:
                again = self._pipeline(
                    [calls[i] for i in missing], [fulls[i] for i in missing], now, use_sha=False
                )
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except self._errors as exc:
            raise store_error(exc, None) from exc
        return [
            chained(store_error(r, full), r) if isinstance(r, Exception) else r
            for r, full in zip(replies, fulls, strict=True)
        ]

    def _pipeline(
        self, calls: list[Call], fulls: list[str], now: Any, *, use_sha: bool
    ) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for (script, _, args), full in zip(calls, fulls, strict=True):
            body = script.sha if use_sha else script.code
            command = "EVALSHA" if use_sha else "EVAL"
            pipe.execute_command(command, body, 1, *self.wire(full, (*args, now)), **_RAW)
        if self._wait_command is not None:
            pipe.execute_command(*self._wait_command)  # one WAIT covers every write before it
        replies = list(pipe.execute(raise_on_error=False))
        return self._split_wait(replies, fulls[0])

    def _command(self, name: str, full: str) -> Any:
        """One command on one key (GET, DEL), its reply undecoded."""
        try:
            return self.client.execute_command(name, self.key_bytes(full), **_RAW)
        except self._errors as exc:
            raise store_error(exc, full) from exc

    def _server_ms(self) -> int:
        """The server's clock (TIME), in integer ms."""
        try:
            return time_ms(self.client.time())
        except self._errors as exc:
            raise store_error(exc, None) from exc

    # -- the protocol ------------------------------------------------------

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it: one round trip.

        Judged by the server's time (no ``clock=``), the claim is one native
        ``SET key record NX PX lease GET``: it takes an absent key or answers
        with a completed record. Any other value it meets (an IN_PROGRESS
        record, one Powertools wrote, one that is not a record) is left as it
        was and judged by the claim script, in a second round trip. With an
        injected clock, or on a server that refuses NX with GET (before
        Redis 7.0), the claim is the script alone.

        Raises:
            CorruptRecordError: The value under the key is not a record.
            IdempotencyStoreError: Redis failed or could not be reached.
        """
        if self._native:
            check_claim(key, token, lease_ms, ttl_ms, fingerprint)
            full = self._key_head + key
            answer = self._native_claim(
                full, self._native_claim_command(full, token, lease_ms, fingerprint)
            )
            if answer is not None:
                return answer
        return scripts.claim_result(
            self._run(*self._claim_call(key, token, lease_ms, ttl_ms, fingerprint))
        )

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim: one script call."""
        return scripts.write_result(
            self._run(*self._complete_call(key, token, outcome, ttl_ms)), key
        )

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it: one script call."""
        return scripts.write_result(self._run(*self._release_call(key, token)), key)

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it: one script call."""
        return scripts.write_result(self._run(*self._renew_call(key, token, lease_ms)), key)

    # -- many keys in one round trip (record batches) -----------------------

    def claim_many(self, calls: Sequence[ClaimCall]) -> list[ClaimResult | Exception]:
        """Claim many keys in one pipeline (one round trip per cluster node).

        The native claims go first, in one pipeline; the keys whose value
        needs the claim script (see ``claim``) go in one more.
        """
        script_calls = [self._claim_call(*c) for c in calls]
        keys = [c.key for c in calls]
        if not self._native or not calls:
            return self._claimed_by_script(script_calls, keys)
        fulls = [self.full_key(key) for key in keys]
        replies = self._send_many(
            fulls,
            [
                self._native_claim_command(full, c.token, c.lease_ms, c.fingerprint)
                for full, c in zip(fulls, calls, strict=True)
            ],
        )
        answers = self._native_answers(replies, fulls)
        rest = [i for i, answer in enumerate(answers) if answer is None]
        if rest:
            again = self._claimed_by_script(
                [script_calls[i] for i in rest], [keys[i] for i in rest]
            )
            for i, answer in zip(rest, again, strict=True):
                answers[i] = answer
        return [answer for answer in answers if answer is not None]

    def _claimed_by_script(
        self, calls: list[Call], keys: list[str]
    ) -> list[ClaimResult | Exception]:
        replies = self._run_many(calls)
        return self._each(replies, keys, lambda r, _: scripts.claim_result(r))

    def complete_many(self, calls: Sequence[CompleteCall]) -> list[bool | Exception]:
        """Complete many claims in one pipeline."""
        replies = self._run_many([self._complete_call(*c) for c in calls])
        return self._each(replies, [c.key for c in calls], scripts.write_result)

    def release_many(self, calls: Sequence[ReleaseCall]) -> list[bool | Exception]:
        """Release many claims in one pipeline."""
        replies = self._run_many([self._release_call(*c) for c in calls])
        return self._each(replies, [c.key for c in calls], scripts.write_result)

    def renew_many(self, calls: Sequence[RenewCall]) -> list[bool | Exception]:
        """Renew many claims in one pipeline (a batch's heartbeat)."""
        replies = self._run_many([self._renew_call(*c) for c in calls])
        return self._each(replies, [c.key for c in calls], scripts.write_result)

    def get(self, key: str) -> Record | None:
        """Return the record under ``key`` (Redis drops expired ones), or None.

        One GET; a record Powertools wrote costs a TIME besides (see
        ``_judged_by_server``), and a claim written natively (its deadline is
        the key's expiry) a second round trip: GET, PTTL and TIME at once.

        Raises:
            CorruptRecordError: The value under the key is not a record.
        """
        check_key(key)
        full = self.full_key(key)
        value = self._command("GET", full)
        if scripts.has_key_expiry(value):
            return self._record_read(*self._read_with_expiry(full))
        if self._judged_by_server(value):
            record = scripts.decode_value(value)  # a corrupt value raises before the TIME
            return record if record.deadline_ms > self._server_ms() else None
        return self._record(value)

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        check_key(key)
        return int(self._command("DEL", self.full_key(key))) > 0
