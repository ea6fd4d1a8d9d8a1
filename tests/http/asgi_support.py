"""Apps and helpers for the ASGI middleware tests (Starlette apps, in-process httpx clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onceonly import Stats
from onceonly.http.asgi import IdempotencyMiddleware

BASE = "http://testserver"
Message = MutableMapping[str, Any]


def client(app: Any) -> httpx.AsyncClient:
    """An in-process client; an app exception becomes the 500 that Starlette answers."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url=BASE
    )


def key(value: str, **more: str) -> dict[str, str]:
    """Request headers with an Idempotency-Key (as a structured-field string)."""
    return {"Idempotency-Key": f'"{value}"', **more}


class Shop:
    """A Starlette app behind the middleware whose ``POST /payments`` counts its runs.

    Set ``hold`` to make the handler wait on ``release`` (``entered`` tells when it
    waits, ``cancelled`` when that wait was cancelled); ``fail_next`` makes the
    next runs raise after reading the body.
    Build it inside the event loop that uses it.
    """

    def __init__(self, store: Any, **options: Any) -> None:
        self.runs = 0
        self.hold = False
        self.fail_next = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.stats = Stats()
        self.app = Starlette(
            routes=[
                Route("/payments", self.payments, methods=["POST", "PUT", "GET"]),
                Route("/payments/{pid}", self.update, methods=["PATCH", "DELETE"]),
                Route("/status/{code:int}", self.status, methods=["POST"]),
            ]
        )
        self.app.add_middleware(IdempotencyMiddleware, store=store, stats=self.stats, **options)

    async def payments(self, request: Request) -> Response:
        body = await request.body()
        self.runs += 1
        n = self.runs
        if self.hold:
            self.entered.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the card network is down")
        return JSONResponse(
            {"id": n, "body": body.decode(), "method": request.method},
            status_code=201,
            headers={
                "Location": f"/payments/{n}",
                "ETag": f'"p{n}"',
                "Set-Cookie": "session=s3cret",
                "X-Request-Id": f"r{n}",
            },
        )

    async def update(self, request: Request) -> Response:
        self.runs += 1
        return JSONResponse({"run": self.runs, "pid": request.path_params["pid"]})

    async def status(self, request: Request) -> Response:
        self.runs += 1
        return JSONResponse({"run": self.runs}, status_code=request.path_params["code"])

    def client(self) -> httpx.AsyncClient:
        return client(self.app)


class Wire:
    """Drives an ASGI app by hand: scripted ``receive`` messages, every ``send`` recorded.

    Args:
        app: The ASGI app.
        method, path, headers: The request.
        messages: What ``receive`` returns, in order; after them it waits on
            ``disconnect`` and then returns ``http.disconnect``.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        messages: list[Message],
        method: str = "POST",
        path: str = "/payments",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.messages = list(messages)
        self.sent: list[Message] = []
        self.received = 0
        self.disconnect = asyncio.Event()
        self.got_message = asyncio.Event()
        raw = [(n.lower().encode(), v.encode()) for n, v in (headers or {}).items()]
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }

    async def receive(self) -> Message:
        self.received += 1
        if self.messages:
            return self.messages.pop(0)
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.got_message.set()

    async def __call__(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    def header(self, name: str) -> str | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                for n, v in message["headers"]:
                    if bytes(n).decode().lower() == name:
                        return bytes(v).decode()
        return None

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    async def until(self, check: Callable[[], bool], timeout: float = 10) -> None:
        """Wait until ``check()`` holds, woken by each message sent."""
        async with asyncio.timeout(timeout):
            while not check():
                self.got_message.clear()
                await self.got_message.wait()


def request_body(data: bytes) -> list[Message]:
    """The ``receive`` messages of a one-chunk request body."""
    return [{"type": "http.request", "body": data, "more_body": False}]
