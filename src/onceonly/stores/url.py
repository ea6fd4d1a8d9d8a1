"""Open a store from a URL or path, for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..errors import IdempotencyConfigError, IdempotencyError
from ._redact import redact_url
from .protocol import Store

__all__ = ["REDIS_SCHEMES", "async_store_from_url", "store_from_url", "url_scheme"]

REDIS_SCHEMES = frozenset(
    {"redis", "rediss", "redis+sentinel", "rediss+sentinel", "unix", "valkey", "valkeys"}
)


def url_scheme(url: str) -> str:
    """Return the URL's scheme, lowercased; ``"sqlite"`` for a plain file path."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "sqlite"


def _checked_scheme(url: object, prefix: str | None, cluster: bool) -> str:
    """The URL's scheme, once the URL is a non-empty string and the options apply to it."""
    if not isinstance(url, str) or not url:
        raise IdempotencyConfigError("a store URL or SQLite file path is needed")
    scheme = url_scheme(url)
    if scheme not in REDIS_SCHEMES and (prefix is not None or cluster):
        option = "a key prefix (--prefix)" if prefix is not None else "--cluster"
        raise IdempotencyConfigError(f"{option} applies to Redis URLs only, not {scheme}")
    return scheme


def store_from_url(
    url: str, *, prefix: str | None = None, cluster: bool = False, must_exist: bool = False
) -> Store:
    """Return a sync store for ``url``.

    Args:
        url: ``sqlite:///absolute/path.db``, ``sqlite://relative/path.db`` or a
            plain file path (SQLite); ``redis://``, ``rediss://``,
            ``redis+sentinel://`` and ``valkey://`` URLs (needs ``onceonly[redis]``);
            ``dynamodb://TABLE?region=R&endpoint_url=URL&sort_key=SK``
            (needs ``onceonly[dynamodb]``; every query parameter optional).
        prefix: The Redis store's key prefix (``RedisStore(prefix=...)``);
            None keeps the store's default. Redis URLs only.
        cluster: Build a Redis Cluster client (the URL names any one node).
            Redis URLs only.
        must_exist: A SQLite file that does not exist is an error instead of
            a new, empty store (for reading and deleting records).

    Returns:
        The store. Nothing is sent to a server yet.

    Raises:
        IdempotencyConfigError: The URL names no store this installation has,
            a SQLite file is missing (with ``must_exist``), or an option does
            not apply to the URL's store.
        IdempotencyStoreError: The SQLite file cannot be opened.
    """
    scheme = _checked_scheme(url, prefix, cluster)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = url.partition("://")[2] if "://" in url else url
        if must_exist and not Path(path).is_file():
            raise IdempotencyConfigError(
                f"SQLite store {path} does not exist; check the path (a store file is "
                "created when a decorated function first runs)"
            )
        return SQLiteStore(path)
    if scheme in REDIS_SCHEMES:
        # Needs redis-py: RedisStore says which extra installs it when it is missing.
        from .redis import RedisStore

        try:
            if prefix is None:
                store: Store = RedisStore.from_url(url, cluster=cluster)
            else:
                store = RedisStore.from_url(url, cluster=cluster, prefix=prefix)
        except IdempotencyError:
            raise
        except ValueError as exc:  # redis-py's own parsing (a bad port); never the password
            raise IdempotencyConfigError(f"bad Redis URL: {exc}") from exc
        return store
    if scheme == "dynamodb":
        dynamodb: Store = _dynamodb(url)
        return dynamodb
    raise _unknown(scheme)


def _unknown(scheme: str) -> IdempotencyConfigError:
    return IdempotencyConfigError(
        f"unknown store URL scheme {scheme!r}; use a SQLite path, sqlite:///path, "
        "redis://host:port or dynamodb://TABLE?region=REGION"
    )


def _dynamodb_options(url: str) -> tuple[str, dict[str, Any]]:
    """A dynamodb:// URL's table and the store's keyword options."""
    table, _, query = url.partition("://")[2].partition("?")
    options = dict(parse_qsl(query, strict_parsing=False))
    allowed = {"region", "endpoint_url", "sort_key"}
    unknown = sorted(set(options) - allowed)
    if unknown or not table:
        # Name the parameters, never their values (the query may hold a secret).
        got = f"unknown parameter {', '.join(unknown)}" if unknown else "no table"
        raise IdempotencyConfigError(
            "dynamodb:// URLs are dynamodb://TABLE with optional ?region=, ?endpoint_url=, "
            f"?sort_key=; got {got} in {redact_url(url)}"
        )
    return table, {
        "region_name": options.get("region"),
        "endpoint_url": options.get("endpoint_url"),
        "sort_key_attr": options.get("sort_key"),
    }


def _dynamodb(url: str, *, asyncio: bool = False) -> Any:
    from .dynamodb import AsyncDynamoDBStore, DynamoDBStore

    table, options = _dynamodb_options(url)
    try:
        if asyncio:
            return AsyncDynamoDBStore(table, **options)
        return DynamoDBStore(table, **options)
    except IdempotencyConfigError as exc:
        # Name the URL's parameter, not the constructor's argument.
        if type(exc.__cause__).__name__ != "NoRegionError":
            raise
        raise IdempotencyConfigError(
            "no AWS region for DynamoDB: add ?region=REGION to the dynamodb:// URL, set "
            "AWS_DEFAULT_REGION, or set a region in the AWS profile (AWS_PROFILE, ~/.aws/config)"
        ) from exc


def async_store_from_url(url: str, *, prefix: str | None = None, cluster: bool = False) -> Any:
    """Return the asyncio twin of the store :func:`store_from_url` opens for ``url``.

    Args:
        url, prefix, cluster: As for :func:`store_from_url`.

    Returns:
        ``AsyncSQLiteStore``, ``AsyncRedisStore`` or ``AsyncDynamoDBStore``.
        Nothing is sent to a server yet.

    Raises:
        IdempotencyConfigError: As for :func:`store_from_url`.
    """
    scheme = _checked_scheme(url, prefix, cluster)
    if scheme in REDIS_SCHEMES:
        from .redis import AsyncRedisStore

        options: dict[str, Any] = {} if prefix is None else {"prefix": prefix}
        try:
            return AsyncRedisStore.from_url(url, cluster=cluster, **options)
        except IdempotencyError:
            raise
        except ValueError as exc:  # redis-py's own parsing (a bad port); never the password
            raise IdempotencyConfigError(f"bad Redis URL: {exc}") from exc
    if scheme == "sqlite":
        from .sqlite import AsyncSQLiteStore

        return AsyncSQLiteStore(url.partition("://")[2] if "://" in url else url)
    if scheme == "dynamodb":
        return _dynamodb(url, asyncio=True)
    raise _unknown(scheme)
