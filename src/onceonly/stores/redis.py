"""The Redis store: Redis, Valkey, Amazon ElastiCache and Amazon MemoryDB.

One string value per record under ``"{prefix}:{key}"``, with ``PX`` set to the
lease while IN_PROGRESS (an orphan vanishes by itself) and to the retention
once COMPLETED. Each operation is one Lua script call (``EVALSHA``, sent as
``EVAL`` when the server answers ``NOSCRIPT``), on one key, so it runs as it is
on Redis Cluster and MemoryDB. Expiry is judged by the server's ``TIME``.

The client is injected: a ``redis.Redis``, a ``redis.RedisCluster`` or a
Sentinel master client (``Sentinel(...).master_for(name)``).
``RedisStore.from_url`` builds one from a URL.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import CorruptRecordError, IdempotencyConfigError, IdempotencyStoreError
from ..records import ClaimResult, Record
from . import _redis_scripts as scripts
from .protocol import check_claim, check_complete, check_key, check_ms, check_token

__all__ = ["RedisStore"]

logger = logging.getLogger("onceonly")


def import_redis() -> Any:
    """Import redis-py, or say which extra installs it."""
    try:
        import redis
    except ImportError as exc:
        raise IdempotencyConfigError(
            "the Redis store needs redis-py: pip install 'onceonly[redis]'"
        ) from exc
    return redis


def store_error(exc: BaseException, key: str | None) -> IdempotencyStoreError:
    """Map a redis-py exception to the documented error (the caller chains it)."""
    redis = import_redis()
    where = f" (key {key})" if key is not None else ""
    text = str(exc)
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return IdempotencyStoreError(
            f"Redis refused the command{where}: {text}; the ACL user needs EVALSHA, EVAL "
            "(and WAIT / WAITAOF if used) on the store's key prefix"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and text.startswith("WRONGTYPE"):
        return CorruptRecordError(
            f"the key{where} holds a Redis type other than a string; it is not an onceonly "
            "record: delete it, or give the store another prefix"
        )
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return IdempotencyStoreError(
            f"cannot reach Redis{where}: {type(exc).__name__}: {text}; check host, port, "
            "password, TLS settings and that the server is up"
        )
    return IdempotencyStoreError(f"Redis failed{where}: {type(exc).__name__}: {text}")


def check_options(
    prefix: object, wait_replicas: object, wait_timeout_ms: object, wait_aof: object
) -> None:
    """Validate the store options shared by the sync and async stores."""
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise IdempotencyConfigError(
            "prefix must be a non-empty string without braces (braces would pin every "
            "key to one cluster slot)"
        )
    if type(wait_replicas) is not int or wait_replicas < 0:
        raise IdempotencyConfigError(
            f"wait_replicas must be an integer >= 0, got {wait_replicas!r}"
        )
    if type(wait_timeout_ms) is not int or wait_timeout_ms < 0:
        raise IdempotencyConfigError(
            f"wait_timeout_ms must be an integer >= 0 (0 waits forever), got {wait_timeout_ms!r}"
        )
    if not isinstance(wait_aof, bool):
        raise IdempotencyConfigError("wait_aof must be True or False")


def _first_node(info: Any) -> dict[str, Any]:
    # RedisCluster.info() answers per node: {node name: {...}}.
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        return dict(next(iter(info.values())))
    return dict(info or {})


def check_waitaof_support(server: Any, persistence: Any) -> None:
    """Raise IdempotencyConfigError unless INFO says WAITAOF can work (>= 7.2, AOF on)."""
    server, persistence = _first_node(server), _first_node(persistence)
    version = str(server.get("redis_version", "0"))
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) < (7, 2):
        raise IdempotencyConfigError(
            f"wait_aof needs WAITAOF, which came with Redis / Valkey 7.2; this server "
            f"reports {version}"
        )
    if int(persistence.get("aof_enabled", 0)) != 1:
        raise IdempotencyConfigError("wait_aof needs appendonly yes on the server")


def url_client(url: str, *, cluster: bool, asyncio: bool, options: dict[str, Any]) -> Any:
    """Build a redis-py client (sync or asyncio) from a URL.

    ``redis://`` and ``rediss://`` (TLS) go to ``Redis.from_url`` or, with
    ``cluster=True``, ``RedisCluster.from_url``. ``redis+sentinel://`` and
    ``rediss+sentinel://`` take ``[user:password@]host:port[,host:port...]/service[/db]``
    and return the service's master client.
    """
    redis = import_redis()
    module = redis.asyncio if asyncio else redis
    options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, **options}
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    # valkey:// and valkeys:// are the same protocol under Valkey's own names.
    if scheme in ("valkey", "valkeys"):
        scheme = scheme.replace("valkey", "redis")
        url = f"{scheme}{sep}{rest}"
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        parts = urlsplit(url)
        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise IdempotencyConfigError(f"sentinel address {item!r} needs host:port")
            hosts.append((host.strip("[]"), int(port)))
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise IdempotencyConfigError(
                "redis+sentinel:// URLs end in /service_name or /service_name/db"
            )
        auth: dict[str, Any] = {}
        if parts.username:
            auth["username"] = unquote(parts.username)
        if parts.password:
            auth["password"] = unquote(parts.password)
        if scheme.startswith("rediss"):
            options.setdefault("ssl", True)
        sentinel = module.Sentinel(
            hosts,
            sentinel_kwargs={**options, **options.pop("sentinel_kwargs", {})},
            **options,
        )
        return sentinel.master_for(path[0], db=int(path[1]) if len(path) == 2 else 0, **auth)
    if scheme not in ("redis", "rediss", "unix"):
        raise IdempotencyConfigError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, "
            "redis+sentinel:// or rediss+sentinel://"
        )
    factory = module.RedisCluster if cluster else module.Redis
    return factory.from_url(url, **options)


class RedisStore:
    """A store on Redis, Valkey, ElastiCache or MemoryDB.

    Args:
        client: A ``redis.Redis``, ``redis.RedisCluster`` or Sentinel master
            client (``decode_responses`` may be either).
        prefix: Every record key is ``"{prefix}:{key}"``.
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
        check_options(prefix, wait_replicas, wait_timeout_ms, wait_aof)
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be None or a callable returning integer ms")
        evalsha = getattr(client, "evalsha", None)
        if not callable(evalsha):
            raise IdempotencyConfigError(
                f"client must be a redis-py client (redis.Redis, RedisCluster or a Sentinel "
                f"master), got {type(client).__name__}"
            )
        if inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
            raise IdempotencyConfigError("this is an asyncio client: use AsyncRedisStore")
        self.client = client
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.wait_aof = wait_aof
        self.wait_shortfalls = 0
        self.clock = clock
        self._lock = threading.Lock()
        self._cluster = callable(getattr(client, "get_node_from_key", None))
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
            prefix, wait_replicas, wait_timeout_ms, wait_aof: As for the constructor.
            **client_options: Passed to redis-py, e.g. ``ssl_ca_certs``,
                ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
                ``username``, ``password``, ``socket_timeout`` (default 5 s).

        Returns:
            The store.
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
        redis = import_redis()
        try:
            server = self.client.info("server")
            persistence = self.client.info("persistence")
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise store_error(exc, None) from exc
        check_waitaof_support(server, persistence)

    def _waits(self) -> tuple[Any, ...] | None:
        if self.wait_aof:
            return ("WAITAOF", 1, self.wait_replicas, self.wait_timeout_ms)
        if self.wait_replicas > 0:
            return ("WAIT", self.wait_replicas, self.wait_timeout_ms)
        return None

    def _note_wait(self, reply: Any, key: str) -> None:
        if isinstance(reply, list):  # WAITAOF: [local fsyncs, replica fsyncs]
            short = int(reply[0]) < 1 or int(reply[1]) < self.wait_replicas
        else:
            short = int(reply) < self.wait_replicas
        if short:
            with self._lock:
                self.wait_shortfalls += 1
            logger.warning(
                "onceonly: a write to %s was acknowledged by fewer replicas than wait_replicas=%d "
                "(%r); it may be lost if the primary fails now",
                key,
                self.wait_replicas,
                reply,
            )

    def _run(self, script: scripts.Script, key: str, *args: Any) -> Any:
        redis = import_redis()
        full = f"{self.prefix}:{key}"
        args = (*args, "" if self.clock is None else self.clock())
        waits = self._waits()
        try:
            if waits is None:
                try:
                    return self.client.evalsha(script.sha, 1, full, *args)
                except redis.exceptions.NoScriptError:
                    # First use on this server, a restart, a failover or SCRIPT FLUSH:
                    # EVAL runs it and caches it for the next EVALSHA.
                    return self.client.eval(script.source, 1, full, *args)
            # WAIT acts on its own connection's writes: send both in one pipeline.
            target = self.client
            if self._cluster:
                target = self.client.get_node_from_key(full).redis_connection
            for command in ("EVALSHA", "EVAL"):
                pipe = target.pipeline(transaction=False)
                body = script.sha if command == "EVALSHA" else script.source
                pipe.execute_command(command, body, 1, full, *args)
                pipe.execute_command(*waits)
                replies = pipe.execute(raise_on_error=False)
                if not isinstance(replies[0], redis.exceptions.NoScriptError):
                    break
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            self._note_wait(replies[1], full)
            return replies[0]
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise store_error(exc, full) from exc

    # -- the protocol ------------------------------------------------------

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it: one script call.

        Raises:
            CorruptRecordError: The value under the key is not a record.
            IdempotencyStoreError: Redis failed or could not be reached.
        """
        check_claim(key, token, lease_ms, ttl_ms, fingerprint)
        reply = self._run(scripts.CLAIM, key, token, lease_ms, fingerprint or "")
        return scripts.claim_result(reply)

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim: one script call."""
        check_complete(key, token, outcome, ttl_ms)
        return scripts.write_result(self._run(scripts.COMPLETE, key, token, outcome, ttl_ms), key)

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it: one script call."""
        check_key(key)
        check_token(token)
        return scripts.write_result(self._run(scripts.RELEASE, key, token), key)

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds it: one script call."""
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)
        return scripts.write_result(self._run(scripts.RENEW, key, token, lease_ms), key)

    def get(self, key: str) -> Record | None:
        """Return the record under ``key`` (Redis drops expired ones), or None.

        Raises:
            CorruptRecordError: The value under the key is not a record.
        """
        check_key(key)
        redis = import_redis()
        full = f"{self.prefix}:{key}"
        try:
            value = self.client.get(full)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise store_error(exc, full) from exc
        if value is None:
            return None
        record = scripts.decode_value(value)
        if self.clock is not None and record.deadline_ms <= self.clock():
            return None
        return record

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds; True if something was there."""
        check_key(key)
        redis = import_redis()
        full = f"{self.prefix}:{key}"
        try:
            return int(self.client.delete(full)) > 0
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise store_error(exc, full) from exc
