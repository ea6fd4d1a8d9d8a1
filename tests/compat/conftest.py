"""Fixtures of the Powertools port: ``api`` (which decorators) and ``pt_store`` (which store).

``pt_store`` builds every sync store on the test's manual ``clock`` (from
tests/conftest.py): memory, SQLite in tmp_path, Redis / Valkey on the real
standalone server of each engine (a fresh key prefix per test), and DynamoDB
on moto's server (a fresh table per test, skew allowance 0 so that the manual
clock decides to the millisecond). ``pt_async`` builds their async twins with
an event loop to run coroutines on. The names keep clear of the ``store``
fixture of tests/stores.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from port_support import APIS, Api, AsyncRunner

from redis_harness import engines_or_fail
from testkit import ManualClock

REDIS_ENGINES = {f"redis-{engine.id}": engine for engine in engines_or_fail()}
STORE_PARAMS = ["memory", "sqlite", *sorted(REDIS_ENGINES), "dynamodb"]


@pytest.fixture(params=sorted(APIS))
def api(request: pytest.FixtureRequest) -> Api:
    """The decorators under test, spelt through the :class:`port_support.Api` seam."""
    return APIS[request.param]


def _build(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, is_async: bool
) -> tuple[Any, Callable[[], Any]]:
    """A store of ``kind`` on ``clock``, and how to close it (maybe a coroutine function)."""
    if kind == "memory":
        from onceonly.stores import AsyncMemoryStore, MemoryStore

        memory = AsyncMemoryStore if is_async else MemoryStore
        return memory(clock=clock), lambda: None
    if kind == "sqlite":
        from onceonly.stores import AsyncSQLiteStore, SQLiteStore

        sqlite = (AsyncSQLiteStore if is_async else SQLiteStore)(
            tmp_path / "pt.sqlite3", clock=clock
        )
        return sqlite, sqlite.close
    if kind in REDIS_ENGINES:
        import redis
        import redis.asyncio

        from onceonly.stores.redis import AsyncRedisStore, RedisStore

        server = request.getfixturevalue("redis_farm").standalone(REDIS_ENGINES[kind])
        module: Any = redis.asyncio if is_async else redis
        client = module.Redis(host=server.client_host(), port=server.port)
        prefix = f"pt{uuid.uuid4().hex[:12]}"  # this test's own key space on the shared server
        if is_async:
            return AsyncRedisStore(client, prefix=prefix, clock=clock), client.aclose
        return RedisStore(client, prefix=prefix, clock=clock), client.close
    assert kind == "dynamodb", kind
    from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore

    moto = request.getfixturevalue("moto_server")
    client = moto.shared_client
    table = moto.fresh_table(client)
    dynamodb = AsyncDynamoDBStore if is_async else DynamoDBStore
    store = dynamodb(table, client=client, clock=clock, clock_skew_ms=0)

    def close() -> None:
        if is_async:
            store.close()
        client.delete_table(TableName=table)

    return store, close


@pytest.fixture(params=STORE_PARAMS)
def pt_store(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    """Every sync store, on the test's manual ``clock``."""
    store, close = _build(request.param, request, tmp_path, clock, is_async=False)
    try:
        yield store
    finally:
        close()


@pytest.fixture(params=STORE_PARAMS)
def pt_async(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Iterator[AsyncRunner]:
    """Every async store, on the test's manual ``clock``, with a loop to run on."""
    store, close = _build(request.param, request, tmp_path, clock, is_async=True)
    runner = AsyncRunner(store)
    try:
        yield runner
    finally:
        try:
            closing = close()
            if inspect.isawaitable(closing):
                runner.run(closing)
        finally:
            runner.loop.close()
