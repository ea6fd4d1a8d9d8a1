"""What the sync and async Redis stores share: options, errors, replies.

Nothing here does I/O; the stores in ``store.py`` (sync) and
``async_store.py`` (asyncio) send, and ``clients.py`` builds their clients
from URLs.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import (
    CorruptRecordError,
    IdempotencyConfigError,
    IdempotencyStoreError,
    OnceOnlyWarning,
)
from ...metrics import log_extra
from ...records import ClaimResult, Record
from ..protocol import check_claim, check_complete, check_key, check_ms, check_token
from . import scripts

__all__ = [
    "ACL_COMMANDS",
    "ACL_HINT",
    "NEVER_DECODE",
    "Call",
    "RedisBase",
    "chained",
    "check_options",
    "check_waitaof_support",
    "hash_tag",
    "hiredis_packer",
    "import_redis",
    "needs_command_name",
    "redis_errors",
    "store_error",
    "time_ms",
    "wire_args",
]

logger = logging.getLogger("onceonly")

# What an ACL user needs: the commands the store sends (EVALSHA, EVAL when the
# server answers NOSCRIPT, SET for the native claim, GET and DEL for get /
# delete, PTTL and TIME for get of a native claim) and those its Lua scripts
# call (GET, SET, DEL, TIME, PTTL), which ACLs check inside a script too.
ACL_COMMANDS = ("EVALSHA", "EVAL", "GET", "SET", "DEL", "TIME", "PTTL")
ACL_HINT = (
    f"the ACL user needs {' '.join('+' + c.lower() for c in ACL_COMMANDS)} "
    "(and +wait / +waitaof with wait_replicas / wait_aof) and the key pattern "
    "~<prefix>:* of the store's prefix (with prefix='' the keys are stored as given: "
    "a pattern that matches them, e.g. ~<function name>#* for Powertools' keys)"
)
# An ACL refusal of a command a script calls comes back as a plain error reply:
# Redis says "The user executing the script can't run this command or
# subcommand", Valkey "ACL failure in script: ... no permissions to run ...".
_SCRIPT_ACL = re.compile(r"can't run this command|ACL failure|no permissions", re.IGNORECASE)

# redis-py's option that reads a reply as bytes whatever decode_responses says.
NEVER_DECODE = "NEVER_DECODE"


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
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.exceptions.ResponseError) and _SCRIPT_ACL.search(text)
    ):
        return IdempotencyStoreError(f"Redis refused the command{where} (ACL): {text}; {ACL_HINT}")
    if isinstance(exc, redis.exceptions.ResponseError) and text.startswith("WRONGTYPE"):
        return CorruptRecordError(
            f"the key{where} holds a Redis type other than a string; it is not an onceonly "
            "record: delete it, or give the store another prefix"
        )
    if isinstance(exc, redis.exceptions.RedisClusterException) and "not enabled" in text:
        return IdempotencyStoreError(
            f"the server is not a cluster node{where}: {text}; build the store without "
            "cluster=True (or with a redis.Redis client)"
        )
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return IdempotencyStoreError(
            f"cannot reach Redis{where}: {type(exc).__name__}: {text}; check host, port, "
            "password, TLS settings and that the server is up"
        )
    return IdempotencyStoreError(f"Redis failed{where}: {type(exc).__name__}: {text}")


def wire_args(args: tuple[Any, ...]) -> tuple[bytes | int, ...]:
    """A command's arguments as the store sends them: text as UTF-8 bytes.

    redis-py encodes text with the client's ``encoding`` on some paths and
    as UTF-8 on others (hiredis packs text as UTF-8 whatever the client
    says). The store encodes its keys and script arguments itself, so a key
    is the same Redis key from the sync and the async store, with or
    without hiredis, and the scripts read their arguments as they expect;
    bytes and integers go through redis-py as they are.
    """
    return tuple(a.encode() if isinstance(a, str) else a for a in args)


def check_options(
    prefix: object, wait_replicas: object, wait_timeout_ms: object, wait_aof: object
) -> None:
    """Validate the store options shared by the sync and async stores."""
    if not isinstance(prefix, str):
        raise IdempotencyConfigError(
            f"prefix must be a string ('' stores each key as given), got {prefix!r}"
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


def _outside_this_package() -> int:
    """The ``stacklevel`` of the first caller outside this package (the user's line)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(__package__):
        frame = frame.f_back
        level += 1
    return level


def time_ms(reply: Any) -> int:
    """The server's clock in integer ms from a TIME reply (seconds, microseconds)."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes instead of the whole key, if any.

    Redis Cluster's rule: the text between the first ``{`` and the first ``}``
    after it, when that text is not empty.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


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
        # What goes before each key: "{prefix}:", or nothing with prefix=""
        # (keys as given, such as those Powertools' Redis layer wrote).
        self._key_head = f"{prefix}:" if prefix else ""
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.wait_aof = wait_aof
        self.wait_shortfalls = 0
        self.clock = clock
        self._lock = threading.Lock()
        self._cluster = callable(getattr(client, "get_node_from_key", None))
        if self._cluster and hash_tag(self._key_head) is not None:
            warnings.warn(
                f"prefix {prefix!r} holds a Redis Cluster hash tag "
                f"{{{hash_tag(self._key_head)}}}: every key of this store goes to one slot, "
                "on one node. Keep it if that is what you want; otherwise drop the braces",
                OnceOnlyWarning,
                stacklevel=_outside_this_package(),
            )
        # Looked up once: these sit on every call's path.
        redis = import_redis()
        self._errors = redis_errors()
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._wait_command = self._waits()
        # The native claim (see _native_claim_command) needs the server's own
        # time for the lease: with an injected clock every call is a script.
        # Switched off for good when the server refuses it (Redis < 7.0).
        self._native = clock is None
        self._response_error: type[BaseException] = redis.exceptions.ResponseError

    def full_key(self, key: str) -> str:
        """The Redis key of an idempotency key: ``"{prefix}:{key}"``, or ``key`` with prefix ""."""
        return self._key_head + key

    def key_bytes(self, full: str) -> bytes:
        """A Redis key as the store sends it: UTF-8, whatever the client's ``encoding``."""
        return full.encode()

    def wire(self, full: str, args: tuple[Any, ...]) -> tuple[bytes | int, ...]:
        """A script call's key and arguments as sent (see :func:`wire_args`)."""
        return wire_args((full, *args))

    def check_key_prefix(self, key_prefix: str, *, stacklevel: int = 2) -> None:
        """Warn when a function's ``key_prefix`` puts all its keys in one cluster slot.

        A key is ``"{store prefix}:{key_prefix}:{digest}"``; braces in
        ``key_prefix`` make a Redis Cluster hash tag, so every key of that
        function lands on one node. That can be deliberate, so this warns
        (``OnceOnlyWarning``) and never refuses; only on a cluster client, and
        not again when the store's own prefix already holds the tag.

        Args:
            key_prefix: The key prefix of one decorated function.
            stacklevel: Passed to ``warnings.warn``.
        """
        if not self._cluster or hash_tag(self._key_head) is not None:
            return
        tag = hash_tag(self.full_key(f"{key_prefix}:"))
        if tag is not None:
            warnings.warn(
                f"key_prefix {key_prefix!r} makes a Redis Cluster hash tag {{{tag}}}: every "
                "key of this function goes to one slot, on one node. Keep it if that is "
                "what you want; otherwise drop the braces",
                OnceOnlyWarning,
                stacklevel=stacklevel + 1,
            )

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
                extra=log_extra(None, key, "wait_shortfall", type(self).__name__),
            )

    def _now_arg(self) -> int | str:
        # The scripts' last argument: '' = the server's TIME, or the injected clock.
        return "" if self.clock is None else self.clock()

    def _native_claim_command(
        self, full: str, token: str, lease_ms: int, fingerprint: str | None
    ) -> tuple[Any, ...]:
        """The claim as one native command: ``SET key record NX PX lease GET``.

        It takes an absent key, with the lease as the key's own expiry, or
        leaves the key as it is and answers its value (Redis / Valkey >= 7.0
        take NX with GET). The record's deadline is the key-expiry marker
        (``scripts.KEY_EXPIRY_DEADLINE``): the client does not know the
        server's time. Arguments are checked by the caller (``_claim_call``).
        """
        return (
            "SET",
            full.encode(),
            scripts.native_claim_value(token, fingerprint),
            "NX",
            "PX",
            lease_ms,
            "GET",
        )

    def _native_refused(self, error: object) -> bool:
        """Whether ``error`` is the server refusing ``SET ... NX ... GET``; if so, stop using it.

        Redis 6.2 takes GET but not with NX, older servers take neither: both
        answer a syntax error. The store then claims with the script, as it
        did before the native claim, for the rest of its life.
        """
        if not isinstance(error, self._response_error) or not str(error).lower().startswith(
            "syntax error"
        ):
            return False
        if self._native:
            self._native = False
            logger.info(
                "onceonly: this Redis server refuses SET with NX and GET (it came with "
                "Redis 7.0); claims run the claim script instead (%s)",
                error,
                extra=log_extra(None, None, "claim_script", type(self).__name__),
            )
        return True

    @staticmethod
    def _each(
        replies: list[Any], keys: Sequence[str], interpret: Callable[[Any, str], Any]
    ) -> list[Any]:
        """Interpret each reply; an error (handed back or raised) stays that key's answer."""
        answers: list[Any] = []
        for reply, key in zip(replies, keys, strict=True):
            if isinstance(reply, Exception):
                answers.append(reply)
                continue
            try:
                answers.append(interpret(reply, key))
            except CorruptRecordError as exc:
                answers.append(exc)
        return answers

    def _native_answers(
        self, replies: list[Any], fulls: list[str]
    ) -> list[ClaimResult | Exception | None]:
        """Each native claim's answer: a result, its own error, or None (the script must answer)."""
        answers: list[ClaimResult | Exception | None] = []
        for reply, full in zip(replies, fulls, strict=True):
            if not isinstance(reply, Exception):
                answers.append(scripts.native_claim_result(reply))
            elif self._native_refused(reply):
                answers.append(None)
            else:
                answers.append(chained(store_error(reply, full), reply))
        return answers

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
        """A value read with GET as a live record (None when absent or expired).

        Redis drops a record of ours when it ends (``PX``), so without an
        injected clock it is live while it is there. A record Powertools
        wrote is not always: see :meth:`_judged_by_server`.
        """
        if value is None:
            return None
        record = scripts.decode_value(value)
        if self.clock is not None and record.deadline_ms <= self.clock():
            return None
        return record

    def _record_read(self, value: Any, pttl: int, server_ms: int) -> Record | None:
        """A value read with its key's PTTL and the server's TIME, as a live record or None.

        A claim written natively ends with its key: its deadline is now +
        PTTL (by the injected clock, if there is one). Any other value is
        judged as ``get`` judges it.
        """
        if value is None:
            return None
        record = scripts.decode_value(value)
        if scripts.has_key_expiry(value):
            now = server_ms if self.clock is None else self.clock()
            return scripts.resolve_key_expiry(record, pttl, now)
        if self._judged_by_server(value):
            return record if record.deadline_ms > server_ms else None
        return self._record(value)

    def _judged_by_server(self, value: Any) -> bool:
        """Whether ``get`` must judge ``value`` by the server's TIME (no clock was injected).

        True for a value Powertools wrote: its key lasts until its
        ``expiration``, but an INPROGRESS record ends at its
        ``in_progress_expiration``, which may come first.
        """
        return self.clock is None and isinstance(value, bytes) and not scripts.is_ours(value)
