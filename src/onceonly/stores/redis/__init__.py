"""The Redis stores: Redis, Valkey, Amazon ElastiCache and Amazon MemoryDB.

``RedisStore`` (sync) and ``AsyncRedisStore`` (asyncio, automatic pipelining)
share their options, errors and reply rules (``common.py``) and the four Lua
scripts (``scripts.py``, ``lua/``). redis-py is imported when a store is
built, so this package imports without it (``pip install 'onceonly[redis]'``).
"""

from __future__ import annotations

from .async_store import AsyncRedisStore
from .common import import_redis, store_error
from .store import RedisStore

__all__ = ["AsyncRedisStore", "RedisStore", "import_redis", "store_error"]
