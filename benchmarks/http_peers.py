"""What Idempotency-Key middlewares for ASGI do in the hard cases: onceonly's beside PyPI's.

Run: bash scripts/bench http_peers

Not a test and not a timing benchmark: it asserts nothing, it prints what it
saw. The same tiny FastAPI app (one endpoint per case) runs behind each
middleware, in this process, through ``httpx.ASGITransport`` (the background
case through a bare ASGI call, since ``ASGITransport`` answers only once the
app has returned, background tasks included):

- onceonly's ``IdempotencyMiddleware`` on ``AsyncMemoryStore``, and on
  ``AsyncRedisStore`` against a local Redis / Valkey server (a free loopback
  port, as the other benchmarks start it);
- the Idempotency-Key middlewares for Starlette / FastAPI found on PyPI:
  ``asgi-idempotency-header``, ``fastapi-idempotency``,
  ``fastapi-idempotency-key`` and ``fastidempotent`` (versions pinned in
  ``scripts/bench``, which installs them for this run only, beside the venv,
  without their dependencies), each on its own in-memory backend, with its
  defaults otherwise. One that is not importable gets "not installed" cells.

The cases, each on a fresh key:

1. the handler raises once: does the retry with the same key run, and what does it get;
2. ten concurrent identical requests: how often the handler ran, what they got;
3. a ``Set-Cookie`` set by the handler: is it in the replay;
4. an endpoint that reads its JSON body: does it get it (or hang; 5 s bound);
5. the same key with another body while the first still runs, and after it ended;
6. the replay: which header marks it, and is it the original status and body;
7. a background task that sleeps 500 ms: when the first response's last body
   message reaches the server, and what a retry sent meanwhile gets;
8. a 500 from the handler: stored and replayed, or retried;
9. the same POST twice without a key: how often the handler ran, what they got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import httpx
import redis.asyncio
from fastapi import FastAPI
from redis_vs_powertools import HOST, find_server, running_server
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.stores import AsyncMemoryStore
from onceonly.stores.redis import AsyncRedisStore

TIMEOUT = 5.0  # seconds: the longest any one request (or handler wait) may take
CONCURRENT = 10
HANDLER_SLEEP = 0.3  # the concurrent case's handler, so that the duplicates overlap it
TASK_SLEEP = 0.5  # the background task
PAYLOAD = {"amount": 1000, "currency": "EUR"}


class NoAnswer(Exception):
    """A request that got no response within TIMEOUT."""


class Probe:
    """The app's endpoints and what they saw: one per middleware, so the counts are its own."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.entered = asyncio.Event()  # the hold handler is running
        self.release = asyncio.Event()  # lets it finish
        self.task_done = False

    async def flaky(self, request: Request) -> Response:
        self.runs["flaky"] += 1
        if self.runs["flaky"] == 1:
            raise RuntimeError("the handler fails once")
        return JSONResponse({"id": "pay_1"}, 201)

    async def slow(self, request: Request) -> Response:
        self.runs["slow"] += 1
        await asyncio.sleep(HANDLER_SLEEP)
        return JSONResponse({"id": "pay_1"}, 201)

    async def cookie(self, request: Request) -> Response:
        self.runs["cookie"] += 1
        response = JSONResponse({"id": "pay_1"}, 201)
        response.set_cookie("session", "s3cret")
        return response

    async def echo(self, request: Request) -> Response:
        return JSONResponse({"echo": await request.json()}, 201)

    async def hold(self, request: Request) -> Response:
        self.runs["hold"] += 1
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), TIMEOUT)
        return JSONResponse({"id": "pay_1"}, 201)

    async def create(self, request: Request) -> Response:
        self.runs["create"] += 1
        return JSONResponse({"id": f"pay_{self.runs['create']}"}, 201)

    async def background(self, request: Request) -> Response:
        self.runs["background"] += 1
        return JSONResponse({"id": "pay_1"}, 201, background=BackgroundTask(self._task))

    async def _task(self) -> None:
        await asyncio.sleep(TASK_SLEEP)
        self.task_done = True

    async def fail(self, request: Request) -> Response:
        self.runs["fail"] += 1
        return JSONResponse({"error": "upstream down"}, 500)

    def app(self) -> FastAPI:
        app = FastAPI()
        for name in ("flaky", "slow", "cookie", "echo", "hold", "create", "background", "fail"):
            app.add_api_route(f"/{name}", getattr(self, name), methods=["POST"])
        return app


# ---- the middlewares: each mounts itself on the app with app.add_middleware ----

Closer = Callable[[], Awaitable[None]]


@dataclass
class Contender:
    label: str
    dist: str  # its PyPI name, for the version
    how: str  # how it is configured, printed
    # (app, Redis port) -> what to close after the case, if anything
    mount: Callable[[FastAPI, int], Closer | None]


def onceonly_memory(app: FastAPI, port: int) -> None:
    app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore())
    return None


def onceonly_redis(app: FastAPI, port: int) -> Closer:
    client = redis.asyncio.Redis(host=HOST, port=port)
    store = AsyncRedisStore(client, prefix=f"peers-{uuid.uuid4().hex[:8]}")
    app.add_middleware(IdempotencyMiddleware, store=store)
    return store.aclose


def asgi_idempotency_header(app: FastAPI, port: int) -> None:
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends import MemoryBackend

    app.add_middleware(IdempotencyHeaderMiddleware, backend=MemoryBackend())


def fastapi_idempotency(app: FastAPI, port: int) -> None:
    from fastapi_idempotency import IdempotencyMiddleware as Middleware
    from fastapi_idempotency import MemoryStore

    app.add_middleware(Middleware, store=MemoryStore())


def fastapi_idempotency_key(app: FastAPI, port: int) -> None:
    from fastapi_idempotency_key import IdempotencyMiddleware as Middleware
    from fastapi_idempotency_key import MemoryBackend

    app.add_middleware(Middleware, backend=MemoryBackend())


def fastidempotent(app: FastAPI, port: int) -> None:
    from fastidempotent import IdempotencyMiddleware as Middleware
    from fastidempotent import MemoryBackend

    app.add_middleware(Middleware, backend=MemoryBackend())


CONTENDERS = [
    Contender("onceonly (memory)", "onceonly", "store=AsyncMemoryStore()", onceonly_memory),
    Contender(
        "onceonly (Redis)", "onceonly", "store=AsyncRedisStore(local server)", onceonly_redis
    ),
    Contender(
        "asgi-idempotency-header",
        "asgi-idempotency-header",
        "IdempotencyHeaderMiddleware, backend=MemoryBackend()",
        asgi_idempotency_header,
    ),
    Contender(
        "fastapi-idempotency",
        "fastapi-idempotency",
        "IdempotencyMiddleware, store=MemoryStore()",
        fastapi_idempotency,
    ),
    Contender(
        "fastapi-idempotency-key",
        "fastapi-idempotency-key",
        "IdempotencyMiddleware, backend=MemoryBackend()",
        fastapi_idempotency_key,
    ),
    Contender(
        "fastidempotent",
        "fastidempotent",
        "IdempotencyMiddleware, backend=MemoryBackend() (also reads IDEMPOTENCY_* variables)",
        fastidempotent,
    ),
]


# ---- one middleware's run ----


class Bench:
    """One middleware in front of a fresh app, and the ways to call it."""

    def __init__(self, app: FastAPI, probe: Probe) -> None:
        self.app, self.probe = app, probe
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://peers")

    async def post(self, path: str, key: str | None, data: Any = PAYLOAD) -> httpx.Response:
        """POST ``data`` as JSON with ``key`` (None: no key); NoAnswer past TIMEOUT."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            return await asyncio.wait_for(
                self.client.post(path, content=json.dumps(data).encode(), headers=headers),
                TIMEOUT,
            )
        except asyncio.TimeoutError:
            raise NoAnswer(path) from None

    async def raw(self, path: str, key: str, delivered: asyncio.Event) -> dict[str, Any]:
        """One bare ASGI call, as a server makes it: when did the last body message go out.

        Returns:
            ``status``, ``latency`` (seconds from the call to the final body
            message; None if none came) and ``task_done`` (whether the
            background task had ended by then).
        """
        body = json.dumps(PAYLOAD).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 123),
            "server": ("peers", 80),
            "headers": [
                (b"host", b"peers"), (b"idempotency-key", key.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }  # fmt: skip
        seen: dict[str, Any] = {"status": None, "latency": None, "task_done": None}
        given = False
        start = time.perf_counter()

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await delivered.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                seen["latency"] = time.perf_counter() - start
                seen["task_done"] = self.probe.task_done
                delivered.set()

        await self.app(scope, receive, send)
        return seen


def new_key() -> str:
    return str(uuid.uuid4())


def tally(answers: list[httpx.Response]) -> str:
    """Statuses and how many of each; a status whose answers all had ``Retry-After`` says so."""
    counts = Counter(answer.status_code for answer in answers)
    parts = []
    for status, n in sorted(counts.items()):
        same = [answer for answer in answers if answer.status_code == status]
        after = " with Retry-After" if all("retry-after" in a.headers for a in same) else ""
        parts.append(f"{status} x{n}{after}")
    return ", ".join(parts)


# ---- the cases: each returns {row: cell} ----

Case = Callable[[Bench], Awaitable[dict[str, str]]]

ROWS = {
    "raises": "1. handler raised once: retry runs? (statuses)",
    "concurrent": f"2. {CONCURRENT} concurrent duplicates: handler runs (statuses)",
    "cookie": "3. Set-Cookie in the replay",
    "body": "4. endpoint gets its JSON body (5 s bound)",
    "mismatch_running": "5a. other body, same key, first still running",
    "mismatch_after": "5b. other body, same key, after it ended",
    "marker": "6. header marking a replay",
    "faithful": "6b. replay has the original status and body",
    "latency": f"7a. first response sent after (task sleeps {TASK_SLEEP * 1000:.0f} ms)",
    "during_task": "7b. retry while the background task runs",
    "server_error": "8. handler answered 500: the retry",
    "no_key": "9. same POST twice, no key: handler runs (statuses)",
}


async def handler_raises(bench: Bench) -> dict[str, str]:
    key = new_key()
    first = await bench.post("/flaky", key)
    retry = await bench.post("/flaky", key)
    ran = bench.probe.runs["flaky"]
    verdict = "yes" if ran == 2 and retry.status_code < 300 else "no"
    return {"raises": f"{verdict} ({first.status_code}, then {retry.status_code})"}


async def concurrent(bench: Bench) -> dict[str, str]:
    key = new_key()
    answers = await asyncio.gather(*(bench.post("/slow", key) for _ in range(CONCURRENT)))
    return {"concurrent": f"{bench.probe.runs['slow']} ({tally(list(answers))})"}


async def cookie(bench: Bench) -> dict[str, str]:
    key = new_key()
    first = await bench.post("/cookie", key)
    second = await bench.post("/cookie", key)
    ran = bench.probe.runs["cookie"]
    if "set-cookie" not in first.headers:
        return {"cookie": f"? (first answer {first.status_code} had none)"}
    if ran > 1:
        return {"cookie": f"no replay: handler ran {ran}x"}
    return {"cookie": "yes: leaked" if "set-cookie" in second.headers else "no"}


async def body(bench: Bench) -> dict[str, str]:
    try:
        answer = await bench.post("/echo", new_key())
    except NoAnswer:
        return {"body": f"no: no answer in {TIMEOUT:.0f} s"}
    if answer.status_code == 201 and answer.json() == {"echo": PAYLOAD}:
        return {"body": "yes"}
    return {"body": f"no ({answer.status_code})"}


async def mismatch(bench: Bench) -> dict[str, str]:
    key, probe = new_key(), bench.probe
    first = asyncio.ensure_future(bench.post("/hold", key, {"amount": 1}))
    try:
        await asyncio.wait_for(probe.entered.wait(), TIMEOUT)
        other = asyncio.ensure_future(bench.post("/hold", key, {"amount": 2}))
        await asyncio.wait({other}, timeout=1.0)
        answered = other.done()
    finally:
        probe.release.set()
    await first
    during = f"{(await other).status_code}"
    if not answered:
        during = f"waited, then {during}"
    ran = probe.runs["hold"]
    after = await bench.post("/hold", key, {"amount": 2})
    cells = {"mismatch_running": during, "mismatch_after": f"{after.status_code}"}
    if ran > 1:
        cells["mismatch_running"] += f" (handler ran {ran}x)"
    if probe.runs["hold"] > ran:
        cells["mismatch_after"] += " (handler ran again)"
    elif after.status_code < 300:
        cells["mismatch_after"] += ": the first's response replayed"
    return cells


async def replay(bench: Bench) -> dict[str, str]:
    key = new_key()
    first = await bench.post("/create", key)
    second = await bench.post("/create", key)
    added = [
        f"{name}: {value}" for name, value in second.headers.items() if name not in first.headers
    ]
    same = (second.status_code, second.content) == (first.status_code, first.content)
    ran = bench.probe.runs["create"]
    return {
        "marker": "; ".join(added) or "none",
        "faithful": ("yes" if same else "no") + (f" (handler ran {ran}x)" if ran > 1 else ""),
    }


async def background(bench: Bench) -> dict[str, str]:
    key, delivered = new_key(), asyncio.Event()
    call = asyncio.ensure_future(bench.raw("/background", key, delivered))
    waiting = asyncio.ensure_future(delivered.wait())
    await asyncio.wait({call, waiting}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    retry_cell = "? (no first response)"
    if delivered.is_set():
        ended = bench.probe.task_done
        try:
            retry = await bench.post("/background", key)
            ran = bench.probe.runs["background"]
            retry_cell = f"{retry.status_code}"
            if ran > 1:
                retry_cell += f", handler ran {ran}x"
            elif retry.status_code == 201:
                retry_cell += " replay"
        except NoAnswer:
            retry_cell = f"no answer in {TIMEOUT:.0f} s"
        if ended:
            retry_cell += " (task had ended)"
    seen = await asyncio.wait_for(call, TIMEOUT + TASK_SLEEP)
    if seen["latency"] is None:
        return {"latency": "no final body message", "during_task": retry_cell}
    late = "after" if seen["task_done"] else "before"
    latency = f"{seen['latency'] * 1000:.0f} ms ({late} the task ended)"
    return {"latency": latency, "during_task": retry_cell}


async def server_error(bench: Bench) -> dict[str, str]:
    key = new_key()
    first = await bench.post("/fail", key)
    second = await bench.post("/fail", key)
    ran = bench.probe.runs["fail"]
    if ran > 1:
        return {"server_error": f"retried: ran {ran}x ({first.status_code}, {second.status_code})"}
    return {"server_error": f"stored: {second.status_code} replayed, ran once"}


async def no_key(bench: Bench) -> dict[str, str]:
    answers = [await bench.post("/create", None) for _ in range(2)]
    return {"no_key": f"{bench.probe.runs['create']} ({tally(answers)})"}


# Each case with the rows it fills (all marked when the case breaks as a whole).
CASES: list[tuple[Case, list[str]]] = [
    (handler_raises, ["raises"]),
    (concurrent, ["concurrent"]),
    (cookie, ["cookie"]),
    (body, ["body"]),
    (mismatch, ["mismatch_running", "mismatch_after"]),
    (replay, ["marker", "faithful"]),
    (background, ["latency", "during_task"]),
    (server_error, ["server_error"]),
    (no_key, ["no_key"]),
]


async def run_one(contender: Contender, port: int) -> dict[str, str]:
    """All the cases against one middleware; a case that breaks says how in its cells."""
    cells: dict[str, str] = {}
    for case, rows in CASES:
        probe = Probe()  # fresh counts and events, a fresh app and store per case
        app = probe.app()
        try:
            close = contender.mount(app, port)
            app.middleware_stack = app.build_middleware_stack()  # construction errors now
        except ImportError as exc:
            return dict.fromkeys(ROWS, f"not installed ({exc.name})")
        except Exception as exc:
            return dict.fromkeys(ROWS, f"cannot mount: {type(exc).__name__}: {exc}"[:70])
        bench = Bench(app, probe)
        try:
            cells.update(await asyncio.wait_for(case(bench), 4 * TIMEOUT))
        except NoAnswer as exc:
            cells.update(dict.fromkeys(rows, f"no answer in {TIMEOUT:.0f} s ({exc})"))
        except Exception as exc:
            text = f"error: {type(exc).__name__}: {exc}"[:70]
            cells.update(dict.fromkeys(rows, text))
        finally:
            probe.release.set()
            await bench.client.aclose()
            if close is not None:
                await close()
    return cells


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


async def run_all(port: int) -> dict[str, dict[str, str]]:
    results = {}
    for contender in CONTENDERS:
        print(f"running {contender.label} ...", flush=True)
        results[contender.label] = await run_one(contender, port)
    return results


def table(results: dict[str, dict[str, str]]) -> str:
    """A Markdown table: a row per behaviour, a column per middleware."""
    header = ["behaviour", *results]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, label in ROWS.items():
        cells = [results[name].get(row, "?") for name in results]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.parse_args()
    binary, how = find_server()
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("fastapi", "starlette", "httpx", "redis")
    )
    print(f"server: {binary} ({how}); {versions}")
    for contender in CONTENDERS:
        print(f"  {contender.label} {version(contender.dist)}: {contender.how}")
    with running_server(binary) as port:
        results = asyncio.run(run_all(port))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
