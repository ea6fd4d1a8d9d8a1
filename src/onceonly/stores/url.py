"""Open a store from a URL or path, for the command line."""

from __future__ import annotations

from ..errors import IdempotencyConfigError
from .protocol import Store

__all__ = ["store_from_url"]


def store_from_url(url: str) -> Store:
    """Return a sync store for ``url``.

    Args:
        url: ``sqlite:///absolute/path.db``, ``sqlite://relative/path.db`` or a
            plain file path (SQLite); ``redis://``, ``rediss://`` and
            ``redis+sentinel://`` URLs once the Redis store is installed.

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
    raise IdempotencyConfigError(
        f"unknown store URL scheme {scheme!r}; use a SQLite path, sqlite:///path or redis://host"
    )
