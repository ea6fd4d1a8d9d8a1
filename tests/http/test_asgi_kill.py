"""A uvicorn worker SIGKILLed mid-request: after the lease the retry runs once; no duplicate effect.

uvicorn runs ``asgi_kill_app`` with two worker processes on a free loopback
port; the store (a SQLite file, or a Redis server) is shared by the workers
and this test. Real time is unavoidable here (a short lease); the test waits
for it by polling the store's record, never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from onceonly.http import HttpConfig
from onceonly.http.core import Covered, Gate, RequestHead
from redis_harness import engines_or_fail, free_port

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
PAY = b'{"amount": 10}'
LEASE_SECONDS = 1.5


def until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The store as the workers are told of it, and the same store for this test to read."""
    if request.param == "sqlite":
        from onceonly.stores import SQLiteStore

        store = SQLiteStore(tmp_path / "kill.db")
        try:
            yield f"sqlite:{tmp_path / 'kill.db'}", store
        finally:
            store.close()
        return
    import redis

    from onceonly.stores.redis import RedisStore

    server = request.getfixturevalue("redis_farm").standalone(engines_or_fail()[0])
    prefix = f"k{uuid.uuid4().hex[:10]}"
    client = redis.Redis(host=server.client_host(), port=server.port)
    try:
        yield (
            f"redis:{server.client_host()}:{server.port}:{prefix}",
            RedisStore(client, prefix=prefix),
        )
    finally:
        client.close()


def test_a_killed_workers_claim_is_taken_over_after_its_lease_and_the_effect_happens_once(
    shared_store: tuple[str, Any], tmp_path: Path
) -> None:
    spec, store = shared_store
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        "KILL_DIR": str(tmp_path),
        "KILL_STORE": spec,
        "KILL_LEASE": str(LEASE_SECONDS),
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_kill_app:app",
            "--app-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Idempotency-Key": '"kill-1"', "Content-Type": "application/json"}

    def answers() -> bool:
        assert server.poll() is None, (tmp_path / "uvicorn.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def attempt() -> httpx.Response | httpx.HTTPError:
        try:
            return httpx.post(f"{url}/payments", content=PAY, headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            return exc

    try:
        until(answers, "uvicorn to answer")
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(attempt)
            started = until(lambda: sorted(tmp_path.glob("started-*")), "the first run")
            victim = int(started[0].read_text())
            os.kill(victim, signal.SIGKILL)  # mid-request, before the effect
            assert isinstance(first.result(timeout=60), httpx.HTTPError)
        (tmp_path / "go").touch()
        # The claim the dead worker left holds until its lease ends.
        gate = Gate(HttpConfig(lease_seconds=LEASE_SECONDS), store)
        head = RequestHead("POST", "/payments", b"", [("idempotency-key", '"kill-1"')])
        stored_key = gate.invocation(head, Covered("kill-1", ""), PAY).key
        until(lambda: store.get(stored_key) is None, "the dead worker's lease to end")
        retry = httpx.post(f"{url}/payments", content=PAY, headers=headers, timeout=60)
        again = httpx.post(f"{url}/payments", content=PAY, headers=headers, timeout=60)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
        log.close()
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert retry.json()["pid"] != victim
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == retry.content
    assert len(list(tmp_path.glob("started-*"))) == 2  # the killed run and the retry
    assert (tmp_path / "effects").read_text() == PAY.decode() + "\n"  # made once
