"""The ASGI middleware under a real uvicorn server over TCP (loopback), Starlette and FastAPI.

The server runs in a thread (its own event loop) on a free port, started and
stopped by a fixture; clients are httpx clients in other threads. Each test
on every async store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.routing import Route

from onceonly import Stats
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.fastapi import IdempotencyKey
from redis_harness import free_port

PAY = b'{"amount": 10}'
JSON = {"Content-Type": "application/json"}


class Server:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread of its own."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, loop="asyncio", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # set once it listens
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


class Handler:
    """The payment endpoint's state: runs counted, the run held until ``release`` is set."""

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.background_release = threading.Event()
        self.background_done = threading.Event()

    async def run(self, body: bytes) -> dict[str, Any]:
        self.runs += 1
        self.entered.set()
        await asyncio.to_thread(self.release.wait, 30)
        return {"id": self.runs, "body": body.decode()}

    async def background(self) -> None:
        await asyncio.to_thread(self.background_release.wait, 30)
        self.background_done.set()


def starlette_app(store: Any, handler: Handler) -> Any:
    async def pay(request: Any) -> Response:
        return JSONResponse(await handler.run(await request.body()), 201)

    async def receipt(request: Any) -> Response:
        return JSONResponse({"receipt": 1}, 201, background=BackgroundTask(handler.background))

    app = Starlette(
        routes=[
            Route("/payments", pay, methods=["POST"]),
            Route("/receipts", receipt, methods=["POST"]),
        ]
    )
    app.add_middleware(IdempotencyMiddleware, store=store, stats=Stats())
    return app


def fastapi_app(store: Any, handler: Handler) -> Any:
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, store=store, stats=Stats())

    @app.post("/payments", status_code=201, dependencies=[Depends(IdempotencyKey(required=True))])
    async def pay(request: Request) -> dict[str, Any]:
        return await handler.run(await request.body())

    @app.post("/receipts", status_code=201)
    async def receipt() -> JSONResponse:
        return JSONResponse({"receipt": 1}, 201, background=BackgroundTask(handler.background))

    return app


APPS: dict[str, Callable[[Any, Handler], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
}


@pytest.fixture(params=sorted(APPS))
def served(request: pytest.FixtureRequest, http_async_store: Any) -> Iterator[tuple[str, Handler]]:
    """A Starlette or FastAPI app behind the middleware, served by uvicorn: (url, handler)."""
    handler = Handler()
    app = APPS[request.param](http_async_store, handler)
    try:
        with Server(app) as server:
            yield server.url, handler
    finally:
        handler.release.set()
        handler.background_release.set()


def test_50_concurrent_identical_posts_from_8_threads_run_the_handler_once(
    served: tuple[str, Handler],
) -> None:
    url, handler = served
    answered = threading.Condition()
    answers: list[httpx.Response] = []
    local = threading.local()
    clients: list[httpx.Client] = []  # one per thread, each on its own connection

    def post(_: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
            with answered:
                clients.append(local.client)
        answer = local.client.post(
            "/payments", content=PAY, headers={"Idempotency-Key": '"pay-50"', **JSON}
        )
        with answered:
            answers.append(answer)
            answered.notify_all()
        return answer

    with ThreadPoolExecutor(8) as pool:
        try:
            futures = [pool.submit(post, i) for i in range(50)]
            # Hold the first run until 20 duplicates were answered meanwhile.
            with answered:
                assert answered.wait_for(lambda: len(answers) >= 20, timeout=60)
            handler.release.set()
            results = [future.result() for future in futures]
        finally:
            handler.release.set()
    for client in clients:
        client.close()
    assert handler.runs == 1
    originals = [
        r for r in results if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    original = originals[0]
    assert original.json() == {"id": 1, "body": PAY.decode()}
    conflicts = 0
    for answer in results:
        if answer is original:
            continue
        if answer.status_code == 409:
            conflicts += 1
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.headers["content-type"] == "application/problem+json"
        else:
            assert answer.status_code == 201
            assert answer.headers["idempotent-replayed"] == "true"
            assert answer.content == original.content
    assert conflicts >= 19  # those answered while the first run was held
    with httpx.Client(base_url=url) as client:  # and over the wire, later: the replay
        replay = client.post(
            "/payments", content=PAY, headers={"Idempotency-Key": "pay-50", **JSON}
        )
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["content-length"] == str(len(original.content))
    assert replay.content == original.content
    assert handler.runs == 1


def test_background_tasks_do_not_delay_the_stored_response_over_the_wire(
    served: tuple[str, Handler],
) -> None:
    url, handler = served
    with httpx.Client(base_url=url, timeout=30) as client:
        first = client.post("/receipts", content=PAY, headers={"Idempotency-Key": "r", **JSON})
        # The background task still waits; the response came, and is stored already.
        replay = client.post("/receipts", content=PAY, headers={"Idempotency-Key": "r", **JSON})
        assert not handler.background_done.is_set()
        handler.background_release.set()
        assert handler.background_done.wait(30)
        after = client.post("/receipts", content=PAY, headers={"Idempotency-Key": "r", **JSON})
    assert first.status_code == 201
    assert "idempotency-stored" not in first.headers
    assert replay.headers["idempotent-replayed"] == "true"
    assert after.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content == after.content
