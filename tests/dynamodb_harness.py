"""DynamoDB for the tests: moto's server in this process, spoken to over HTTP by real boto3.

One :class:`MotoServer` per session listens on a free loopback port. Every
client is a real ``boto3`` DynamoDB client with ``endpoint_url`` pointing at
it, region us-east-1 and dummy credentials given to the constructor; nothing
is patched. Child processes (the storm) build their own clients to
:attr:`MotoServer.url`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client_for(url: str, **config: Any) -> Any:
    """A real boto3 DynamoDB client for the endpoint ``url``."""
    options: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"mode": "standard", "total_max_attempts": 3},
        "max_pool_connections": 32,
    }
    options.update(config)
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        config=Config(**options),
        **CREDENTIALS,
    )


class _Serial:
    """A WSGI app applying requests one at a time; ``lock`` held by a test pauses the server."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            self.requests += 1
            return list(self.app(environ, start_response))


class MotoServer:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 and a free port.

    DynamoDB applies each conditional write atomically. moto's backend checks
    a condition and then writes, without a lock, in whichever server thread
    took the request; so requests are applied one at a time here, which gives
    moto the per-item atomicity of the real service. They still arrive over
    HTTP, concurrently, from real clients.
    """

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        wsgi = self._server._server  # werkzeug's server, made by start()
        assert wsgi is not None
        self._serial = _Serial(wsgi.app)
        wsgi.app = self._serial
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._shared: dict[str, str] = {}
        self._lock = threading.Lock()
        # Building a client costs about 0.3 s (service model, endpoint rules):
        # tests that need no client of their own share this one (boto3 clients
        # are thread-safe).
        self.shared_client = client_for(self.url)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold every request that arrives until the block ends (they are then applied)."""
        with self._serial.lock:
            yield

    @property
    def requests(self) -> int:
        """How many requests the server has applied so far."""
        return self._serial.requests

    def client(self, **config: Any) -> Any:
        """A new real boto3 client to this server."""
        return client_for(self.url, **config)

    def fresh_table(self, client: Any, **layout: Any) -> str:
        """Create a table no other test uses (the store's own helper); return its name."""
        from onceonly.stores.dynamodb import DynamoDBStore

        name = f"t-{uuid.uuid4().hex[:16]}"
        DynamoDBStore.create_table(name, client=client, **layout)
        return name

    def shared_table(self, client: Any, name: str, **layout: Any) -> str:
        """A table created once per session under ``name`` (tests give each a key space)."""
        with self._lock:
            if name not in self._shared:
                from onceonly.stores.dynamodb import DynamoDBStore

                DynamoDBStore.create_table(name, client=client, **layout)
                self._shared[name] = name
        return name

    def stop(self) -> None:
        self.shared_client.close()
        self._server.stop()


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class ErrorServer:
    """An HTTP server on a free loopback port that answers every request with one DynamoDB error.

    The body is the JSON error DynamoDB itself sends (``__type`` and
    ``message``), so botocore raises its real ``ClientError`` for that code.
    ``requests`` counts what arrived.
    """

    def __init__(self, code: str, status: int = 400) -> None:
        body = json.dumps(
            {
                "__type": f"com.amazonaws.dynamodb.v20120810#{code}",
                "message": f"{code} from the test server",
            }
        ).encode()
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                outer.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
