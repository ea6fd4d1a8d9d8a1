"""What the sync and async Redis stores share: options, errors, URLs, replies.

Nothing here does I/O except building clients in ``url_client``; the stores
in ``store.py`` (sync) and ``async_store.py`` (asyncio) only send.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import CorruptRecordError, IdempotencyConfigError, IdempotencyStoreError
from ...records import Record
from ..protocol import check_claim, check_complete, check_key, check_ms, check_token
from . import scripts

__all__ = [
    "Call",
    "RedisBase",
    "chained",
    "check_options",
    "check_waitaof_support",
    "hiredis_packer",
    "import_redis",
    "needs_command_name",
    "redis_errors",
    "store_error",
    "url_client",
]

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


def hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """``hiredis.pack_command`` (one command as RESP bytes, packed in C), or None."""
    try:
        import hiredis
    except ImportError:
        return None
    pack: Callable[[tuple[Any, ...]], bytes] | None = getattr(hiredis, "pack_command", None)
    return pack


def needs_command_name(get_connection: Callable[..., Any]) -> bool:
    """Whether a pool's ``get_connection`` needs a command name (redis-py before 5.3)."""
    try:
        parameters = list(inspect.signature(get_connection).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a pool without a signature
        return False
    return bool(parameters) and (
        parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        and parameters[0].default is inspect.Parameter.empty
    )


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a redis-py call can raise for a store failure."""
    redis = import_redis()
    return (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


def chained(error: IdempotencyStoreError, cause: BaseException) -> IdempotencyStoreError:
    """``error`` with ``cause`` as its ``__cause__`` (for errors handed back, not raised)."""
    error.__cause__ = cause
    return error


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


Call = tuple[scripts.Script, str, tuple[Any, ...]]


class RedisBase:
    """Options, argument checks and reply handling of both Redis stores."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        wait_replicas: int,
        wait_timeout_ms: int,
        wait_aof: bool,
        clock: Callable[[], int] | None,
    ) -> None:
        check_options(prefix, wait_replicas, wait_timeout_ms, wait_aof)
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be None or a callable returning integer ms")
        if not callable(getattr(client, "evalsha", None)):
            raise IdempotencyConfigError(
                f"client must be a redis-py client (Redis, RedisCluster or a Sentinel "
                f"master), got {type(client).__name__}"
            )
        self.client = client
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.wait_aof = wait_aof
        self.wait_shortfalls = 0
        self.clock = clock
        self._lock = threading.Lock()
        self._cluster = callable(getattr(client, "get_node_from_key", None))
        # Looked up once: these sit on every call's path.
        redis = import_redis()
        self._errors = redis_errors()
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._wait_command = self._waits()

    def full_key(self, key: str) -> str:
        """The Redis key of an idempotency key."""
        return f"{self.prefix}:{key}"

    def _waits(self) -> tuple[Any, ...] | None:
        if self.wait_aof:
            return ("WAITAOF", 1, self.wait_replicas, self.wait_timeout_ms)
        if self.wait_replicas > 0:
            return ("WAIT", self.wait_replicas, self.wait_timeout_ms)
        return None

    def _split_wait(self, replies: list[Any], key: str) -> list[Any]:
        """Take a pipeline's trailing WAIT / WAITAOF reply off (when one was sent) and note it."""
        if self._wait_command is not None:
            wait_reply = replies.pop()
            if isinstance(wait_reply, Exception):
                raise wait_reply
            self._note_wait(wait_reply, key)
        return replies

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

    def _now_arg(self) -> int | str:
        # The scripts' last argument: '' = the server's TIME, or the injected clock.
        return "" if self.clock is None else self.clock()

    # The script call of each operation, after its arguments are checked.

    def _claim_call(
        self, key: str, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> Call:
        check_claim(key, token, lease_ms, ttl_ms, fingerprint)
        return scripts.CLAIM, key, (token, lease_ms, fingerprint or "")

    def _complete_call(self, key: str, token: str, outcome: bytes, ttl_ms: int) -> Call:
        check_complete(key, token, outcome, ttl_ms)
        return scripts.COMPLETE, key, (token, outcome, ttl_ms)

    def _release_call(self, key: str, token: str) -> Call:
        check_key(key)
        check_token(token)
        return scripts.RELEASE, key, (token,)

    def _renew_call(self, key: str, token: str, lease_ms: int) -> Call:
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)
        return scripts.RENEW, key, (token, lease_ms)

    def _record(self, value: Any) -> Record | None:
        """A value read with GET as a live record (None when absent or expired)."""
        if value is None:
            return None
        record = scripts.decode_value(value)
        if self.clock is not None and record.deadline_ms <= self.clock():
            return None
        return record
