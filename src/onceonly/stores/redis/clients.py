"""The clients the Redis stores build for themselves: from a URL, retrying.

``url_client`` turns a URL and options into a redis-py client (sync or
asyncio; standalone, cluster or Sentinel), checking what it can before any
I/O so that bad input fails at construction with ``IdempotencyConfigError``.
``bounded_retry`` is the retry policy it gives a standalone or Sentinel
client: a call whose connection failed is sent again, within the socket
timeout. Every store script is safe to send twice under the same token.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ...errors import IdempotencyConfigError
from .._redact import redact_url, split_inside_password
from .common import import_redis, store_error

__all__ = ["bounded_retry", "redacted_url", "url_client"]


# -- retrying a call whose connection failed -------------------------------------------

# redis-py's own default policy for a client built with redis.Redis(...): up to
# 10 retries, exponential backoff with full jitter from 10 ms, capped at 1 s.
RETRIES = 10
BACKOFF_BASE_S = 0.01
BACKOFF_CAP_S = 1.0

# The deadline of the outermost retrying call in this thread / task. redis-py
# retries a connect inside a command's own retry; the inner loop keeps to the
# outer deadline, so one store call never waits much past its budget.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "onceonly_redis_retry_deadline", default=None
)


_monotonic = time.monotonic


def _deadline(started: float, budget: float) -> float:
    own = started + budget
    outer = _DEADLINE.get()
    return own if outer is None or own < outer else outer


def _next_pause(backoff: Any, retries: int, failures: int, deadline: float) -> float | None:
    """The pause before the next try, or None to give up (the sync and async loops' one rule).

    Give up after ``retries`` failed retries (a negative count: no limit), or
    when the pause would end past the call's deadline.
    """
    pause: float = backoff.compute(failures)
    if failures > retries >= 0 or _monotonic() + pause >= deadline:
        return None
    return pause


@functools.cache
def _retry_classes() -> tuple[type[Any], type[Any]]:
    """The bounded retry classes (sync, asyncio), built on first use (redis-py is optional)."""
    import asyncio  # here, with redis.asyncio: not in a sync program's cold start

    import_redis()
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.retry import Retry

    class BoundedRetry(Retry):
        """redis-py's ``Retry`` that stops once ``budget`` seconds have passed since the call."""

        def __init__(self, backoff: Any, retries: int, budget: float) -> None:
            super().__init__(backoff, retries)
            self.budget = budget

        def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            started = _monotonic()  # all that the happy path adds to do()
            try:
                return do()
            except self._supported_errors as error:
                first = error
            return self._again(do, fail, is_retryable, with_failure_count, first, started)

        def _again(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None,
            with_failure_count: bool,
            error: Exception,
            started: float,
        ) -> Any:
            deadline = _deadline(started, self.budget)
            token = _DEADLINE.set(deadline)  # a connect retried inside keeps to it
            try:
                failures = 0
                while True:
                    if is_retryable is not None and not is_retryable(error):
                        raise error
                    failures += 1
                    if with_failure_count:
                        fail(error, failures)
                    else:
                        fail(error)
                    pause = _next_pause(self._backoff, self._retries, failures, deadline)
                    if pause is None:
                        raise error
                    if pause > 0:
                        time.sleep(pause)
                    try:
                        return do()
                    except self._supported_errors as again:
                        error = again
            finally:
                _DEADLINE.reset(token)

    class AsyncBoundedRetry(AsyncRetry):
        """The asyncio twin of ``BoundedRetry``."""

        def __init__(self, backoff: Any, retries: int, budget: float) -> None:
            super().__init__(backoff, retries)
            self.budget = budget

        async def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            started = _monotonic()
            try:
                return await do()
            except self._supported_errors as error:
                first = error
            return await self._again(do, fail, is_retryable, with_failure_count, first, started)

        async def _again(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None,
            with_failure_count: bool,
            error: Exception,
            started: float,
        ) -> Any:
            deadline = _deadline(started, self.budget)
            token = _DEADLINE.set(deadline)
            try:
                failures = 0
                while True:
                    if is_retryable is not None and not is_retryable(error):
                        raise error
                    failures += 1
                    failed = fail(error, failures) if with_failure_count else fail(error)
                    if inspect.isawaitable(failed):
                        await failed
                    pause = _next_pause(self._backoff, self._retries, failures, deadline)
                    if pause is None:
                        raise error
                    if pause > 0:
                        await asyncio.sleep(pause)
                    try:
                        return await do()
                    except self._supported_errors as again:
                        error = again
            finally:
                _DEADLINE.reset(token)

    return BoundedRetry, AsyncBoundedRetry


def bounded_retry(budget: float, *, asyncio: bool) -> Any:
    """A redis-py retry policy for the clients the stores build.

    A call that fails with a connection error or a timeout is sent again on a
    new connection, with exponential backoff and jitter, until it succeeds,
    10 retries have failed, or ``budget`` seconds have passed since it began
    (a call that timed out has used its budget and is not sent again). The
    four scripts are safe to repeat under the same token: a repeated claim
    finds its own claim and answers Acquired, a repeated complete finds its
    own outcome and answers True, a repeated renew renews again, and a
    repeated release finds nothing left to release.

    Args:
        budget: Seconds after which a failing call is not sent again.
        asyncio: Build the ``redis.asyncio`` flavour.

    Returns:
        A ``redis.retry.Retry`` (or ``redis.asyncio.retry.Retry``).
    """
    from redis.backoff import ExponentialWithJitterBackoff

    sync_class, async_class = _retry_classes()
    backoff = ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S)
    return (async_class if asyncio else sync_class)(backoff, RETRIES, budget)


# -- URLs ---------------------------------------------------------------------------------

DEFAULT_TIMEOUT_S = 5.0


def redacted_url(url: str) -> str:
    """``url`` as messages show it: no password, no query (see ``stores._redact``)."""
    return redact_url(url)


def _timeout(name: str, value: object) -> float | None:
    """A socket timeout option: None or a positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise IdempotencyConfigError(
            f"{name} must be a positive number of seconds or None, got {value!r}"
        )
    return float(value)


def _budget(url: str, options: dict[str, Any]) -> float:
    """How long a call may keep retrying: the socket timeout (the URL's query wins)."""
    query = parse_qs(urlsplit(url).query)
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in query:
            try:
                value: object = float(query[name][0])
            except ValueError:
                raise IdempotencyConfigError(
                    f"{name} in the Redis URL must be a number of seconds"
                ) from None
        else:
            value = options.get(name)
        seconds = _timeout(name, value)
        if seconds is not None:
            return seconds
    return DEFAULT_TIMEOUT_S


def _check_url(scheme: str, url: str, shown: str) -> None:
    """Parse a redis:// / rediss:// / unix:// URL as redis-py will, failing with our error."""
    parse_url: Any = import_redis().connection.parse_url  # untyped in redis-py
    try:
        parse_url(url)
    except (TypeError, ValueError) as exc:
        raise IdempotencyConfigError(f"bad Redis URL {shown}: {exc}") from None
    if scheme != "unix":
        path = urlsplit(url).path.strip("/")
        if path and not path.isdigit():
            raise IdempotencyConfigError(
                f"bad Redis URL {shown}: the path is the database number (/0, /1...), got /{path}"
            )


def _sentinel_client(
    module: Any, scheme: str, url: str, shown: str, options: dict[str, Any]
) -> Any:
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise IdempotencyConfigError(
                f"sentinel address {item!r} in {shown} needs host:port (port 1-65535)"
            )
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise IdempotencyConfigError(
            f"bad Redis URL {shown}: redis+sentinel:// URLs end in /service_name or "
            "/service_name/db"
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


def _probe(client: Any) -> None:
    """Build one connection object (no I/O), so that a bad option fails now, not at a call."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.connection_class(**pool.connection_kwargs)


def url_client(url: object, *, cluster: object, asyncio: bool, options: dict[str, Any]) -> Any:
    """Build a redis-py client (sync or asyncio) from a URL.

    ``redis://`` and ``rediss://`` (TLS) go to ``Redis.from_url`` or, with
    ``cluster=True``, ``RedisCluster.from_url``. ``redis+sentinel://`` and
    ``rediss+sentinel://`` take ``[user:password@]host:port[,host:port...]/service[/db]``
    and return the service's master client. Unless ``options`` has its own
    ``retry``, a standalone or Sentinel client retries a failed connection
    under ``bounded_retry`` (a cluster client has redis-py's cluster retry).

    Raises:
        IdempotencyConfigError: A URL or option redis-py cannot use, named
            in the message (the password never is).
        IdempotencyStoreError: ``cluster=True`` and no node could be reached.
    """
    if not isinstance(url, str):
        raise IdempotencyConfigError(
            f"url must be a string such as 'redis://host:6379/0', got {type(url).__name__}"
        )
    if not isinstance(cluster, bool):
        raise IdempotencyConfigError(f"cluster must be True or False, got {cluster!r}")
    redis = import_redis()
    module = redis.asyncio if asyncio else redis
    shown = redacted_url(url)
    options = {
        "socket_timeout": DEFAULT_TIMEOUT_S,
        "socket_connect_timeout": DEFAULT_TIMEOUT_S,
        **options,
    }
    for name in ("socket_timeout", "socket_connect_timeout"):
        _timeout(name, options[name])
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    # valkey:// and valkeys:// are the same protocol under Valkey's own names.
    if scheme in ("valkey", "valkeys"):
        scheme = scheme.replace("valkey", "redis")
        url = f"{scheme}{sep}{rest}"
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        raise IdempotencyConfigError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, "
            "redis+sentinel:// or rediss+sentinel://"
        )
    if split_inside_password(url):
        # redis-py would take a piece of the password for the host, port or
        # database (and connect there): refuse before it quotes any piece.
        raise IdempotencyConfigError(
            f"bad Redis URL {shown}: an '@' comes after a '/', '?' or '#', so the URL would be "
            "split inside the password; percent-encode the password's '/', '?', '#' and '@' "
            "(urllib.parse.quote(password, safe=''))"
        )
    try:
        urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise IdempotencyConfigError(f"bad Redis URL {shown}: {exc}") from None
    if "retry" not in options and not cluster:
        options["retry"] = bounded_retry(_budget(url, options), asyncio=asyncio)
    try:
        if scheme.endswith("+sentinel"):
            client = _sentinel_client(module, scheme, url, shown, options)
        else:
            _check_url(scheme, url, shown)
            factory = module.RedisCluster if cluster else module.Redis
            client = factory.from_url(url, **options)
        _probe(client)
    except (TypeError, ValueError) as exc:
        raise IdempotencyConfigError(f"bad Redis client option for {shown}: {exc}") from None
    except redis.exceptions.RedisClusterException as exc:
        if "not enabled" in str(exc):
            raise IdempotencyConfigError(
                f"cluster=True, but the server at {shown} is not a cluster node "
                "(cluster mode is not enabled): drop cluster=True"
            ) from exc
        raise store_error(exc, None) from exc
    except redis.exceptions.RedisError as exc:
        raise store_error(exc, None) from exc
    return client
