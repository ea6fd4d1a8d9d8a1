"""A plain WSGI app for the WSGI middleware's tests, and helpers to call it.

``Shop`` counts each run of a route in ``calls`` (the effect a duplicate must
not repeat). A request with ``X-Hold: 1`` waits in the app until the test sets
``shop.hold`` (``shop.entered`` says it is there), so a test can keep a claim
held while it sends a duplicate. ``shop.closed`` counts ``close()`` calls on
the iterables it returns (PEP 3333 asks a middleware to make them).
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Request

from onceonly.http.wsgi import IdempotencyMiddleware

JSON = {"Content-Type": "application/json"}


def key(value: str = "k-1", **more: str) -> dict[str, str]:
    """Request headers with an Idempotency-Key (as a structured-field string)."""
    return {"Idempotency-Key": f'"{value}"', **JSON, **more}


class _Body:
    """An app iterable whose close() is counted."""

    def __init__(self, shop: Shop, chunks: Iterable[bytes]) -> None:
        self._shop = shop
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        with self._shop.lock:
            self._shop.closed += 1


class Shop:
    """The app under the middleware (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.closed = 0
        self.entered = threading.Event()
        self.hold = threading.Event()
        self.stream_gate = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        route = request.path.strip("/").split("/")
        with self.lock:
            self.calls.append(request.path)
            n = len(self.calls)
        self.bodies.append(request.get_data())
        if request.headers.get("X-Hold"):
            self.entered.set()
            assert self.hold.wait(30), "the test never let the held request go"
        if route[0] == "boom":
            raise RuntimeError("the app failed")
        if route[0] == "status":
            code = int(route[1])
            start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
            return _Body(self, [f"status {code} #{n}".encode()])
        if route[0] == "big":  # ?size=N, in chunks of 1000, no Content-Length
            size = int(request.args["size"])
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return _Body(self, _chunks(n, size))
        if route[0] == "sse":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return _Body(self, self._events(n))
        if route[0] == "gzip":
            body = gzip.compress(json.dumps({"n": n}).encode())
            start_response(
                "200 OK",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", "gzip"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return _Body(self, [body])
        if route[0] == "legacy":  # the write() callable, then an empty iterable
            write = start_response("201 Created", [("Content-Type", "text/plain")])
            write(b"written-%d;" % n)
            return _Body(self, [b"iterated"])
        if route[0] == "oops":  # an error page through start_response's exc_info
            start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                raise ValueError("late failure")
            except ValueError:
                import sys

                start_response(
                    "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
                )
            return _Body(self, [b"error page"])
        body = json.dumps({"payment": n, "got": request.get_data(as_text=True)}).encode()
        start_response(
            "201 Created",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Location", f"/payments/{n}"),
                ("Set-Cookie", f"session=s{n}; Path=/"),
                ("X-Internal", "never replayed"),
            ],
        )
        return _Body(self, [body])

    def _events(self, n: int) -> Iterator[bytes]:
        yield b"data: first %d\n\n" % n
        assert self.stream_gate.wait(30), "the test never let the stream go on"
        yield b"data: second\n\n"

    def runs(self, path: str) -> int:
        with self.lock:
            return self.calls.count(path)


def _chunks(n: int, size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        part = min(1000, size - sent)
        yield bytes([n % 256]) * part
        sent += part


def client(
    store: Any, shop: Shop | None = None, **options: Any
) -> tuple[Client, Shop, IdempotencyMiddleware]:
    """A Werkzeug test client on the middleware over ``shop`` (a new one by default)."""
    shop = shop or Shop()
    middleware = IdempotencyMiddleware(shop, store=store, **options)
    return Client(middleware), shop, middleware


def in_thread(call: Callable[[], TestResponse]) -> tuple[threading.Thread, list[TestResponse]]:
    """Run ``call`` in a thread; its response lands in the returned list."""
    out: list[TestResponse] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


def problem_of(response: TestResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.data)
    assert body["status"] == response.status_code
    return body
