"""What the ASGI Idempotency-Key middleware adds to a request, beside another middleware.

Run: bash scripts/bench http_overhead [--n 2000] [--rounds 5]

One process, one local Redis / Valkey server (started on a free loopback port,
as the other benchmarks do), ``httpx`` against an in-process Starlette app
(``ASGITransport``): a ``POST`` endpoint that returns a small JSON body,

- plain: the endpoint without any middleware;
- onceonly, first / replay: behind ``onceonly.http.asgi.IdempotencyMiddleware``
  on ``AsyncRedisStore`` (a fresh key per request; the same stored key again);
- asgi-idempotency-header, first / replay: behind that PyPI package's
  ``IdempotencyHeaderMiddleware`` with its Redis backend on the same server,
  when it is installed (``scripts/bench`` installs it for this benchmark only).

Requests go one after another; rounds are interleaved (each round times every
variant once, in a rotating order) and the median time per request of each
variant is printed, with a Redis round trip (``PING`` on an asyncio client)
for scale. The goals are printed beside the figures, never asserted: a replay
at most 1.1 x the plain request; a first request at most the plain request
plus two store round trips, plus 10 %; both faster than the other middleware.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import httpx
import redis.asyncio
from redis_vs_powertools import HOST, US, find_server, running_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.stores.redis import AsyncRedisStore

BODY = b'{"amount": 1000, "currency": "EUR", "card": "tok_visa"}'
OTHER = "asgi-idempotency-header"


async def pay(request: Request) -> Response:
    data = await request.json()
    return JSONResponse({"id": "pay_1", "amount": data["amount"], "status": "paid"}, 201)


def endpoint() -> Starlette:
    return Starlette(routes=[Route("/payments", pay, methods=["POST"])])


def other_middleware(port: int) -> Any | None:
    """The other package's middleware on its Redis backend, or None when it is not installed."""
    try:
        from idempotency_header_middleware import IdempotencyHeaderMiddleware
        from idempotency_header_middleware.backends.redis import RedisBackend
    except ImportError:
        return None
    backend = RedisBackend(redis.asyncio.Redis(host=HOST, port=port))
    return IdempotencyHeaderMiddleware(endpoint(), backend=backend)


async def per_request(app: Any, n: int, fresh: bool) -> float:
    """Median-free mean time per request (seconds) of ``n`` requests in a row."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        fixed = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"}
        first = await client.post("/payments", content=BODY, headers=fixed)  # warm, and stored
        assert first.status_code == 201, first.text
        keys = [str(uuid.uuid4()) for _ in range(n)]
        start = time.perf_counter()
        for i in range(n):
            headers = (
                {"Idempotency-Key": keys[i], "Content-Type": "application/json"} if fresh else fixed
            )
            answer = await client.post("/payments", content=BODY, headers=headers)
            if answer.status_code != 201:
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text}")
        return (time.perf_counter() - start) / n


async def round_trip(port: int, n: int) -> float:
    client = redis.asyncio.Redis(host=HOST, port=port)
    await client.ping()
    start = time.perf_counter()
    for _ in range(n):
        await client.ping()
    elapsed = (time.perf_counter() - start) / n
    await client.aclose()
    return elapsed


async def run(port: int, n: int, rounds: int) -> dict[str, list[float]]:
    store = AsyncRedisStore(redis.asyncio.Redis(host=HOST, port=port), prefix="bench-http")
    ours = IdempotencyMiddleware(endpoint(), store=store)
    other = other_middleware(port)
    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "plain endpoint": lambda: per_request(endpoint(), n, fresh=True),
        "onceonly, first": lambda: per_request(ours, n, fresh=True),
        "onceonly, replay": lambda: per_request(ours, n, fresh=False),
    }
    if other is not None:
        variants[f"{OTHER}, first"] = lambda: per_request(other, n, fresh=True)
        variants[f"{OTHER}, replay"] = lambda: per_request(other, n, fresh=False)
    times: dict[str, list[float]] = {label: [] for label in variants}
    times["Redis round trip"] = []
    labels = list(variants)
    for r in range(rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            times[label].append(await variants[label]())
        times["Redis round trip"].append(await round_trip(port, n))
        print(f"round {r + 1}/{rounds} done")
    await store.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary, how = find_server()
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("starlette", "httpx", "redis")
    )
    try:
        other_version = f"{OTHER} {metadata.version(OTHER)}"
    except metadata.PackageNotFoundError:
        other_version = f"{OTHER}: not installed, its rows are left out"
    print(f"server: {binary} ({how}); {versions}; {other_version}")
    print(f"{args.n} requests per variant per round, {args.rounds} interleaved rounds")
    with running_server(binary) as port:
        times = asyncio.run(run(port, args.n, args.rounds))
    median = {label: statistics.median(values) * 1e6 for label, values in times.items()}
    plain, rtt = median["plain endpoint"], median["Redis round trip"]
    width = max(map(len, median))
    print(f"\n{'per request (' + US + ')':{width}}  {'median':>8}  {'x plain':>8}")
    for label, value in median.items():
        print(f"{label:{width}}  {value:8.1f}  {value / plain:8.2f}")
    replay, first = median["onceonly, replay"], median["onceonly, first"]
    first_goal = (plain + 2 * rtt) * 1.1
    print("\ngoals (printed, not asserted):")
    print(f"  replay <= 1.1 x plain: {replay:.1f} vs {1.1 * plain:.1f} {US}")
    print(f"  first <= (plain + 2 round trips) x 1.1: {first:.1f} vs {first_goal:.1f} {US}")
    if f"{OTHER}, first" in median:
        print(
            f"  faster than {OTHER}: first {first:.1f} vs {median[f'{OTHER}, first']:.1f}, "
            f"replay {replay:.1f} vs {median[f'{OTHER}, replay']:.1f} {US}"
        )


if __name__ == "__main__":
    main()
