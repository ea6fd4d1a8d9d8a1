"""Executions per second in one process against one local Redis / Valkey server.

Run: bash scripts/bench async_throughput [--n 20000] [--rounds 3]

Rows: sync onceonly (one call after another); async onceonly with 1, 64 and
256 concurrent tasks (AsyncRedisStore pipelines the script calls of each
event-loop turn); Powertools' sync idempotent_function on its Redis layer;
and "naive redis-py asyncio": 256 tasks each sending the same two scripts
(claim, complete) one command at a time, no onceonly and no pipelining; and
"raw redis-py asyncio, pipelines of 256": a minimal claim script (SET NX PX)
and a minimal token-checked complete script (GET, compare, SET PX) for 256
fresh keys per pipeline, no onceonly: the physical limit of these round
trips. Every execution is a first execution (a fresh key). Rounds are interleaved and the
median is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis_vs_powertools import find_server, running_server

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.records import encode_outcome, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore, scripts

RESULT = {"ok": True, "receipt": "r" * 60}
NAIVE = "naive redis-py asyncio, 256 tasks"


def _orders(n: int) -> list[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    return [{"id": f"{tag}-{i}"} for i in range(n)]


def sync_onceonly(port: int, n: int) -> float:
    client = redis.Redis(port=port)
    store = RedisStore(client, prefix="bench-sync")

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="s"))
    def charge(order: dict[str, str]) -> dict[str, Any]:
        return RESULT

    orders = _orders(n)
    start = time.perf_counter()
    for order in orders:
        charge(order)
    rate = n / (time.perf_counter() - start)
    client.close()
    return rate


def sync_powertools(port: int, n: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its Redis layer is marked deprecated
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig as PowertoolsConfig,
        )
        from aws_lambda_powertools.utilities.idempotency import (
            idempotent_function as powertools_function,
        )
        from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
            RedisCachePersistenceLayer,
        )

        layer = RedisCachePersistenceLayer(client=redis.Redis(port=port, decode_responses=True))

    @powertools_function(
        data_keyword_argument="order",
        persistence_store=layer,
        config=PowertoolsConfig(event_key_jmespath="id"),
    )
    def charge(order: dict[str, str]) -> dict[str, Any]:
        return RESULT

    orders = _orders(n)
    with warnings.catch_warnings():
        # Outside Lambda it warns on every call that it has no remaining time.
        warnings.simplefilter("ignore", UserWarning)
        start = time.perf_counter()
        for order in orders:
            charge(order=order)
        return n / (time.perf_counter() - start)


async def _with_tasks(
    concurrency: int, orders: list[dict[str, str]], call: Callable[[dict[str, str]], Awaitable[Any]]
) -> float:
    queue = iter(orders)

    async def worker() -> None:
        for order in queue:  # the tasks share one iterator: each order once
            await call(order)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(orders) / (time.perf_counter() - start)


async def async_onceonly(port: int, n: int, concurrency: int) -> float:
    client = redis.asyncio.Redis(port=port, max_connections=concurrency + 8)
    store = AsyncRedisStore(client, prefix="bench-async")

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="a"))
    async def charge(order: dict[str, str]) -> dict[str, Any]:
        return RESULT

    await charge({"id": "warm"})
    rate = await _with_tasks(concurrency, _orders(n), charge)
    await client.aclose()
    return rate


async def naive_asyncio(port: int, n: int, concurrency: int) -> float:
    """The same two scripts per execution with plain redis-py asyncio, one command at a time."""
    client = redis.asyncio.Redis(port=port, max_connections=concurrency + 8)
    for script in (scripts.CLAIM, scripts.COMPLETE):
        await client.script_load(script.source)
    outcome = encode_outcome(RESULT)

    async def pair(order: dict[str, str]) -> None:
        key, token = f"bench-naive:{order['id']}", new_token()
        await client.evalsha(scripts.CLAIM.sha, 1, key, token, 60_000, "", "")
        await client.evalsha(scripts.COMPLETE.sha, 1, key, token, outcome, 3_600_000, "")

    rate = await _with_tasks(concurrency, _orders(n), pair)
    await client.aclose()
    return rate


# The physical limit of the async path: what redis-py asyncio does with the same
# round trips and no library, a minimal claim (SET NX PX) and a minimal
# token-checked complete (GET, compare, SET PX), pipelined 256 at a time.
MINIMAL_CLAIM = "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"
MINIMAL_COMPLETE = (
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'PX', ARGV[3]) return 1"
)
RAW = "raw redis-py asyncio, pipelines of 256"
ONCEONLY_256 = "async onceonly, 256 tasks"
GOAL_RAW, GOAL_NAIVE = 0.8, 4.0


async def raw_pipelined(port: int, n: int, batch: int = 256) -> float:
    """Claim and complete ``n`` fresh keys with minimal scripts, ``batch`` per pipeline."""
    client = redis.asyncio.Redis(port=port)
    claim_sha = await client.script_load(MINIMAL_CLAIM)
    complete_sha = await client.script_load(MINIMAL_COMPLETE)
    outcome = encode_outcome(RESULT)
    orders = _orders(n)
    start = time.perf_counter()
    for first in range(0, n, batch):
        chunk = [(f"bench-raw:{o['id']}", new_token()) for o in orders[first : first + batch]]
        pipe = client.pipeline(transaction=False)
        for key, token in chunk:
            pipe.evalsha(claim_sha, 1, key, token, 60_000)
        await pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key, token in chunk:
            pipe.evalsha(complete_sha, 1, key, token, outcome, 3_600_000)
        await pipe.execute()
    rate = n / (time.perf_counter() - start)
    await client.aclose()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="executions per async row")
    parser.add_argument("--sync-n", type=int, default=4_000, help="executions per sync row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--plot", type=Path, help="also run 4 and 16 tasks, and write the throughput plot here"
    )
    args = parser.parse_args()
    binary, how = find_server()
    rows: dict[str, list[float]] = {}
    n = args.n
    with running_server(binary) as port:
        info = redis.Redis(port=port).info("server")
        name = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version", info["redis_version"])
        print(f"server: {name} {version} ({how}), one process, {args.rounds} rounds")
        for r in range(args.rounds):
            runs: list[tuple[str, Callable[[], float]]] = [
                ("sync onceonly", lambda: sync_onceonly(port, args.sync_n)),
                ("Powertools sync", lambda: sync_powertools(port, args.sync_n)),
                ("async onceonly, 1 task", lambda: asyncio.run(async_onceonly(port, n // 10, 1))),
                ("async onceonly, 64 tasks", lambda: asyncio.run(async_onceonly(port, n, 64))),
                (ONCEONLY_256, lambda: asyncio.run(async_onceonly(port, n, 256))),
                (NAIVE, lambda: asyncio.run(naive_asyncio(port, n, 256))),
                (RAW, lambda: asyncio.run(raw_pipelined(port, n))),
            ]
            if args.plot is not None:  # the curve's points between 1 and 64 tasks
                runs[3:3] = [
                    (f"async onceonly, {tasks} tasks", partial(_async_rate, port, n, tasks))
                    for tasks in (4, 16)
                ]
            if r % 2:
                runs.reverse()  # alternate the order, so drift hits every row alike
            for label, run in runs:
                rows.setdefault(label, []).append(run())
            redis.Redis(port=port).flushall()
    median = {label: statistics.median(values) for label, values in rows.items()}
    naive = median[NAIVE]
    powertools = median["Powertools sync"]
    width = max(map(len, median))
    print(
        f"\n{'executions per second':{width}}  {'median':>8}  {'x naive':>8}  {'x Powertools':>12}"
    )
    for label in rows:
        value = median[label]
        print(f"{label:{width}}  {value:8.0f}  {value / naive:8.2f}  {value / powertools:12.2f}")
    best, raw = median[ONCEONLY_256], median[RAW]
    print(
        f"\ngoals (printed, not asserted): {ONCEONLY_256} / {RAW} >= {GOAL_RAW}: "
        f"{'met' if best >= GOAL_RAW * raw else 'NOT met'} ({best / raw:.2f} x); "
        f"/ naive >= {GOAL_NAIVE}: {'met' if best >= GOAL_NAIVE * naive else 'NOT met'} "
        f"({best / naive:.2f} x)"
    )

    if args.plot is not None:
        series: dict[int, float] = {}
        for label, value in median.items():
            tasks = re.fullmatch(r"async onceonly, (\d+) tasks?", label)
            if tasks is not None:
                series[int(tasks.group(1))] = value
        import plots

        plots.throughput(
            args.plot,
            {"async onceonly (AsyncRedisStore)": series},
            {
                RAW: median[RAW],
                NAIVE: median[NAIVE],
                "Powertools, sync, one call after another": powertools,
            },
            f"{name} {version}, fresh keys, median of {args.rounds} rounds",
        )
        print(f"plot: {args.plot}")


def _async_rate(port: int, n: int, tasks: int) -> float:
    return asyncio.run(async_onceonly(port, n, tasks))


if __name__ == "__main__":
    main()
