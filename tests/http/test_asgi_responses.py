"""The ASGI middleware's side of the response: streams, large bodies, background tasks, failures.

Pure adapter behaviour on the memory store (SQLite where the store must fail
for real), driven by hand (:class:`Wire`) where what reaches the client while
the app still runs is the point.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgi_support import Shop, Wire, client, key, request_body
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from onceonly import Event, IdempotencyAlreadyInProgressError, Stats
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore
from testkit import ManualClock

PAY = b'{"amount": 10}'


class Streamer:
    """Streams ``chunks`` of 300 bytes; waits for ``go`` after ``pause_after`` of them."""

    def __init__(self, media_type: str = "application/octet-stream", chunks: int = 6) -> None:
        self.runs = 0
        self.chunks = chunks
        self.pause_after = chunks
        self.go = asyncio.Event()
        self.media_type = media_type
        self.stats = Stats()
        self.app = Starlette(routes=[Route("/stream", self.stream, methods=["POST"])])

    async def stream(self, request: Request) -> Response:
        self.runs += 1

        async def parts() -> AsyncIterator[bytes]:
            for i in range(self.chunks):
                if i == self.pause_after:
                    await self.go.wait()
                yield bytes([65 + i]) * 300

        return StreamingResponse(parts(), media_type=self.media_type)


def test_a_response_past_max_response_bytes_streams_on_live_and_is_not_stored() -> None:
    async def scenario() -> None:
        shop = Streamer()
        shop.pause_after = 4  # 1200 bytes sent, over the 1000 held, then the app waits
        middleware = IdempotencyMiddleware(
            shop.app, store=AsyncMemoryStore(), max_response_bytes=1000, stats=shop.stats
        )
        wire = Wire(middleware, request_body(b"{}"), path="/stream", headers=key("s"))
        running = asyncio.ensure_future(wire())
        # What was held reaches the client while the app still runs ...
        await wire.until(lambda: len(wire.body()) == 1200)
        assert wire.status() == 200
        assert wire.header("idempotency-stored") == "false"
        # ... and the claim is already released: a retry meanwhile runs.
        retry = Wire(middleware, request_body(b"{}"), path="/stream", headers=key("s"))
        shop.go.set()
        await running
        await retry()
        assert wire.body() == b"".join(bytes([65 + i]) * 300 for i in range(6))
        assert wire.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        assert shop.runs == 2
        assert shop.stats[Event.NOT_STORED] == 2

    asyncio.run(scenario())


def test_a_response_just_under_the_limit_is_held_whole_and_stored() -> None:
    async def scenario() -> None:
        shop = Streamer()
        middleware = IdempotencyMiddleware(
            shop.app, store=AsyncMemoryStore(), max_response_bytes=1800
        )
        async with client(middleware) as c:
            first = await c.post("/stream", content=b"{}", headers=key("s"))
            again = await c.post("/stream", content=b"{}", headers=key("s"))
        assert len(first.content) == 1800
        assert "idempotency-stored" not in first.headers
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert shop.runs == 1

    asyncio.run(scenario())


def test_server_sent_events_go_out_live_from_their_start_and_are_not_stored() -> None:
    async def scenario() -> None:
        shop = Streamer(media_type="text/event-stream")
        shop.pause_after = 1
        middleware = IdempotencyMiddleware(shop.app, store=AsyncMemoryStore())
        wire = Wire(middleware, request_body(b"{}"), path="/stream", headers=key("e"))
        running = asyncio.ensure_future(wire())
        await wire.until(lambda: len(wire.body()) == 300)
        assert wire.header("idempotency-stored") == "false"
        shop.go.set()
        await running
        assert len(wire.body()) == 1800
        again = Wire(middleware, request_body(b"{}"), path="/stream", headers=key("e"))
        await again()
        assert again.header("idempotent-replayed") is None
        assert shop.runs == 2

    asyncio.run(scenario())


def test_background_tasks_run_after_the_response_is_stored_and_delivered_and_undo_nothing() -> None:
    async def scenario() -> None:
        go = asyncio.Event()
        ran: list[str] = []

        async def after() -> None:
            await go.wait()
            ran.append("background")
            raise RuntimeError("the background task failed")

        async def pay(request: Request) -> Response:
            ran.append("handler")
            return JSONResponse({"paid": True}, 201, background=BackgroundTask(after))

        app = Starlette(routes=[Route("/payments", pay, methods=["POST"])])
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
        wire = Wire(middleware, request_body(PAY), headers=key("b"))
        running = asyncio.ensure_future(wire())
        await wire.until(lambda: any(m.get("more_body") is False for m in wire.sent))
        # Delivered while the background task waits, and stored already.
        assert wire.status() == 201
        assert wire.header("idempotency-stored") is None
        replay = Wire(middleware, request_body(PAY), headers=key("b"))
        await replay()
        assert replay.header("idempotent-replayed") == "true"
        assert ran == ["handler"]
        go.set()
        with pytest.raises(RuntimeError, match="background task failed"):
            await running  # raised from the middleware after the fact, as without it
        later = Wire(middleware, request_body(PAY), headers=key("b"))
        await later()
        assert later.header("idempotent-replayed") == "true"  # the failure undid nothing
        assert ran == ["handler", "background"]

    asyncio.run(scenario())


def test_an_app_failing_after_its_start_before_its_final_body_is_released_and_raised() -> None:
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if len(calls) == 1:
            raise ValueError("broke mid-response")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def scenario() -> None:
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
        wire = Wire(middleware, request_body(b"{}"), headers=key("f"))
        with pytest.raises(ValueError, match="broke mid-response"):
            await wire()
        assert wire.sent == []  # nothing went out: the server answers 500
        retry = Wire(middleware, request_body(b"{}"), headers=key("f"))
        await retry()
        assert retry.status() == 200
        assert retry.body() == b"part"
        assert calls == [1, 1]

    asyncio.run(scenario())


def test_our_own_errors_raised_by_the_app_are_the_apps_not_problem_answers() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        # e.g. an idempotent_function inside the handler, finding its own key busy
        raise IdempotencyAlreadyInProgressError("inner", key="inner", retry_after_ms=1000)

    async def scenario() -> None:
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
        wire = Wire(middleware, request_body(b"{}"), headers=key("o"))
        with pytest.raises(IdempotencyAlreadyInProgressError, match="inner"):
            await wire()
        assert wire.sent == []  # no 409 of ours: the server answers the app's failure
        assert middleware.stats[Event.RELEASED] == 1

    asyncio.run(scenario())


def test_a_request_cancelled_mid_run_cancels_the_app_and_releases_the_key() -> None:
    async def scenario() -> None:
        shop = Shop(AsyncMemoryStore())
        shop.hold = True
        wire = Wire(shop.app, request_body(PAY), headers=key("c"))
        running = asyncio.ensure_future(wire())
        await shop.entered.wait()
        running.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await running
        async with asyncio.timeout(10):
            await shop.cancelled.wait()  # the app's own task was cancelled too
        shop.hold = False
        async with shop.client() as c:
            retry = await c.post("/payments", content=PAY, headers=key("c"))
        assert retry.status_code == 201  # released, not held until the lease ends
        assert "idempotent-replayed" not in retry.headers
        assert shop.stats[Event.RELEASED] == 1

    asyncio.run(scenario())


def test_an_app_that_returns_without_a_complete_response_is_released() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def scenario() -> None:
        store = AsyncMemoryStore()
        middleware = IdempotencyMiddleware(app, store=store)
        wire = Wire(middleware, request_body(b"{}"), headers=key("r"))
        with pytest.raises(RuntimeError, match="without sending a complete response"):
            await wire()
        assert middleware.stats[Event.RELEASED] == 1

    asyncio.run(scenario())


def test_extension_messages_before_the_start_pass_and_after_it_turn_the_response_live() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.debug", "info": {}})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/srv/receipt.pdf"})

    async def scenario() -> None:
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
        wire = Wire(middleware, request_body(b"{}"), headers=key("x"))
        await wire()
        kinds = [m["type"] for m in wire.sent]
        assert kinds == ["http.response.debug", "http.response.start", "http.response.pathsend"]
        assert wire.header("idempotency-stored") == "false"
        assert middleware.stats[Event.NOT_STORED] == 1

    asyncio.run(scenario())


def test_compressed_inside_stored_as_sent_and_decoded_for_a_client_without_gzip() -> None:
    async def pay(request: Request) -> Response:
        return Response(b"receipt " * 100, 201, media_type="text/plain")

    async def scenario() -> None:
        inner = Starlette(routes=[Route("/payments", pay, methods=["POST"])])
        inner.add_middleware(GZipMiddleware, minimum_size=10)
        middleware = IdempotencyMiddleware(inner, store=AsyncMemoryStore())
        gz = Wire(middleware, request_body(PAY), headers=key("z", **{"Accept-Encoding": "gzip"}))
        await gz()
        assert gz.header("content-encoding") == "gzip"
        assert gzip.decompress(gz.body()) == b"receipt " * 100
        plain = Wire(middleware, request_body(PAY), headers=key("z", **{"Accept-Encoding": "br"}))
        await plain()
        assert plain.header("idempotent-replayed") == "true"
        assert plain.header("content-encoding") is None
        assert plain.body() == b"receipt " * 100
        assert plain.header("content-length") == "800"
        gz2 = Wire(middleware, request_body(PAY), headers=key("z", **{"Accept-Encoding": "gzip"}))
        await gz2()
        assert gz2.header("content-encoding") == "gzip"
        assert gz2.body() == gz.body()

    asyncio.run(scenario())


# -- the store failing, for real: another connection holds SQLite's write lock ---------------


class WriteLock:
    """SQLite's write lock on a file, held by another connection while in the ``with``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> WriteLock:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("policy", ["raise", "run"])
def test_the_store_down_at_the_claim(policy: str, tmp_path: Path, clock: ManualClock) -> None:
    store = AsyncSQLiteStore(tmp_path / "down.db", busy_timeout_ms=50, clock=clock)

    async def scenario() -> None:
        shop = Shop(store, on_store_error=policy)
        async with shop.client() as c:
            with WriteLock(tmp_path / "down.db"):
                answer = await c.post("/payments", content=PAY, headers=key("d"))
        assert shop.stats[Event.STORE_ERROR] == 1
        if policy == "raise":
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["type"] == "urn:onceonly:problem:store-unavailable"
            assert shop.runs == 0
        else:
            assert answer.status_code == 201
            assert answer.headers["idempotency-stored"] == "false"
            assert shop.runs == 1

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_the_store_down_at_completion_delivers_and_the_claim_holds_until_its_lease(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = AsyncSQLiteStore(tmp_path / "late.db", busy_timeout_ms=50, clock=clock)

    async def scenario() -> None:
        shop = Shop(store, lease_seconds=10)
        shop.hold = True
        async with shop.client() as c:
            first = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("d")))
            await shop.entered.wait()
            with WriteLock(tmp_path / "late.db"), caplog.at_level(logging.WARNING, "onceonly"):
                shop.release.set()
                done = await first
            shop.hold = False
            busy = await c.post("/payments", content=PAY, headers=key("d"))
            clock.advance(10_001)
            rerun = await c.post("/payments", content=PAY, headers=key("d"))
        assert done.status_code == 201
        assert done.headers["idempotency-stored"] == "false"
        assert "could not store its outcome" in caplog.text
        assert "s3cret" not in caplog.text
        assert '"d"' not in caplog.text
        assert busy.status_code == 409
        assert rerun.status_code == 201
        assert shop.runs == 2

    try:
        asyncio.run(scenario())
    finally:
        store.close()


@pytest.mark.parametrize("over", ["body", "headers"])
def test_a_response_over_the_stores_own_limit_is_delivered_not_stored(
    over: str, moto_server: Any, clock: ManualClock
) -> None:
    from onceonly.stores.dynamodb import AsyncDynamoDBStore

    dynamo = moto_server.client()
    table = moto_server.fresh_table(dynamo)
    store = AsyncDynamoDBStore(
        table, client=dynamo, clock=clock, clock_skew_ms=0, max_outcome_bytes=4096
    )
    limit = (4096 - 512) * 3 // 4
    # Over by its body (held past the limit), or by a replayable header that
    # makes the stored outcome too big although the body fits.
    body = b"x" * (limit + 1 if over == "body" else limit)
    link = "<https://example.com/receipts>; rel=receipt" * (1 if over == "body" else 60)

    async def big(request: Request) -> Response:
        return Response(body, 200, headers={"Link": link})

    async def scenario() -> None:
        app = Starlette(routes=[Route("/big", big, methods=["POST"])])
        middleware = IdempotencyMiddleware(app, store=store)
        assert middleware.gate.max_response_bytes == limit
        for _ in range(2):
            wire = Wire(middleware, request_body(b"{}"), path="/big", headers=key("t"))
            await wire()
            assert wire.status() == 200
            assert wire.body() == body
            assert wire.header("idempotency-stored") == "false"
        assert middleware.stats[Event.NOT_STORED] == 2
        assert middleware.stats[Event.REPLAYED] == 0

    try:
        asyncio.run(scenario())
    finally:
        store.close()
        dynamo.delete_table(TableName=table)
        dynamo.close()
