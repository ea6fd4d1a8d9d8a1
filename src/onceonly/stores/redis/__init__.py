"""The Redis stores: Redis, Valkey, Amazon ElastiCache and Amazon MemoryDB.

``RedisStore`` (sync) and ``AsyncRedisStore`` (asyncio, automatic pipelining)
share their options, errors and reply rules (``common.py``) and the four Lua
scripts (``scripts.py``, ``lua/``). redis-py is imported when a store is
built, so this package imports without it (``pip install 'onceonly[redis]'``).
``AsyncRedisStore`` is imported on first use (it loads ``asyncio``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_names
from .common import import_redis, store_error
from .store import RedisStore

if TYPE_CHECKING:
    from .async_store import AsyncRedisStore

__all__ = ["AsyncRedisStore", "RedisStore", "import_redis", "store_error"]


__getattr__, __dir__ = lazy_names(__name__, {"AsyncRedisStore": "async_store"})
