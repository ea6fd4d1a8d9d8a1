"""An HTTP proxy on loopback that can lose a DynamoDB response after the server acted.

``HttpDropProxy(upstream)`` listens on ``127.0.0.1`` (a free port) and
forwards each request to ``upstream`` (moto's server, on loopback). Told to, it
forwards a request, reads the whole response (so the write is done), and
instead of relaying it closes the client's connection: the client sees the
connection drop with its request applied and its answer gone.

    with HttpDropProxy(moto.url) as proxy:
        proxy.drop_responses(1, when=lambda op, body: op == "PutItem")
        ...
        assert proxy.dropped == 1

``when(operation, body)`` gets the request's DynamoDB operation (the tail of
its ``X-Amz-Target`` header, e.g. ``PutItem``) and its JSON body, under the
proxy's lock, once per request while responses are left to lose.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpDropProxy"]

HOST = "127.0.0.1"

# Headers that describe one hop, not the message: never relayed as they came.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
)

When = Callable[[str, bytes], bool]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # botocore keeps its connections open
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Small replies written as they come: no Nagle wait on a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return  # requests carry keys: never logged

    def do_POST(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        upstream = http.client.HTTPConnection(proxy.upstream[0], proxy.upstream[1], timeout=30)
        try:
            upstream.request("POST", self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        if proxy.should_drop(operation, body):
            # The server has acted and answered: lose the answer with the connection.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        # Headers and body in one write (end_headers would flush the headers alone).
        self._headers_buffer.append(b"\r\n" + payload)
        self.flush_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: HttpDropProxy


class HttpDropProxy:
    """Forward loopback HTTP requests to moto's server; lose chosen responses."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        if parts.hostname not in (HOST, "localhost") or parts.port is None:
            raise ValueError("the proxy only forwards to a loopback address with a port")
        self.upstream = (HOST, parts.port)
        self._lock = threading.Lock()
        self._remaining = 0
        self._when: When | None = None
        self.dropped = 0
        self._server = _Server((HOST, 0), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self) -> str:
        """The endpoint URL that goes through the proxy."""
        return f"http://{HOST}:{self.port}"

    def drop_responses(self, count: int = 1, *, when: When | None = None) -> None:
        """Lose the responses of the next ``count`` requests (those ``when`` accepts, if given)."""
        with self._lock:
            self._remaining = count
            self._when = when

    def should_drop(self, operation: str, body: bytes) -> bool:
        with self._lock:
            if self._remaining <= 0:
                return False
            if self._when is not None and not self._when(operation, body):
                return False
            self._remaining -= 1
            self.dropped += 1
            return True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> HttpDropProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
