"""Run the payments example: a server, a client that retries on timeouts, and the count.

    python examples/payments_api/run.py                      # FastAPI, SQLite
    python examples/payments_api/run.py --framework flask
    python examples/payments_api/run.py --store redis://127.0.0.1:6379/0

The server holds back the answer of one payment in four (charged, then slow);
the client's timeout is shorter, so it sends that payment again with the same
``Idempotency-Key``, as any HTTP client with retries does. The same client is
run against the app without idempotency, then with it, and the charges made
are counted: without it some payments are charged twice; with it, each once.
Prints a table; exits non-zero if a protected payment was charged twice.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger import Ledger

SLOW_SECONDS = 0.5
CLIENT_TIMEOUT = 0.35
ATTEMPTS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _store(url: str, folder: Path, is_async: bool) -> Any:
    if url == "sqlite":
        from onceonly.stores import AsyncSQLiteStore, SQLiteStore

        return (AsyncSQLiteStore if is_async else SQLiteStore)(folder / "idempotency.db")
    from onceonly.stores.redis import AsyncRedisStore, RedisStore

    prefix = f"payments-{uuid.uuid4().hex[:8]}"  # this run's own keys
    return (AsyncRedisStore if is_async else RedisStore).from_url(url, prefix=prefix)


@contextlib.contextmanager
def _serve(framework: str, app: Any, port: int) -> Iterator[None]:
    if framework == "fastapi":
        import uvicorn

        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.01)
            yield
        finally:
            server.should_exit = True
            thread.join()
        return
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    wsgi = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=wsgi.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        wsgi.shutdown()
        thread.join()


def _pay(client: httpx.Client, payment: str) -> tuple[int, int, bool]:
    """Send one payment until it is answered: (attempts, status, replayed)."""
    key = str(uuid.uuid4())
    for attempt in range(1, ATTEMPTS + 1):
        try:
            answer = client.post(
                "/payments",
                json={"id": payment, "cents": 1250},
                headers={"Idempotency-Key": key},
            )
        except httpx.TimeoutException:
            continue  # the same payment again, with the same key
        return attempt, answer.status_code, answer.headers.get("idempotent-replayed") == "true"
    return ATTEMPTS, 0, False


def _run(framework: str, store_url: str, payments: int, protected: bool) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ledger = Ledger(folder / "ledger.db")
        store = _store(store_url, folder, is_async=framework == "fastapi") if protected else None
        if framework == "fastapi":
            from fastapi_app import build_app
        else:
            from flask_app import build_app  # type: ignore[no-redef]
        app = build_app(ledger, store, SLOW_SECONDS)
        port = _free_port()
        tries = answered = replays = 0
        with (
            _serve(framework, app, port),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT) as client,
        ):
            for n in range(payments):
                attempts, status, replayed = _pay(client, f"pay-{n}")
                tries += attempts
                answered += status == 201
                replays += replayed
            time.sleep(SLOW_SECONDS)  # let the last slow answers finish on the server
        charges, charged = ledger.counts()
        ledger.close()
        if store is not None and store_url == "sqlite":
            store.close()
        return {
            "payments": payments,
            "requests sent": tries,
            "answered 201": answered,
            "replayed answers": replays,
            "charges made": charges,
            "payments charged": charged,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--framework", choices=["fastapi", "flask"], default="fastapi")
    parser.add_argument("--store", default="sqlite", help="'sqlite' or a redis:// URL")
    parser.add_argument("--payments", type=int, default=40)
    args = parser.parse_args()
    plain = _run(args.framework, args.store, args.payments, protected=False)
    guarded = _run(args.framework, args.store, args.payments, protected=True)
    print(f"{args.framework} payments API, store: {args.store}")
    print(f"{'':24} {'without':>10} {'onceonly':>10}")
    for name in plain:
        print(f"{name:24} {plain[name]:>10} {guarded[name]:>10}")
    once = guarded["charges made"] == guarded["payments charged"] == args.payments
    plain_once = plain["charges made"] == args.payments
    verdict = f"{'yes' if plain_once else 'NO':>10} {'yes' if once else 'NO':>10}"
    print(f"{'each payment charged once':24} {verdict}")
    return 0 if once else 1


if __name__ == "__main__":
    raise SystemExit(main())
