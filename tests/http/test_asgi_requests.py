"""The ASGI middleware's side of the request: what passes, keys, bodies, disconnects, options.

Pure adapter behaviour: on the memory store, in process (httpx's
ASGITransport, or a hand-driven :class:`Wire` where the messages matter).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgi_support import Message, Shop, Wire, key, request_body
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from onceonly import Event, IdempotencyConfigError
from onceonly.http import HttpConfig
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.routes import RouteOptions
from onceonly.stores import AsyncMemoryStore, MemoryStore

PAY = b'{"amount": 10}'


class Recorder:
    """A raw ASGI app that records what it was called with, reads the body and answers 201."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any, Any]] = []
        self.bodies: list[bytes] = []
        self.after_body: list[Message] = []
        self.read_after_body = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.bodies.append(b"".join(chunks))
        if self.read_after_body:
            self.after_body.append(await receive())
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made", "more_body": False})


def test_lifespan_and_websocket_scopes_reach_the_app_untouched() -> None:
    async def scenario() -> None:
        app = Recorder()
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())

        async def receive() -> Message:
            return {"type": "lifespan.startup"}

        async def send(message: Message) -> None:
            pass

        for kind in ("lifespan", "websocket"):
            scope = {"type": kind, "method": "POST", "headers": [(b"idempotency-key", b"k")]}
            await middleware(scope, receive, send)
            assert app.calls[-1] == (scope, receive, send)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", {}), ("GET", key("k")), ("OPTIONS", key("k")), ("DELETE", key("k"))],
    ids=["no-key", "get", "options", "delete"],
)
def test_uncovered_requests_reach_the_app_with_the_servers_own_receive_and_send(
    method: str, headers: dict[str, str]
) -> None:
    async def scenario() -> None:
        app = Recorder()
        wire = Wire(
            IdempotencyMiddleware(app, store=AsyncMemoryStore()),
            request_body(PAY),
            method=method,
            headers=headers,
        )
        await wire()
        (_, receive, send), *_ = app.calls
        assert receive == wire.receive
        assert send == wire.send
        assert wire.header("idempotency-stored") is None

    asyncio.run(scenario())


def test_the_app_gets_the_whole_body_then_the_real_receive() -> None:
    async def scenario() -> None:
        app = Recorder()
        app.read_after_body = True
        chunks = [
            {"type": "http.request", "body": b'{"amount":', "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b" 10}", "more_body": False},
        ]
        wire = Wire(IdempotencyMiddleware(app, store=AsyncMemoryStore()), chunks, headers=key("k"))
        wire.disconnect.set()  # what the server's receive says once the body is read
        await wire()
        assert app.bodies == [b'{"amount": 10}']
        assert app.after_body == [{"type": "http.disconnect"}]
        assert wire.status() == 201
        assert wire.body() == b"made"

    asyncio.run(scenario())


def test_bad_keys_and_missing_required_keys_are_400_problems_and_the_app_never_runs() -> None:
    async def scenario() -> None:
        shop = Shop(AsyncMemoryStore(), required=True)
        async with shop.client() as c:
            missing = await c.post("/payments", content=PAY)
            empty = await c.post("/payments", content=PAY, headers={"Idempotency-Key": '""'})
            long = await c.post("/payments", content=PAY, headers=key("x" * 256))
            two = await c.post("/payments", content=PAY, headers={"Idempotency-Key": '"a", "b"'})
        assert shop.runs == 0
        for answer, kind in (
            (missing, "key-missing"),
            (empty, "key-invalid"),
            (long, "key-invalid"),
        ):
            assert answer.status_code == 400
            assert answer.headers["content-type"] == "application/problem+json"
            body = answer.json()
            assert body["type"] == f"urn:onceonly:problem:{kind}"
            assert body["status"] == 400
            assert set(body) == {"type", "title", "status", "detail"}
        assert two.status_code == 400
        assert shop.stats[Event.BAD_KEY] == 4

    asyncio.run(scenario())


def test_a_declared_body_over_the_limit_is_413_before_anything_is_read_or_claimed() -> None:
    async def scenario() -> None:
        store = AsyncMemoryStore()
        app = Recorder()
        middleware = IdempotencyMiddleware(app, store=store, max_body_bytes=8)
        big = Wire(
            middleware, request_body(b"0123456789"), headers=key("k", **{"Content-Length": "10"})
        )
        await big()
        assert big.status() == 413
        assert big.received == 0
        assert app.calls == []
        small = Wire(middleware, request_body(b"01234567"), headers=key("k"))
        await small()
        assert small.status() == 201  # the key was never claimed: it runs now

    asyncio.run(scenario())


def test_a_streamed_body_over_the_limit_is_413_and_nothing_is_claimed() -> None:
    async def scenario() -> None:
        app = Recorder()
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(), max_body_bytes=8)
        chunked = [
            {"type": "http.request", "body": b"01234", "more_body": True},
            {"type": "http.request", "body": b"56789", "more_body": True},
            {"type": "http.request", "body": b"never read", "more_body": False},
        ]
        wire = Wire(middleware, chunked, headers=key("k"))
        await wire()
        assert wire.status() == 413
        assert wire.received == 2
        assert wire.header("content-type") == "application/problem+json"
        assert app.calls == []
        again = Wire(middleware, request_body(b"0123"), headers=key("k"))
        await again()
        assert again.status() == 201

    asyncio.run(scenario())


def test_a_client_gone_while_the_body_is_read_leaves_no_claim_and_no_app_call() -> None:
    async def scenario() -> None:
        app = Recorder()
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
        wire = Wire(middleware, [{"type": "http.request", "body": b"{", "more_body": True}])
        wire.scope["headers"] = [(b"idempotency-key", b"k")]
        wire.disconnect.set()
        await wire()
        assert wire.sent == []
        assert app.calls == []
        again = Wire(middleware, request_body(b"{}"), headers=key("k"))
        await again()
        assert again.status() == 201  # no claim was left behind

    asyncio.run(scenario())


def test_a_client_gone_after_the_handler_started_still_gets_the_response_stored() -> None:
    async def scenario() -> None:
        shop = Shop(AsyncMemoryStore())
        shop.hold = True
        wire = Wire(shop.app, request_body(PAY), headers=key("k"))
        running = asyncio.ensure_future(wire())
        await shop.entered.wait()
        wire.disconnect.set()  # the client hangs up while the payment is being made
        shop.release.set()
        await running
        shop.hold = False
        async with shop.client() as c:
            retry = await c.post("/payments", content=PAY, headers=key("k"))
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert shop.runs == 1

    asyncio.run(scenario())


def test_multipart_retries_with_new_boundaries_replay() -> None:
    async def scenario() -> None:
        shop = Shop(AsyncMemoryStore())
        files = {"receipt": ("r.bin", b"\x00\x01binary", "application/octet-stream")}
        async with shop.client() as c:
            # httpx draws a new boundary for each request, as clients do on a retry.
            a = await c.post("/payments", data={"amount": "10"}, files=files, headers=key("m"))
            b = await c.post("/payments", data={"amount": "10"}, files=files, headers=key("m"))
            other = await c.post("/payments", data={"amount": "11"}, files=files, headers=key("m"))
        assert a.request.headers["content-type"] != b.request.headers["content-type"]
        assert b.headers["idempotent-replayed"] == "true"
        assert other.status_code == 422
        assert shop.runs == 1

    asyncio.run(scenario())


def test_canonical_json_and_fingerprinted_headers() -> None:
    async def scenario() -> None:
        shop = Shop(AsyncMemoryStore(), canonical_json=True, fingerprint_headers={"API-Version"})
        json_headers = {"Content-Type": "application/json", "API-Version": "1"}
        async with shop.client() as c:
            a = await c.post(
                "/payments", content=b'{"a":1,"b":2}', headers=key("j", **json_headers)
            )
            b = await c.post(
                "/payments", content=b'{ "b": 2, "a": 1 }', headers=key("j", **json_headers)
            )
            v2 = {**json_headers, "API-Version": "2"}
            c2 = await c.post("/payments", content=b'{"a":1,"b":2}', headers=key("j", **v2))
        assert a.status_code == 201
        assert b.headers["idempotent-replayed"] == "true"
        assert c2.status_code == 422
        assert shop.runs == 1

    asyncio.run(scenario())


def test_the_options_are_checked_when_the_middleware_is_built() -> None:
    app = Recorder()
    with pytest.raises(IdempotencyConfigError, match="async store"):
        IdempotencyMiddleware(app, store=MemoryStore())
    with pytest.raises(IdempotencyConfigError, match="not both"):
        IdempotencyMiddleware(app, store=AsyncMemoryStore(), config=HttpConfig(), required=True)
    with pytest.raises(IdempotencyConfigError, match="unknown idempotency option"):
        IdempotencyMiddleware(app, store=AsyncMemoryStore(), lease=5)
    with pytest.raises(IdempotencyConfigError):
        IdempotencyMiddleware(app, store=AsyncMemoryStore(), lease_seconds=-1)
    with pytest.raises(IdempotencyConfigError, match="stats"):
        IdempotencyMiddleware(app, store=AsyncMemoryStore(), stats={})  # type: ignore[arg-type]
    with pytest.raises(IdempotencyConfigError, match="unknown idempotency option"):
        RouteOptions(requried=True)
    with pytest.raises(IdempotencyConfigError, match="exempt route"):
        RouteOptions(exempt=True, required=True)
    with pytest.raises(IdempotencyConfigError):
        RouteOptions(max_body_bytes=-1)
    config = HttpConfig(required=True)
    assert IdempotencyMiddleware(app, store=AsyncMemoryStore(), config=config).config is config


def test_the_scope_callable_gets_the_asgi_scope() -> None:
    seen: list[str] = []

    def tenant(scope: Any) -> str:
        seen.append(scope["path"])
        return dict(scope["headers"]).get(b"x-tenant", b"").decode()

    async def pay(request: Request) -> Response:
        return JSONResponse({"tenant": request.headers.get("x-tenant")}, status_code=201)

    async def scenario() -> None:
        from asgi_support import client
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(routes=[Route("/payments", pay, methods=["POST"])])
        app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore(), scope=tenant)
        async with client(app) as c:
            a = await c.post("/payments", content=PAY, headers=key("k", **{"X-Tenant": "a"}))
            b = await c.post("/payments", content=PAY, headers=key("k", **{"X-Tenant": "b"}))
            a2 = await c.post("/payments", content=PAY, headers=key("k", **{"X-Tenant": "a"}))
        assert (a.json(), b.json()) == ({"tenant": "a"}, {"tenant": "b"})
        assert "idempotent-replayed" not in b.headers
        assert a2.headers["idempotent-replayed"] == "true"
        assert seen == ["/payments"] * 3

    asyncio.run(scenario())
