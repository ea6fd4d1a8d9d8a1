"""Stores: where claims and outcomes live.

``MemoryStore`` and ``SQLiteStore`` need nothing beyond Python. The Redis and
DynamoDB stores live in ``onceonly.stores.redis`` and
``onceonly.stores.dynamodb`` so that their client libraries are imported only
when used.
"""

from __future__ import annotations

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
