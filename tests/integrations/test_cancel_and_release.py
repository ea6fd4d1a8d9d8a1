"""Cancellation while a claim is in flight, and releases that find the key gone.

A claim already sent lands whether or not its caller still waits for it: the
pipeline went out, the worker thread runs on, the HTTP request is on its way.
Each test holds the store (a stopped Redis process, a SQLite write lock held
by another connection, a paused moto server) so that the claim is in flight
when its caller is cancelled, then lets it land, and checks that the key is
given back: a retry runs at once instead of being refused for the whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import redis_harness as harness
from onceonly import (
    Event,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    idempotent_function,
)
from onceonly.batch import ItemStatus, process_batch_async
from onceonly.stores import AsyncSQLiteStore, MemoryStore
from onceonly.stores.dynamodb import AsyncDynamoDBStore
from onceonly.stores.redis import AsyncRedisStore
from testkit import RedisFarm

LONG_LEASE = IdempotencyConfig(lease_seconds=600)  # a locked key would stay locked for the test
IN_FLIGHT_S = 0.3  # how long the caller waits on its held claim before it is cancelled
LANDED_S = 30.0  # upper bound for the held claim to land once the store is let go
SETTLE_S = 0.5  # a pause before the first redelivery (see _redeliver)


def _hold_redis(server: harness.Server) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            server.process.send_signal(signal.SIGCONT)

    return held


def _hold_sqlite(path: Path) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the store's writes wait behind this lock
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()

    return held


Held = Callable[[], contextlib.AbstractContextManager[None]]


async def _nothing() -> None:
    return None


@pytest.fixture(params=["redis", "sqlite", "dynamodb"])
def held_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Held, Any]:
    """An async store, a context manager that holds its claims in flight, and its closer."""
    if request.param == "redis":
        import redis.asyncio

        farm: RedisFarm = request.getfixturevalue("redis_farm")
        server = farm.standalone(harness.engines_or_fail()[0])
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        store = AsyncRedisStore(client, prefix=f"cancel-{uuid.uuid4().hex[:8]}")
        return store, _hold_redis(server), client.aclose
    if request.param == "sqlite":
        path = tmp_path / "cancel.sqlite3"
        return AsyncSQLiteStore(path, busy_timeout_ms=60_000), _hold_sqlite(path), _nothing
    moto = request.getfixturevalue("moto_server")
    table = moto.fresh_table(moto.shared_client)
    return AsyncDynamoDBStore(table, client=moto.shared_client), moto.paused, _nothing


async def _redeliver(call: Callable[[], Any], refused: Callable[[Any], bool]) -> Any:
    """Deliver again until the answer is no longer "in progress" (bounded by LANDED_S).

    The cancelled caller's claim lands once the store is let go, and is given
    back right after; until then a redelivery may still be refused.
    """
    # Let the held claim reach the store first (SQLite's busy handler retries
    # on its own schedule), so that the redelivery meets what it left.
    await asyncio.sleep(SETTLE_S)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LANDED_S
    while True:
        try:
            answer = await call()
        except IdempotencyAlreadyInProgressError:
            if loop.time() > deadline:
                raise
        else:
            if not refused(answer) or loop.time() > deadline:
                return answer
        await asyncio.sleep(0.05)


def test_a_call_cancelled_while_its_claim_is_in_flight_gives_the_key_back(
    held_store: tuple[Any, Held, Any],
) -> None:
    store, held, close = held_store
    runs: list[str] = []

    @idempotent_function(store=store, data="order", config=LONG_LEASE)
    async def charge(order: str) -> str:
        runs.append(order)
        return f"charged {order}"

    async def scenario() -> str:
        try:
            with held():
                call = asyncio.ensure_future(charge(order="o-1"))
                await asyncio.sleep(IN_FLIGHT_S)  # the claim is sent and waits on the store
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            # Not refused as in progress for the 600 s lease: a redelivery runs.
            answer: str = await _redeliver(lambda: charge(order="o-1"), lambda _: False)
            return answer
        finally:
            await close()

    assert asyncio.run(scenario()) == "charged o-1"
    assert runs == ["o-1"]


def test_a_batch_cancelled_while_its_claims_are_in_flight_gives_every_key_back(
    held_store: tuple[Any, Held, Any],
) -> None:
    store, held, close = held_store
    runs: list[int] = []

    async def handle(record: dict[str, Any]) -> int:
        runs.append(record["id"])
        return int(record["id"])

    records = [{"id": i} for i in range(3)]
    config = IdempotencyConfig(event_key_jmespath="id", lease_seconds=600)

    async def scenario() -> list[ItemStatus]:
        try:
            with held():
                batch = asyncio.ensure_future(
                    process_batch_async(records, handle, store=store, config=config)
                )
                await asyncio.sleep(IN_FLIGHT_S)
                batch.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await batch
            retry = await _redeliver(
                lambda: process_batch_async(records, handle, store=store, config=config),
                lambda result: any(i.status is ItemStatus.IN_PROGRESS for i in result.items),
            )
            return [item.status for item in retry.items]
        finally:
            await close()

    assert ItemStatus.IN_PROGRESS not in asyncio.run(scenario())
    assert sorted(runs) == [0, 1, 2]  # each record ran once, after the cancelled batch


# -- a release that finds the key gone -------------------------------------------------


def test_a_release_that_finds_the_key_gone_counts_as_released_not_as_a_lost_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A release whose reply was lost is retried and finds the key already gone.
    # Here the key is gone before the only release: the same answer from the store.
    store = MemoryStore()

    @idempotent_function(store=store, data="order")
    def charge(order: str) -> str:
        store.delete(charge.key_for(order=order))
        raise RuntimeError("card declined")

    with pytest.raises(RuntimeError, match="card declined"):
        charge(order="o-1")

    assert charge.stats[Event.RELEASED] == 1  # type: ignore[attr-defined]
    assert charge.stats[Event.LEASE_LOST] == 0  # type: ignore[attr-defined]
    assert "lost its lease" not in caplog.text
