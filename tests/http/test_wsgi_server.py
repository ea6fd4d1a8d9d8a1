"""Flask behind the WSGI middleware under real servers, over TCP on loopback.

Werkzeug's threaded server (in a thread of the test, on every sync store):
50 concurrent identical POSTs from 8 threads run the handler once, and a
replay over the wire. Gunicorn (a subprocess, a SQLite store shared with the
test): a worker killed with SIGKILL mid-request leaves a claim that the retry
takes over once its lease is over, and the charge is made once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from werkzeug.serving import make_server

from onceonly.http import HttpConfig
from onceonly.http.core import Covered, Gate, RequestHead
from onceonly.http.flask import FlaskIdempotency
from onceonly.records import Status
from onceonly.stores import SQLiteStore
from onceonly.stores.protocol import wall_ms
from redis_harness import free_port

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under Werkzeug's threaded server on a loopback port; its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="wsgi-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Payments:
    """A Flask app whose handler counts its runs and waits until the test lets it answer."""

    def __init__(self, store: Any) -> None:
        self.runs = 0
        self.lock = threading.Lock()
        self.go = threading.Event()
        app = flask.Flask("payments")
        self.idem = FlaskIdempotency(app, store=store, lease_seconds=60)

        @app.post("/payments")
        def create() -> Any:
            with self.lock:
                self.runs += 1
                n = self.runs
            assert self.go.wait(30), "the test never let the handler answer"
            response = flask.jsonify(payment=f"p-{n}", amount=flask.request.json["amount"])
            response.status_code = 201
            response.headers["Location"] = f"/payments/p-{n}"
            response.set_cookie("session", f"s-{n}")
            return response

        self.app = app


def test_50_concurrent_identical_posts_from_8_threads_run_the_handler_once(
    http_store: Any,
) -> None:
    shop = Payments(http_store)
    jobs: queue.Queue[int] = queue.Queue()
    for i in range(50):
        jobs.put(i)
    answers: list[httpx.Response] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(url: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                while True:
                    try:
                        jobs.get_nowait()
                    except queue.Empty:
                        return
                    answer = client.post(
                        "/payments", json={"amount": 10}, headers={"Idempotency-Key": '"storm"'}
                    )
                    with lock:
                        answers.append(answer)
                        # Half the answers are in while the first run still holds the
                        # key: let it finish, so the rest meet it done (or finishing).
                        if len(answers) >= 25:
                            shop.go.set()
        except BaseException as exc:
            failures.append(exc)
            shop.go.set()

    with serving(shop.app) as url:
        threads = [threading.Thread(target=worker, args=(url,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=url) as client:
            last = client.post(
                "/payments", json={"amount": 10}, headers={"Idempotency-Key": '"storm"'}
            )
    assert failures == []
    assert shop.runs == 1
    assert len(answers) == 50
    originals = [
        a for a in answers if a.status_code == 201 and "idempotent-replayed" not in a.headers
    ]
    assert len(originals) == 1
    original = originals[0]
    assert original.json() == {"payment": "p-1", "amount": 10}
    conflicts = 0
    for answer in answers:
        if answer is original:
            continue
        if answer.status_code == 409:
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.headers["content-type"] == "application/problem+json"
            conflicts += 1
        else:
            assert answer.status_code == 201
            assert answer.headers["idempotent-replayed"] == "true"
            assert answer.content == original.content
            assert "set-cookie" not in answer.headers
    assert conflicts >= 24  # every answer before the handler was let go
    assert last.headers["idempotent-replayed"] == "true"
    assert last.headers["location"] == "/payments/p-1"
    assert shop.idem.stats.snapshot()["executed"] == 1


def test_a_replay_over_the_wire(http_store: Any) -> None:
    shop = Payments(http_store)
    shop.go.set()
    with serving(shop.app) as url, httpx.Client(base_url=url) as client:
        first = client.post("/payments", json={"amount": 5}, headers={"Idempotency-Key": "w-1"})
        again = client.post("/payments", json={"amount": 5}, headers={"Idempotency-Key": "w-1"})
        other = client.post("/payments", json={"amount": 5}, headers={"Idempotency-Key": "w-2"})
    assert first.status_code == 201
    assert first.headers["set-cookie"].startswith("session=s-1")
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-length"] == str(len(first.content))
    assert "set-cookie" not in again.headers
    assert other.json()["payment"] == "p-2"
    assert shop.runs == 2


def stored_key(store: Any, key: str, scope: str = "") -> str:
    """The key the middleware (default options) stores a request's response under."""
    head = RequestHead("POST", "/", b"", [])
    return Gate(HttpConfig(), store).invocation(head, Covered(key, scope), b"").key


def test_a_client_gone_after_the_handler_started_still_gets_its_response_stored(
    http_store: Any,
) -> None:
    shop = Payments(http_store)
    request = (
        b'POST /payments HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: "gone"\r\n'
        b'Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{"amount": 3}'
    )
    with serving(shop.app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(request)
            wait_for(lambda: shop.runs == 1, "the handler to start")
        shop.go.set()  # the client has hung up; the handler finishes now
        key = stored_key(http_store, "gone")
        wait_for(
            lambda: (
                (record := http_store.get(key)) is not None and record.status is Status.COMPLETED
            ),
            "the response to be stored",
        )
        with httpx.Client(base_url=url) as client:
            retry = client.post(
                "/payments",
                content=b'{"amount": 3}',
                headers={"Idempotency-Key": '"gone"', "Content-Type": "application/json"},
            )
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == {"payment": "p-1", "amount": 3}
    assert shop.runs == 1


# -- gunicorn, a worker killed mid-request -------------------------------------------


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """gunicorn (1 worker, 4 threads) serving gunicorn_app on a loopback port; URL and folder."""
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed in teardown
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        "ONCEONLY_TEST_DIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers=1",
            "--threads=4",
            f"--bind=127.0.0.1:{port}",
            "--graceful-timeout=5",
            "gunicorn_app:app",
        ],
        cwd=HERE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _health(url), "gunicorn to answer")
        yield url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _health(url: str) -> str | None:
    try:
        answer = httpx.get(url + "/health", timeout=5)
    except httpx.TransportError:
        return None
    return answer.text if answer.status_code == 200 else None


def test_a_worker_killed_mid_request_is_taken_over_after_its_lease_and_charges_once(
    gunicorn: tuple[str, Path],
) -> None:
    url, folder = gunicorn
    headers = {"Idempotency-Key": '"charge-1"', "Content-Type": "application/json"}
    body = b'{"amount": 10}'
    lost: list[BaseException] = []

    def doomed() -> None:
        try:
            httpx.post(url + "/charge", content=body, headers=headers, timeout=60)
        except httpx.TransportError as exc:  # the worker died under it
            lost.append(exc)

    client_thread = threading.Thread(target=doomed)
    client_thread.start()
    started = wait_for(lambda: list(folder.glob("started-*")), "the handler to start")
    pid = int(started[0].name.removeprefix("started-"))
    os.kill(pid, signal.SIGKILL)
    client_thread.join(60)
    assert len(lost) == 1
    wait_for(lambda: (answer := _health(url)) and answer != f"ok {pid}", "a new worker")

    # The dead worker's claim holds until its lease ends; wait for that on the record.
    store = SQLiteStore(folder / "store.db")
    try:
        charge_key = stored_key(store, "charge-1")
        record = store.get(charge_key)
        assert record is not None
        assert record.status is Status.IN_PROGRESS
        wait_for(lambda: wall_ms() > record.deadline_ms, "the lease to end")
        (folder / "go").touch()
        retry = httpx.post(url + "/charge", content=body, headers=headers, timeout=60)
        assert retry.status_code == 201
        assert "idempotent-replayed" not in retry.headers
        assert retry.json()["worker"] != pid
        again = httpx.post(url + "/charge", content=body, headers=headers, timeout=60)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == retry.content
        completed = store.get(charge_key)
        assert completed is not None
        assert completed.status is Status.COMPLETED
    finally:
        store.close()
    assert (folder / "effects").read_text().splitlines() == [f"charged by {retry.json()['worker']}"]
