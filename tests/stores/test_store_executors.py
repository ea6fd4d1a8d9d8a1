"""The threaded async stores run their calls on threads of their own.

``AsyncSQLiteStore`` and ``AsyncDynamoDBStore`` call a blocking client in a
worker thread. Those threads must not be asyncio's default executor: an
application whose own ``asyncio.to_thread`` work fills it would hold every
store call, heartbeat renewals included, until its work ends, and the leases
would run out. Here the default executor is filled with work that blocks
until the test ends it, and every store call must still complete.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dynamodb_harness import MotoServer
from onceonly import IdempotencyConfig, IdempotencyConfigError, idempotent_function
from onceonly.records import Acquired, Status, new_token
from onceonly.stores import AsyncSQLiteStore
from onceonly.stores.dynamodb import AsyncDynamoDBStore
from onceonly.stores.protocol import wall_ms

LEASE = 60_000
TTL = 60_000
# The default executor's size in these tests, and how long a store call may
# take while it is full: generous, a bound on a hang, never a speed check.
DEFAULT_WORKERS = 2
BOUND_S = 30.0


class ThreadNames:
    """A clock for the sync store that notes which thread each call ran on.

    It creeps: one millisecond per reading from where the wall clock stood
    when it was made, so a renewal always moves a deadline on, and a lease of
    seconds outlasts thousands of store calls whatever the machine's speed.
    """

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._now = itertools.count(wall_ms())

    def __call__(self) -> int:
        self.names.add(threading.current_thread().name)
        return next(self._now)


@pytest.fixture(params=["sqlite", "dynamodb"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., tuple[Any, ThreadNames]]]:
    """Build the async store under test, with a clock that notes its threads."""
    made: list[Any] = []

    def make(**options: Any) -> tuple[Any, ThreadNames]:
        names = ThreadNames()
        store: Any
        if request.param == "sqlite":
            store = AsyncSQLiteStore(tmp_path / "db.sqlite", clock=names, **options)
        else:
            moto: MotoServer = request.getfixturevalue("moto_server")
            table = moto.fresh_table(moto.shared_client)
            store = AsyncDynamoDBStore(
                table, client=moto.shared_client, clock=names, clock_skew_ms=0, **options
            )
        made.append(store)
        return store, names

    yield make
    for store in made:
        store.close()


async def _with_default_executor_full(work: Callable[[], Any]) -> Any:
    """Run ``work()`` while every thread of the default executor blocks; return its result."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(DEFAULT_WORKERS, thread_name_prefix="app"))
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocker() -> None:
        started.release()
        release.wait()

    blockers = [asyncio.create_task(asyncio.to_thread(blocker)) for _ in range(DEFAULT_WORKERS)]
    queued: asyncio.Task[str] | None = None
    try:
        for _ in range(DEFAULT_WORKERS):  # each blocker holds a thread of the default executor
            while not started.acquire(blocking=False):
                await asyncio.sleep(0.005)
        # One more piece of application work now queues: the executor is full.
        queued = asyncio.create_task(asyncio.to_thread(lambda: "app"))
        result = await asyncio.wait_for(work(), BOUND_S)
        assert not queued.done()  # the default executor was full all along
        return result
    finally:
        release.set()
        await asyncio.gather(*blockers, *([queued] if queued is not None else []))


def test_store_calls_complete_while_the_default_executor_is_full(
    make_store: Callable[..., tuple[Any, ThreadNames]],
) -> None:
    store, names = make_store()
    token = new_token()

    async def lifecycle() -> list[Any]:
        answers: list[Any] = [
            await store.claim("k", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
        ]
        for _ in range(3):  # a heartbeat's renewals
            answers.append(await store.renew("k", token=token, lease_ms=LEASE))
        answers.append(await store.complete("k", token=token, outcome=b"j1", ttl_ms=TTL))
        record = await store.get("k")
        answers.append(None if record is None else record.status)
        return answers

    async def main() -> list[Any]:
        return await _with_default_executor_full(lifecycle)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == [Acquired(), True, True, True, True, Status.COMPLETED]
    assert names.names
    assert all(name.startswith("onceonly-") for name in names.names), names.names


def test_a_heartbeat_renews_a_live_claim_while_the_default_executor_is_full(
    make_store: Callable[..., tuple[Any, ThreadNames]],
) -> None:
    # The function runs until it has seen the heartbeat move its lease twice
    # (each renewal pushes the deadline on), then returns; with the default
    # executor full all along. It waits on what the store shows, not on time;
    # the store's clock creeps one ms per reading (see ThreadNames), so the
    # lease cannot run out however slowly the machine runs the heartbeat.
    store, _ = make_store()
    runs: list[str] = []

    @idempotent_function(
        store=store,
        data="order",
        config=IdempotencyConfig(event_key_jmespath="id", lease_seconds=3, heartbeat=True),
    )
    async def process(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        key = process.key_for(order)
        seen: list[int] = []
        while len(seen) < 3:
            record = await store.get(key)
            assert record is not None
            assert record.status is Status.IN_PROGRESS
            if not seen or record.deadline_ms > seen[-1]:
                seen.append(record.deadline_ms)
            await asyncio.sleep(0.05)
        return "done"

    async def main() -> list[str]:
        async def twice() -> list[str]:
            return [await process({"id": "o-1"}), await process({"id": "o-1"})]

        return await _with_default_executor_full(twice)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == ["done", "done"]
    assert runs == ["o-1"]


def test_the_pool_is_bounded_by_max_workers_and_made_again_after_close(
    make_store: Callable[..., tuple[Any, ThreadNames]],
) -> None:
    store, names = make_store(max_workers=1)

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(
                store.claim(
                    f"k{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                )
                for i in range(8)
            )
        )

    assert asyncio.run(many()) == [Acquired()] * 8
    assert len(names.names) == 1  # one thread did them all
    # close() ends the pool's threads; the next call makes a new pool.
    (thread,) = [t for t in threading.enumerate() if t.name in names.names]
    store.close()
    assert not thread.is_alive()
    names.names.clear()
    assert asyncio.run(store.get("k0")) is not None
    assert len(names.names) == 1
    assert all(name.startswith("onceonly-") for name in names.names)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True, 100_000])
def test_a_bad_max_workers_fails_at_construction(
    make_store: Callable[..., tuple[Any, ThreadNames]], bad: object
) -> None:
    with pytest.raises(IdempotencyConfigError, match="max_workers"):
        make_store(max_workers=bad)
