"""One ``AsyncRedisStore`` used from successive event loops, on real servers.

A script, a test or a Lambda handler that calls ``asyncio.run`` per call uses
the store from a new loop each time; redis-py's asyncio connections belong to
the loop that opened them. No call may fail because an earlier loop closed.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from typing import Any

import pytest
import redis.asyncio

import redis_harness as harness
from onceonly import IdempotencyConfig, idempotent_function
from onceonly.records import Acquired, encode_outcome, new_token
from onceonly.stores.redis import AsyncRedisStore
from testkit import RedisFarm


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _async_store(topology: str, engine: harness.Engine, farm: RedisFarm, **kw: Any) -> Any:
    if topology == "cluster":
        port = farm.cluster(engine).nodes[0].port
        return AsyncRedisStore.from_url(f"redis://{harness.HOST}:{port}", cluster=True, **kw)
    port = farm.standalone(engine).port
    return AsyncRedisStore.from_url(f"redis://{harness.HOST}:{port}/0", **kw)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "unpipelined"])
@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_one_async_store_serves_asyncio_run_after_asyncio_run(
    topology: str, pipelining: bool, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    store = _async_store(
        topology, redis_engine, redis_farm, prefix=_prefix(), pipelining=pipelining
    )
    runs: list[int] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    async def charge(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return f"charged {order['id']}"

    # A new loop per call, never closing the store in between: every call works.
    for i in range(4):
        assert asyncio.run(charge({"id": i})) == f"charged {i}"
    for i in range(4):
        assert asyncio.run(charge({"id": i})) == f"charged {i}"  # replays
    assert runs == [0, 1, 2, 3]

    async def raw_calls() -> None:
        token = new_token()
        claim = await store.claim(
            "k", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None
        )
        assert claim == Acquired(takeover=False)
        assert await store.complete("k", token=token, outcome=encode_outcome(1), ttl_ms=60_000)
        assert (await store.get("k")) is not None
        assert await store.delete("k") is True

    for _ in range(3):
        asyncio.run(raw_calls())


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_a_loop_closed_without_shutting_down_does_not_fail_the_next_loop(
    topology: str,
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A loop closed by hand (no shutdown_asyncgens): its connections cannot be
    # closed any more; the next loop must still get answers.
    store = _async_store(topology, redis_engine, redis_farm, prefix=_prefix())
    first = asyncio.new_event_loop()
    assert first.run_until_complete(store.get("k")) is None
    first.close()
    with warnings.catch_warnings(), caplog.at_level("DEBUG", logger="onceonly"):
        # The first loop's socket is closed when it is collected; asyncio says
        # so with a ResourceWarning that is the caller's (a loop closed with a
        # connection open), not the store's.
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(3):
            assert asyncio.run(store.get("k")) is None
        # The dead loop's transports refused to close, and that was only noted.
        dropped = [
            (r.levelname, getattr(r, "onceonly_outcome", None))
            for r in caplog.records
            if "finished loop's Redis connections" in r.message
        ]
        caplog.clear()  # the records hold the error, and through it the dead transports
        gc.collect()
    # (once per refusing step: the pool; in a cluster, a node's connections too)
    assert dropped
    assert set(dropped) == {("DEBUG", "connections_dropped")}


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_aclose_in_a_later_loop_after_a_loop_closed_without_shutting_down(
    topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    # aclose() in a loop the store has not used yet enters it first, which drops
    # the dead loop's connections, so closing does not touch that loop's transports.
    store = _async_store(topology, redis_engine, redis_farm, prefix=_prefix())
    first = asyncio.new_event_loop()
    assert first.run_until_complete(store.get("k")) is None
    first.close()
    with warnings.catch_warnings():
        # As above: the first loop's socket, closed when collected, is the caller's.
        warnings.simplefilter("ignore", ResourceWarning)
        asyncio.run(store.aclose())
        del first, store  # the dead loop's transports go with them, here
        gc.collect()


def test_a_store_collected_while_its_loop_runs_closes_nothing_at_the_loops_end(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    # The store's shutdown hook finds the store gone: it leaves the client (which
    # may be shared) open, and the loop's end has nothing to report.
    port = redis_farm.standalone(redis_engine).port
    seen: list[dict[str, Any]] = []

    async def main() -> bool:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        client = redis.asyncio.Redis(host=harness.HOST, port=port)
        try:
            store = AsyncRedisStore(client, prefix=_prefix())
            assert await store.get("k") is None
            del store
            gc.collect()
            await asyncio.sleep(0.05)  # the collected hook's finalizer gets its turn
            gc.collect()
            return bool(await client.ping())
        finally:
            await client.aclose()

    assert asyncio.run(main()) is True  # the shared client still worked
    gc.collect()
    assert seen == []


def test_aclose_closes_the_clients_connections_on_the_server(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    name = f"closing-{uuid.uuid4().hex[:8]}"
    admin = server.client()

    def connected() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    async def main() -> int:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port, client_name=name)
        store = AsyncRedisStore(client, prefix=_prefix())
        assert await store.get("k") is None
        before = connected()
        await store.aclose()
        # Closed now, while the loop runs (not only when it shuts down).
        await asyncio.to_thread(harness.wait_until, lambda: connected() == 0, f"{name} closed", 5.0)
        return before

    try:
        assert asyncio.run(main()) >= 1
    finally:
        admin.close()
