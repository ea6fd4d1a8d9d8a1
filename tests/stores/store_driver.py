"""A synchronous driver over every store, sync and async, for the contract suite.

The contract suite talks to a :class:`StoreDriver` only. To run the suite
against another store, add a factory to ``FACTORIES`` (and, if its clock cannot
be moved by hand, a driver whose ``advance`` waits on the real clock).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onceonly.records import ClaimResult, Record
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore, MemoryStore, SQLiteStore

LEASE_MS = 1_000
TTL_MS = 60_000


@dataclass
class Built:
    """A store made by a factory, with how to close it."""

    store: Any
    is_async: bool
    close: Callable[[], None]
    # Whether the store still holds an orphan when it is taken over, and so
    # answers Acquired(takeover=True). Memory and SQLite keep the row until a
    # purge; a store whose orphans vanish by themselves (Redis PX) does not.
    reports_takeover: bool = True
    sqlite_path: Path | None = None


def _memory(tmp_path: Path, clock: Callable[[], int]) -> Built:
    return Built(MemoryStore(clock=clock), False, lambda: None)


def _sqlite(tmp_path: Path, clock: Callable[[], int]) -> Built:
    path = tmp_path / "contract.sqlite3"
    store = SQLiteStore(path, clock=clock)
    return Built(store, False, store.close, sqlite_path=path)


def _async_memory(tmp_path: Path, clock: Callable[[], int]) -> Built:
    return Built(AsyncMemoryStore(clock=clock), True, lambda: None)


def _async_sqlite(tmp_path: Path, clock: Callable[[], int]) -> Built:
    path = tmp_path / "contract.sqlite3"
    store = AsyncSQLiteStore(path, clock=clock)
    return Built(store, True, store.close, sqlite_path=path)


def redis_built(
    topology: str, engine: Any, farm: Any, clock: Callable[[], int], *, is_async: bool = False
) -> Built:
    """A RedisStore (or AsyncRedisStore) on a real server of the farm, on the manual clock.

    The clock is injected into the scripts, so leases and retention run out as
    the test moves it; the keys themselves still expire by the server's PX, in
    real time, long after the test is done. Because an orphan is still there
    when the manual clock passes its lease, the store reports the takeover.
    Each store gets a fresh prefix, so tests never see each other's keys.
    """
    import uuid

    import redis
    import redis.asyncio

    from onceonly.stores.redis import AsyncRedisStore, RedisStore

    module: Any = redis.asyncio if is_async else redis
    if topology == "standalone":
        server = farm.standalone(engine)
        client: Any = module.Redis(host=server.client_host(), port=server.port)
    elif topology == "cluster":
        cluster = farm.cluster(engine)
        client = module.RedisCluster(
            host=cluster.nodes[0].client_host(), port=cluster.nodes[0].port
        )
    else:
        sentinel = module.Sentinel(farm.sentinel(engine).addresses(), socket_timeout=5)
        client = sentinel.master_for("onceonly-primary", socket_timeout=5)
    kind = AsyncRedisStore if is_async else RedisStore
    store = kind(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=clock)
    if not is_async:
        return Built(store, False, client.close)

    async def close() -> None:
        await client.aclose()
        if topology == "sentinel":  # the asyncio Sentinel's own connections
            for watcher in sentinel.sentinels:
                await watcher.aclose()

    return Built(store, True, close)


def dynamodb_built(layout: str, moto: Any, clock: Callable[[], int], *, is_async: bool) -> Built:
    """A DynamoDB store on moto's server (real HTTP, real boto3), on the manual clock.

    ``layout="table"``: the default layout (partition key ``id``) in a fresh
    table. ``layout="sortkey"``: partition key ``pk`` and sort key ``sk`` in a
    table shared by the session, under a fresh ``static_pk_value``. The skew
    allowance is 0, so deadlines are judged to the millisecond as the suite
    expects; moto never deletes items by TTL, so an orphan is still there
    when it is taken over.
    """
    import uuid

    from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore

    client = moto.shared_client
    options: dict[str, Any]
    if layout == "sortkey":
        options = {"key_attr": "pk", "sort_key_attr": "sk"}
        table = moto.shared_table(client, "contract-sortkey", **options)
        options["static_pk_value"] = f"contract#{uuid.uuid4().hex}"
        drop = False
    else:
        options = {}
        table = moto.fresh_table(client)
        drop = True
    factory = AsyncDynamoDBStore if is_async else DynamoDBStore
    store = factory(table, client=client, clock=clock, clock_skew_ms=0, **options)

    def close() -> None:
        if drop:
            client.delete_table(TableName=table)

    return Built(store, is_async, close)


DYNAMODB_LAYOUTS = ("table", "sortkey")
REDIS_TOPOLOGIES = ("standalone", "cluster", "sentinel")

FACTORIES: dict[str, Callable[[Path, Callable[[], int]], Built]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "async-memory": _async_memory,
    "async-sqlite": _async_sqlite,
}


class StoreDriver:
    """One store's six operations, called synchronously; async stores run on a private loop.

    Defaults: ``lease_ms=LEASE_MS``, ``ttl_ms=TTL_MS``, ``fingerprint=None``.
    """

    def __init__(self, name: str, built: Built, clock: Any) -> None:
        self.name = name
        self.store = built.store
        self.is_async = built.is_async
        self.reports_takeover = built.reports_takeover
        self.sqlite_path = built.sqlite_path
        self.clock = clock
        self._loop = asyncio.new_event_loop() if built.is_async else None

    def _run(self, value: Any) -> Any:
        if self._loop is None:
            return value
        return self._loop.run_until_complete(value)

    def run(self, awaitable: Any) -> Any:
        """Run an awaitable on this driver's loop (e.g. closing an async client)."""
        assert self._loop is not None
        return self._loop.run_until_complete(awaitable)

    # -- the protocol ------------------------------------------------------

    def claim(
        self,
        key: str,
        *,
        token: str,
        lease_ms: int = LEASE_MS,
        ttl_ms: int = TTL_MS,
        fingerprint: str | None = None,
    ) -> ClaimResult:
        return self._run(
            self.store.claim(
                key, token=token, lease_ms=lease_ms, ttl_ms=ttl_ms, fingerprint=fingerprint
            )
        )

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int = TTL_MS) -> bool:
        return self._run(self.store.complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms))

    def release(self, key: str, *, token: str) -> bool:
        return self._run(self.store.release(key, token=token))

    def renew(self, key: str, *, token: str, lease_ms: int = LEASE_MS) -> bool:
        return self._run(self.store.renew(key, token=token, lease_ms=lease_ms))

    def get(self, key: str) -> Record | None:
        return self._run(self.store.get(key))

    def delete(self, key: str) -> bool:
        return self._run(self.store.delete(key))

    # -- helpers -----------------------------------------------------------

    def claim_concurrently(
        self, key: str, tokens: list[str], *, lease_ms: int = LEASE_MS
    ) -> list[ClaimResult]:
        """Claim ``key`` once per token, all at the same time; results in token order."""
        if self._loop is not None:

            async def all_claims() -> list[ClaimResult]:
                return list(
                    await asyncio.gather(
                        *(
                            self.store.claim(
                                key, token=t, lease_ms=lease_ms, ttl_ms=TTL_MS, fingerprint=None
                            )
                            for t in tokens
                        )
                    )
                )

            return self._loop.run_until_complete(all_claims())
        barrier = threading.Barrier(len(tokens))
        results: list[Any] = [None] * len(tokens)

        def one(i: int) -> None:
            barrier.wait()
            try:
                results[i] = self.store.claim(
                    key, token=tokens[i], lease_ms=lease_ms, ttl_ms=TTL_MS, fingerprint=None
                )
            except BaseException as exc:  # reported by the assertion below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tokens))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def advance(self, ms: int) -> None:
        """Move the store's clock forward."""
        self.clock.advance(ms)

    def now(self) -> int:
        """The store's clock now."""
        return int(self.clock())

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()
