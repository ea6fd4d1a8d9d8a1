"""Stores: where claims and outcomes live.

``MemoryStore`` and ``SQLiteStore`` need nothing beyond Python. The Redis and
DynamoDB stores live in ``onceonly.stores.redis`` and
``onceonly.stores.dynamodb`` so that their client libraries are imported only
when used. The names here are imported on first use too (a module
``__getattr__``): a Redis or DynamoDB user never loads ``sqlite3``, and the
sync stores never load ``asyncio``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here.

    Raises:
        AttributeError: No such public name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onceonly.stores' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups find it without this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
