"""Stores for the HTTP middleware tests: ``http_store`` (sync) and ``http_async_store`` (async).

Every kind of store, each on the test's manual ``clock`` (tests/conftest.py)
so that leases and retention are moved by hand: memory, SQLite in tmp_path,
Redis / Valkey standalone and cluster on the real servers of the session's
``redis_farm`` (a fresh key prefix per test), DynamoDB on moto's server (a
fresh table, skew allowance 0). An async Redis client is closed on the loop
the test used it on, by the test's own teardown (``aclose``) where it ran
one; the fixture closes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_harness import engines_or_fail
from testkit import ManualClock

ENGINES = {engine.id: engine for engine in engines_or_fail()}
_FIRST = sorted(ENGINES)[0]
# Standalone on every engine; the cluster on one (it is the same scripts, sharded).
STORE_PARAMS = [
    "memory",
    "sqlite",
    *(f"redis-{engine}" for engine in sorted(ENGINES)),
    f"cluster-{_FIRST}",
    "dynamodb",
]


def build_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, is_async: bool
) -> tuple[Any, Callable[[], None]]:
    """A store of ``kind`` on ``clock``, and a function that closes what it opened."""
    if kind == "memory":
        from onceonly.stores import AsyncMemoryStore, MemoryStore

        return (AsyncMemoryStore if is_async else MemoryStore)(clock=clock), lambda: None
    if kind == "sqlite":
        from onceonly.stores import AsyncSQLiteStore, SQLiteStore

        sqlite = (AsyncSQLiteStore if is_async else SQLiteStore)(tmp_path / "h.db", clock=clock)
        return sqlite, sqlite.close
    if kind.startswith(("redis-", "cluster-")):
        import redis
        import redis.asyncio
        import redis.cluster

        from onceonly.stores.redis import AsyncRedisStore, RedisStore

        topology, engine = kind.split("-", 1)
        farm = request.getfixturevalue("redis_farm")
        prefix = f"h{uuid.uuid4().hex[:12]}"
        if topology == "redis":
            server = farm.standalone(ENGINES[engine])
            host, port = server.client_host(), server.port
            client: Any = (redis.asyncio.Redis if is_async else redis.Redis)(host=host, port=port)
        else:
            node = farm.cluster(ENGINES[engine]).primaries()[0]
            host, port = node.client_host(), node.port
            cluster = redis.asyncio.RedisCluster if is_async else redis.cluster.RedisCluster
            client = cluster(host=host, port=port)
        if not is_async:
            return RedisStore(client, prefix=prefix, clock=clock), client.close

        def close_async() -> None:
            # The client may have run on another loop (a server thread's): a
            # fresh loop closes its connections without reusing that loop.
            with contextlib.suppress(RuntimeError):
                asyncio.run(client.aclose())

        return AsyncRedisStore(client, prefix=prefix, clock=clock), close_async
    assert kind == "dynamodb", kind
    from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore

    moto = request.getfixturevalue("moto_server")
    dynamo_client = moto.client()
    table = moto.fresh_table(dynamo_client)
    store = (AsyncDynamoDBStore if is_async else DynamoDBStore)(
        table, client=dynamo_client, clock=clock, clock_skew_ms=0
    )

    def close() -> None:
        if is_async:
            store.close()
        dynamo_client.delete_table(TableName=table)
        dynamo_client.close()

    return store, close


@pytest.fixture(params=STORE_PARAMS)
def http_store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    """Every sync store (for WSGI and Django), on the test's manual ``clock``."""
    store, close = build_store(request.param, request, tmp_path, clock, is_async=False)
    try:
        yield store
    finally:
        close()


@pytest.fixture(params=STORE_PARAMS)
def http_async_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[Any]:
    """Every async store (for ASGI), on the test's manual ``clock``."""
    store, close = build_store(request.param, request, tmp_path, clock, is_async=True)
    try:
        yield store
    finally:
        close()
