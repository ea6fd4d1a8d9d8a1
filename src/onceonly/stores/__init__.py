"""Stores: where claims and outcomes live.

``MemoryStore`` and ``SQLiteStore`` need nothing beyond Python. The Redis and
DynamoDB stores live in ``onceonly.stores.redis`` and
``onceonly.stores.dynamodb`` so that their client libraries are imported only
when used. The names here are imported on first use too (a module
``__getattr__``): a Redis or DynamoDB user never loads ``sqlite3``, and the
sync stores never load ``asyncio``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .memory import AsyncMemoryStore, MemoryStore
    from .protocol import AsyncStore, Store
    from .sqlite import AsyncSQLiteStore, SQLiteStore

__all__ = [
    "AsyncMemoryStore",
    "AsyncSQLiteStore",
    "AsyncStore",
    "MemoryStore",
    "SQLiteStore",
    "Store",
]

# The names imported on first use, and the module each comes from.
_LAZY = {
    "AsyncMemoryStore": "memory",
    "MemoryStore": "memory",
    "AsyncStore": "protocol",
    "Store": "protocol",
    "AsyncSQLiteStore": "sqlite",
    "SQLiteStore": "sqlite",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
