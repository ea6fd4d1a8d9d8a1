"""The Redis store when things go wrong, on real servers.

Script cache flushed and server restarted mid-run, a Sentinel failover with
the primary SIGKILLed, ACL and TLS end to end, and the three ways a client can
fail to reach a store (wrong password, nothing listening, something that is
not Redis): each must give IdempotencyStoreError with the cause chained, and
the function must not run.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redis_harness as harness
from onceonly import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyStoreError,
    idempotent_function,
)
from onceonly.stores.redis import RedisStore
from testkit import ManualClock


def _counted(store: RedisStore, **config: Any) -> tuple[Any, list[str]]:
    runs: list[str] = []

    @idempotent_function(
        store=store,
        data="order",
        config=IdempotencyConfig(event_key_jmespath="id", key_prefix="f", **config),
    )
    def charge(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return f"charged {order['id']}"

    return charge, runs


# -- script cache and restarts ----------------------------------------------------------


def test_script_flush_and_a_restart_mid_run_reach_no_caller_and_run_nothing_twice(
    redis_engine: harness.Engine, tmp_path: Path
) -> None:
    # appendfsync always: every acknowledged write is on disk before the restart.
    server = harness.standalone(redis_engine, tmp_path / "srv", extra=["appendfsync always"])
    try:
        store = RedisStore(server.client(), prefix=f"t{uuid.uuid4().hex[:8]}")
        charge, runs = _counted(store)
        ids = [f"o{i}" for i in range(300)]
        for i, order_id in enumerate(ids):
            if i == 100:
                server.client().script_flush()  # the next EVALSHA meets NOSCRIPT
            if i == 200:
                server.stop()  # SIGTERM: the server writes its AOF and exits
                server.start()  # same port, same folder; the client reconnects
            assert charge({"id": order_id}) == f"charged {order_id}"
        # Every delivery again, in reverse: all replays, nothing runs twice.
        for order_id in reversed(ids):
            assert charge({"id": order_id}) == f"charged {order_id}"
        assert runs == ids
        assert charge.stats.snapshot()["replayed"] == len(ids)
    finally:
        server.stop()


# -- Sentinel failover --------------------------------------------------------------------


def test_sentinel_failover_the_same_client_works_again_and_lost_claims_are_counted(
    redis_engine: harness.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sentinels = harness.sentinel_set(redis_engine, tmp_path / "sentinel")
    try:
        client = redis.Sentinel(sentinels.addresses(), socket_timeout=2).master_for(
            harness.SERVICE, socket_timeout=2
        )
        # Leases by an injected clock that stands still during the traffic (no
        # lease ends by itself) and that the test moves past the lease at the end.
        clock = ManualClock()
        lease_seconds = 30
        store = RedisStore(client, prefix="failover", clock=clock)
        charge, runs = _counted(store, lease_seconds=lease_seconds)
        answered: list[str] = []  # calls that returned: their records were acknowledged
        errors: list[str] = []
        held: list[str] = []  # keys answered "in progress": a claim without its outcome
        stop = threading.Event()

        def traffic() -> None:
            i = 0
            while not stop.is_set():
                order_id = f"o{i}"
                try:
                    charge({"id": order_id})
                except IdempotencyStoreError:
                    errors.append(order_id)  # failed closed: did not run; retried below
                    time.sleep(0.05)
                    continue
                except IdempotencyAlreadyInProgressError:
                    # The failed attempt's claim reached the server (only its reply
                    # was lost): the key is held until that lease ends. Move on.
                    held.append(order_id)
                    i += 1
                    continue
                answered.append(order_id)
                i += 1

        # A claim whose outcome never comes (its holder is gone), on both
        # replicas before the kill: held on the promoted one until its lease ends.
        stranded = "stranded"
        key = charge.key_for({"id": stranded})
        lease_ms = lease_seconds * 1000
        store.claim(
            key, token=uuid.uuid4().hex, lease_ms=lease_ms, ttl_ms=3_600_000, fingerprint=None
        )
        assert client.execute_command("WAIT", 2, 5000) == 2
        worker = threading.Thread(target=traffic)
        worker.start()
        harness.wait_until(lambda: len(answered) >= 300, "traffic before the kill")
        _, old_port = sentinels.master_address()
        sentinels.server_at(old_port).kill()  # SIGKILL, writes in flight
        harness.wait_until(
            lambda: sentinels.master_address()[1] != old_port, "a replica to be promoted", 60
        )
        at_failover = len(answered)
        harness.wait_until(lambda: len(answered) >= at_failover + 200, "traffic after", 60)
        stop.set()
        worker.join()

        # Deliver every answered call again. A record the old primary
        # acknowledged but had not yet sent to the promoted replica is gone,
        # so that call runs a second time: that is the window WAIT narrows.
        # A call whose claim reached the replica but whose outcome did not
        # keeps its claim until the lease ends: "in progress", not a re-run.
        runs_before = len(runs)
        held_on_replay: list[str] = []
        for order_id in answered:
            try:
                assert charge({"id": order_id}) == f"charged {order_id}"
            except IdempotencyAlreadyInProgressError:
                held_on_replay.append(order_id)
        lost = len(runs) - runs_before
        with capsys.disabled():
            print(
                f"\n[{redis_engine.id}] Sentinel failover under load: {lost} of "
                f"{len(answered)} acknowledged records lost (ran again); "
                f"{len(held_on_replay)} held in progress on replay and {len(held)} during the "
                f"traffic until their lease ends; {len(errors)} calls failed closed"
            )
        # Only what the old primary acknowledged can be lost or held: every call
        # answered by the promoted replica replays (it neither runs nor is held).
        assert 0 <= lost + len(held_on_replay) <= at_failover
        assert set(held_on_replay).isdisjoint(answered[at_failover:])
        assert all(runs.count(o) == 1 for o in answered[at_failover:])

        # The same client works on: new keys run once, then replay.
        fresh = [f"after{i}" for i in range(20)]
        for order_id in fresh:
            assert charge({"id": order_id}) == f"charged {order_id}"
        for order_id in fresh:
            assert charge({"id": order_id}) == f"charged {order_id}"
        assert [o for o in runs if o.startswith("after")] == fresh

        # A key held in progress ends with its lease: once it has passed, each
        # such key replays (its outcome did arrive) or runs; none is still held.
        with pytest.raises(IdempotencyAlreadyInProgressError):
            charge({"id": stranded})
        clock.advance(lease_ms)
        for order_id in [stranded, *held, *held_on_replay]:
            assert charge({"id": order_id}) == f"charged {order_id}"
            ran = runs.count(order_id)
            assert ran >= 1
            assert charge({"id": order_id}) == f"charged {order_id}"  # and now replays
            assert runs.count(order_id) == ran
    finally:
        sentinels.stop()


# -- ACL and TLS ------------------------------------------------------------------------


def test_an_acl_user_limited_to_the_prefix_runs_end_to_end(
    redis_engine: harness.Engine, tmp_path: Path
) -> None:
    server, user, password = harness.acl_server(redis_engine, tmp_path / "acl", "onceonly")
    try:
        url = f"redis://{user}:{password}@{harness.HOST}:{server.port}/0"
        store = RedisStore.from_url(url)
        charge, runs = _counted(store)
        assert charge({"id": "a"}) == "charged a"
        assert charge({"id": "a"}) == "charged a"
        assert runs == ["a"]
        # The same user under another prefix is refused, and says why.
        other, other_runs = _counted(RedisStore.from_url(url, prefix="elsewhere"))
        with pytest.raises(IdempotencyStoreError, match="ACL") as info:
            other({"id": "b"})
        assert isinstance(info.value.__cause__, redis.exceptions.NoPermissionError)
        assert other_runs == []
    finally:
        server.stop()


def test_tls_with_client_certificates_runs_end_to_end(
    tls_engine: harness.Engine, tmp_path: Path
) -> None:
    assert tls_engine is not harness.NO_TLS_ENGINE, (
        "no server here was built with TLS: install Debian's redis-server (scripts/test does)"
    )
    server, certs = harness.tls_server(tls_engine, tmp_path / "tls")
    try:
        store = RedisStore.from_url(
            f"rediss://{harness.HOST}:{server.port}/0",
            ssl_ca_certs=str(certs.ca_cert),
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
        )
        charge, runs = _counted(store)
        assert charge({"id": "a"}) == "charged a"
        assert charge({"id": "a"}) == "charged a"
        assert runs == ["a"]
        # Without the CA the server's certificate is not trusted: fail closed.
        untrusting = RedisStore.from_url(
            f"rediss://{harness.HOST}:{server.port}/0",
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
            retry=None,
        )
        blocked, blocked_runs = _counted(untrusting)
        with pytest.raises(IdempotencyStoreError) as info:
            blocked({"id": "b"})
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        assert blocked_runs == []
    finally:
        server.stop()


# -- cannot reach the store ----------------------------------------------------------------


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A loopback port that answers like an HTTP server, not like Redis."""
    listener = socket.socket()
    listener.bind((harness.HOST, 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


def _unreachable(kind: str, engine: harness.Engine, farm: Any, not_redis_port: int) -> str:
    if kind == "wrong password":
        server = farm.standalone(engine)
        return f"redis://default:not-the-password@{harness.HOST}:{server.port}/0"
    if kind == "nothing listening":
        return f"redis://{harness.HOST}:{harness.free_port()}/0"
    return f"redis://{harness.HOST}:{not_redis_port}/0"


@pytest.mark.parametrize("kind", ["wrong password", "nothing listening", "not redis"])
def test_an_unreachable_store_fails_closed_with_the_cause_chained(
    kind: str,
    redis_engine: harness.Engine,
    redis_farm: Any,
    not_redis: int,
) -> None:
    url = _unreachable(kind, redis_engine, redis_farm, not_redis)
    if kind == "wrong password":
        # The farm's server has no password; give it one for this test only.
        admin = redis_farm.standalone(redis_engine).client()
        admin.config_set("requirepass", "the-password")
    try:
        store = RedisStore.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        charge, runs = _counted(store)
        started = time.monotonic()
        with pytest.raises(IdempotencyStoreError) as info:
            charge({"id": "a"})
        elapsed = time.monotonic() - started
        assert isinstance(info.value.__cause__, redis.exceptions.RedisError)
        assert runs == []
        # Fails within the client's own budget (timeouts and retries), not never:
        # redis-py retries 10 times with backoff capped at 1 s.
        assert elapsed < 15
        # on_store_error="run" runs it anyway, unprotected.
        lenient, lenient_runs = _counted(store, on_store_error="run")
        assert lenient({"id": "a"}) == "charged a"
        assert lenient_runs == ["a"]
    finally:
        if kind == "wrong password":
            admin = redis_farm.standalone(redis_engine).client(password="the-password")
            admin.config_set("requirepass", "")


def test_in_progress_elsewhere_is_one_call_and_an_error_with_time_left(
    redis_engine: harness.Engine, redis_farm: Any
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")
    started = threading.Event()
    release = threading.Event()

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(lease_seconds=20))
    def slow(order: dict[str, Any]) -> str:
        started.set()
        release.wait(10)
        return "done"

    worker = threading.Thread(target=slow, args=({"id": 1},))
    worker.start()
    started.wait(10)
    with pytest.raises(IdempotencyAlreadyInProgressError) as info:
        slow({"id": 1})
    assert 0 < info.value.retry_after_ms <= 20_000
    release.set()
    worker.join()
    assert slow({"id": 1}) == "done"
