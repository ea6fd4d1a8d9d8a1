"""Open a store from a URL or path, for the command line."""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import IdempotencyConfigError
from .protocol import Store

__all__ = ["store_from_url"]


def store_from_url(url: str) -> Store:
    """Return a sync store for ``url``.

    Args:
        url: ``sqlite:///absolute/path.db``, ``sqlite://relative/path.db`` or a
            plain file path (SQLite); ``redis://``, ``rediss://`` and
            ``redis+sentinel://`` URLs (needs ``onceonly[redis]``);
            ``dynamodb://TABLE?region=R&endpoint_url=URL&sort_key=SK``
            (needs ``onceonly[dynamodb]``; both query parameters optional).

    Returns:
        The store.

    Raises:
        IdempotencyConfigError: The URL names no store this installation has.
    """
    if not isinstance(url, str) or not url:
        raise IdempotencyConfigError("a store URL or SQLite file path is needed")
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "sqlite", url
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(rest)
    if scheme in ("redis", "rediss", "redis+sentinel", "valkey", "valkeys"):
        # Needs redis-py: RedisStore says which extra installs it when it is missing.
        from .redis import RedisStore

        store: Store = RedisStore.from_url(url)
        return store
    if scheme == "dynamodb":
        from .dynamodb import DynamoDBStore

        table, _, query = rest.partition("?")
        options = dict(parse_qsl(query, strict_parsing=False))
        allowed = {
            "region": "region_name",
            "endpoint_url": "endpoint_url",
            "sort_key": "sort_key_attr",
        }
        unknown = set(options) - set(allowed)
        if unknown or not table:
            raise IdempotencyConfigError(
                "dynamodb:// URLs are dynamodb://TABLE with optional ?region=, ?endpoint_url=, "
                f"?sort_key=; got {url!r}"
            )
        dynamo: Store = DynamoDBStore(
            table,
            region_name=options.get("region"),
            endpoint_url=options.get("endpoint_url"),
            sort_key_attr=options.get("sort_key"),
        )
        return dynamo
    raise IdempotencyConfigError(
        f"unknown store URL scheme {scheme!r}; use a SQLite path, sqlite:///path, "
        "redis://host or dynamodb://table"
    )
