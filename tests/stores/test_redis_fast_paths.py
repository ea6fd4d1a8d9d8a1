"""The Redis stores' fast paths, on real servers.

``AsyncRedisStore`` sends a loop turn's script calls on one pooled connection
(packed by hiredis, replies read in order) instead of through redis-py's
pipeline; ``RedisStore`` sends a single call straight on a pooled connection, under the
client's retry policy as ``client.evalsha`` would.
Each must answer every caller exactly as the client would: its own reply, its
own error, or, when the connection dies, an IdempotencyStoreError for every
caller and a fresh connection for the next call.

A connection is killed while its commands wait in the server: ``CLIENT PAUSE
WRITE`` holds the (write) script calls, ``CLIENT KILL ID`` drops the connection
from another client, ``CLIENT UNPAUSE`` lets the server go on.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

import redis_harness as harness
from faults.proxy import ReplyDropProxy
from onceonly import CorruptRecordError, IdempotencyStoreError
from onceonly.records import Acquired, Found, Status, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore, scripts
from testkit import RedisFarm, finished_tasks_alive

LEASE = 60_000
TTL = 60_000


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def server(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[harness.Server]:
    """A server of its own: these tests pause it and kill its clients."""
    srv = harness.standalone(redis_engine, tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.stop()


def _kill_clients_named(admin: redis.Redis, name: str) -> int:
    """Kill every connection named ``name``; return how many held a command (flag ``b``)."""
    killed_holding = 0
    for client in admin.client_list():
        if client.get("name") == name:
            admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed_holding += "b" in client["flags"]
    return killed_holding


def _wait_held_by_pause(admin: redis.Redis, name: str) -> None:
    """Until the server has read a write command from the client ``name`` and holds it.

    Under ``CLIENT PAUSE WRITE`` a client whose write command the server has
    read is blocked (flag ``b`` in ``CLIENT LIST``): the command is on the wire
    and in the server, its reply not yet sent.
    """
    harness.wait_until(
        lambda: any(c.get("name") == name and "b" in c["flags"] for c in admin.client_list()),
        f"a write command of {name} held by the pause",
    )


def _writes(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {
        c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("set", "evalsha", "eval")
    }


# -- AsyncRedisStore: one connection per batch -----------------------------------------


def test_an_error_reply_in_the_middle_of_a_batch_fails_only_its_caller(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    sync = redis.Redis(host=harness.HOST, port=port)
    sync.hset(f"{prefix}:k5", "a", "b")  # a hash: WRONGTYPE inside the script

    async def main() -> list[Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port)
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            calls = [
                store.claim(
                    f"k{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                )
                for i in range(10)
            ]
            first = await asyncio.gather(*calls, return_exceptions=True)
            # The connection went back to the pool whole: the next batch uses it.
            again = await asyncio.gather(
                *(
                    store.claim(
                        f"j{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                    )
                    for i in range(3)
                )
            )
            return [*first, *again]
        finally:
            await client.aclose()

    answers = asyncio.run(main())
    assert isinstance(answers[5], CorruptRecordError)
    assert isinstance(answers[5].__cause__, redis.exceptions.ResponseError)
    assert all(a == Acquired(takeover=False) for i, a in enumerate(answers) if i != 5)
    sync.close()


def test_noscript_in_a_batch_is_answered_with_eval_for_those_calls(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    sync = redis.Redis(host=harness.HOST, port=port)
    token = new_token()
    setup = RedisStore(sync, prefix=prefix)
    setup.claim("done", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    setup.complete("done", token=token, outcome=b"j7", ttl_ms=TTL)
    # A live claim: only the claim script answers a claim that meets it.
    setup.claim("held", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    sync.script_flush()

    async def main() -> list[Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port, decode_responses=True)
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            return await asyncio.gather(
                store.claim("new", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None),
                store.claim(
                    "done", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                ),
                store.release("nothing", token=new_token()),
                store.claim(
                    "held", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                ),
            )
        finally:
            await client.aclose()

    new, done, released, held = asyncio.run(main())
    assert new == Acquired(takeover=False)
    assert isinstance(done, Found)
    assert done.record.status is Status.COMPLETED
    assert done.record.outcome == b"j7"
    assert released is True  # nothing to release: done (see the store protocol)
    assert isinstance(held, Found)
    assert held.record.status is Status.IN_PROGRESS
    assert 0 < held.record.deadline_ms - held.now_ms <= LEASE
    assert sync.script_exists(scripts.CLAIM.sha, scripts.RELEASE.sha) == [True, True]
    sync.close()


def test_a_client_with_another_encoding_packs_with_redis_py(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()

    async def main() -> tuple[Any, Any, Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port, encoding="latin-1")
        store = AsyncRedisStore(client, prefix=prefix)
        token = new_token()
        try:
            claimed = await store.claim(
                "clé", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            completed = await store.complete("clé", token=token, outcome=b"j1", ttl_ms=TTL)
            return claimed, completed, await store.get("clé")
        finally:
            await client.aclose()

    claimed, completed, record = asyncio.run(main())
    assert claimed == Acquired(takeover=False)
    assert completed is True
    assert record is not None
    assert record.outcome == b"j1"
    # UTF-8 on the wire whatever the client's encoding (issue 10 item 7): the
    # sync store, whose client packs with hiredis, names the same key.
    sync = redis.Redis(host=harness.HOST, port=port)
    assert sync.exists(f"{prefix}:clé".encode()) == 1
    sync.close()


async def _claims_one_cancelled_in_flight(
    store: AsyncRedisStore, admin: redis.Redis, name: str, count: int, cancelled: int
) -> list[Any]:
    """Claim ``count`` keys in one batch, cancel one caller while the server holds the batch.

    ``CLIENT PAUSE WRITE`` holds the batch in the server (in flight) until the
    cancel; the answers come back in the callers' order.
    """
    admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        claims = (
            store.claim(f"k{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
            for i in range(count)
        )
        tasks = [asyncio.ensure_future(claim) for claim in claims]
        await asyncio.to_thread(_wait_held_by_pause, admin, name)
        tasks[cancelled].cancel()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_a_caller_cancelled_while_its_batch_is_in_flight_leaves_the_others_their_answers(
    server: harness.Server, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    prefix = _prefix()
    admin = server.client()

    async def main() -> tuple[list[Any], bool, dict[str, int]]:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port, client_name=name)
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            await store.get("warm")  # connected
            before = _writes(admin)
            answers = await _claims_one_cancelled_in_flight(store, admin, name, 20, 7)
            # The connection is fine for the next batch.
            after = await store.claim(
                "after", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            sent = {c: n - before[c] for c, n in _writes(admin).items()}
            return answers, after == Acquired(takeover=False), sent
        finally:
            await client.aclose()

    try:
        with caplog.at_level("WARNING", logger="onceonly"):
            answers, after_ok, sent = asyncio.run(main())
        assert isinstance(answers[7], asyncio.CancelledError)
        assert all(a == Acquired(takeover=False) for i, a in enumerate(answers) if i != 7)
        assert after_ok
        # Every claim of the batch reached the server, the cancelled one's too;
        # its key is not left held for the lease: the store gave it back once
        # its reply came.
        assert sent["set"] == 20 + 1  # the batch's claims, then "after"
        assert sent["evalsha"] + sent["eval"] >= 1  # k7 given back
        assert admin.exists(f"{prefix}:k7") == 0
        assert admin.exists(f"{prefix}:k6") == 1
        assert caplog.records == []  # the give-back worked: nothing to warn of
    finally:
        admin.close()


def test_a_renew_cancelled_while_its_batch_is_in_flight_leaves_the_others_their_answers(
    server: harness.Server,
) -> None:
    # Only a claim has anything to give back: the other calls of a batch that
    # came back after their callers gave up are let go, and the batch goes on.
    name = f"batch-{uuid.uuid4().hex[:8]}"
    admin = server.client()

    async def main() -> tuple[list[Any], list[dict[str, Any]]]:
        unhandled = _loop_errors()
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port, client_name=name)
        store = AsyncRedisStore(client, prefix=_prefix())
        try:
            tokens = [new_token() for _ in range(6)]
            for i, token in enumerate(tokens):
                claimed = await store.claim(
                    f"k{i}", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                )
                assert claimed == Acquired(takeover=False)
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            try:
                tasks = [
                    asyncio.ensure_future(store.renew(f"k{i}", token=token, lease_ms=LEASE))
                    for i, token in enumerate(tokens)
                ]
                await asyncio.to_thread(_wait_held_by_pause, admin, name)
                tasks[2].cancel()
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            # Bounded: a batch that stopped at the cancelled call would leave the
            # callers after it waiting for ever.
            answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            return list(answers), _after_collection(unhandled)
        finally:
            await client.aclose()

    try:
        answers, unhandled = asyncio.run(main())
    finally:
        admin.close()
    assert isinstance(answers[2], asyncio.CancelledError)
    assert [a for i, a in enumerate(answers) if i != 2] == [True] * 5
    assert unhandled == []


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition()`` holds; fail after 10 s."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


def test_a_give_back_that_fails_is_logged_and_its_task_is_not_kept(
    server: harness.Server, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    admin = server.client()
    give_back_failed = "could not give back a claim whose caller was cancelled"

    def logged() -> bool:
        return any(give_back_failed in r.getMessage() for r in caplog.records)

    async def main(proxy: ReplyDropProxy) -> tuple[list[Any], int]:
        client = redis.asyncio.Redis(
            host=harness.HOST,
            port=proxy.port,
            client_name=name,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
        store = AsyncRedisStore(client, prefix=_prefix())
        try:
            await store.get("warm")  # connected
            # The claims are native SETs; the one script call is the give-back's
            # release: the server runs it, and its reply is lost with the connection.
            proxy.drop_replies(1, commands={"EVALSHA", "EVAL"})
            answers = await _claims_one_cancelled_in_flight(store, admin, name, 3, 1)
            await _until(lambda: proxy.dropped == 1, "the give-back's reply lost")
            await _until(logged, "the failed give-back logged")
            return answers, finished_tasks_alive("AsyncRedisStore.release")
        finally:
            await client.aclose()

    try:
        with ReplyDropProxy(server.port) as proxy, caplog.at_level("WARNING", logger="onceonly"):
            answers, kept = asyncio.run(main(proxy))
    finally:
        admin.close()
    assert isinstance(answers[1], asyncio.CancelledError)
    assert answers[0] == answers[2] == Acquired(takeover=False)
    assert kept == 0  # the failed give-back's task was let go once done


def test_a_claim_cancelled_before_its_batch_leaves_is_never_sent(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    admin = redis_farm.standalone(redis_engine).client()

    def writes() -> int:
        stats = admin.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("set", "evalsha"))

    async def main() -> tuple[int, int]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port)
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            await store.get("warm")  # connected: the next claim goes straight to the batcher
            before = writes()
            task = asyncio.ensure_future(
                store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
            )
            # One loop turn: the task submits its claim and the flush is queued
            # behind this coroutine; the cancel comes before the flush runs.
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await store.claim(
                "after", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            assert after == Acquired(takeover=False)
            return before, writes()
        finally:
            await client.aclose()

    before, after = asyncio.run(main())
    # Only the later claim reached the server (its SET, or its script).
    assert after - before == 1
    assert admin.exists(f"{prefix}:k") == 0
    admin.close()


def _loop_errors() -> list[dict[str, Any]]:
    """Note what reaches the running loop's exception handler (an error no one retrieved)."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


def _after_collection(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A task whose exception no one retrieved reports it when it is collected.
    gc.collect()
    return seen


def _paused_batch(
    server: harness.Server, *, retries: int
) -> tuple[list[Any], Any, int, list[dict[str, Any]]]:
    """Send a batch, kill its connection while the server holds it, then one more call.

    Returns the batch's answers, the later call's, how many killed
    connections held a command, and what reached the loop's exception handler.
    """
    name = f"victim-{uuid.uuid4().hex[:8]}"
    admin = server.client()
    prefix = _prefix()

    async def main() -> tuple[list[Any], Any, int, list[dict[str, Any]]]:
        unhandled = _loop_errors()
        client = redis.asyncio.Redis(
            host=harness.HOST,
            port=server.port,
            client_name=name,
            retry=redis.asyncio.retry.Retry(NoBackoff(), retries),
        )
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            await store.claim(
                "warm", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            try:
                batch = asyncio.gather(
                    *(
                        store.claim(
                            f"k{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                        )
                        for i in range(8)
                    ),
                    return_exceptions=True,
                )
                await asyncio.to_thread(_wait_held_by_pause, admin, name)
                killed = await asyncio.to_thread(_kill_clients_named, admin, name)
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            answers = await batch
            after = await store.claim(
                "after", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            return list(answers), after, killed, _after_collection(unhandled)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    finally:
        admin.close()


def test_a_batch_whose_connection_is_killed_fails_every_caller_and_the_next_works(
    server: harness.Server,
) -> None:
    answers, after, killed, unhandled = _paused_batch(server, retries=0)
    assert killed >= 1  # a connection was killed holding its command
    assert len(answers) == 8
    for answer in answers:
        assert isinstance(answer, IdempotencyStoreError)
        assert isinstance(answer.__cause__, redis.exceptions.ConnectionError)
        assert "cannot reach Redis" in str(answer)
    assert after == Acquired(takeover=False)  # a fresh connection
    # The callers heard of the error; the batch's own task did not raise it again.
    assert unhandled == []


def test_a_killed_batch_is_sent_again_under_the_clients_retry_policy(
    server: harness.Server,
) -> None:
    answers, after, killed, unhandled = _paused_batch(server, retries=3)
    assert killed >= 1  # a connection was killed holding its command
    # Resent on a new connection: each claim (same token) is Acquired, as the
    # scripts answer a retried claim.
    assert answers == [Acquired(takeover=False)] * 8
    assert after == Acquired(takeover=False)
    assert unhandled == []


def test_a_batch_past_the_socket_timeout_fails_every_caller_and_the_next_works(
    server: harness.Server,
) -> None:
    admin = server.client()

    async def main() -> tuple[list[Any], Any, list[dict[str, Any]]]:
        unhandled = _loop_errors()
        client = redis.asyncio.Redis(
            host=harness.HOST,
            port=server.port,
            socket_timeout=0.5,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
        store = AsyncRedisStore(client, prefix=_prefix())
        try:
            await store.claim(
                "warm", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            try:
                answers = await asyncio.gather(
                    *(
                        store.claim(
                            f"k{i}", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                        )
                        for i in range(8)
                    ),
                    return_exceptions=True,
                )
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            after = await store.claim(
                "after", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
            )
            return answers, after, _after_collection(unhandled)
        finally:
            await client.aclose()

    try:
        answers, after, unhandled = asyncio.run(main())
    finally:
        admin.close()
    for answer in answers:
        assert isinstance(answer, IdempotencyStoreError)
        assert isinstance(answer.__cause__, redis.exceptions.TimeoutError)
        assert "cannot reach Redis" in str(answer)
        assert f"Timeout reading from {harness.HOST}" in str(answer)  # names the server
    assert after == Acquired(takeover=False)  # not the stale replies of the timed-out batch
    assert unhandled == []  # the batch's task did not raise the error again


# -- RedisStore: single calls straight on a pooled connection ----------------------------


def test_a_single_call_uses_one_pooled_connection_and_returns_it(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    client = redis.Redis(host=harness.HOST, port=port)
    store = RedisStore(client, prefix=_prefix())
    assert store._direct
    token = new_token()
    for i in range(50):
        store.claim(f"k{i}", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    pool = client.connection_pool
    assert len(pool._in_use_connections) == 0
    assert len(pool._available_connections) == 1
    client.close()


def test_an_error_reply_on_the_direct_path_is_that_calls_error_only(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    client = redis.Redis(host=harness.HOST, port=port)
    client.hset(f"{prefix}:hash", "a", "b")
    store = RedisStore(client, prefix=prefix)
    with pytest.raises(CorruptRecordError) as caught:
        store.claim("hash", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    # The same connection answers the next call.
    assert store.claim(
        "fine", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
    ) == Acquired(takeover=False)
    assert len(client.connection_pool._available_connections) == 1
    client.close()


def _sync_killed_mid_call(server: harness.Server, *, retries: int) -> tuple[Any, Any]:
    name = f"victim-{uuid.uuid4().hex[:8]}"
    admin = server.client()
    client = server.client(client_name=name, retry=redis.retry.Retry(NoBackoff(), retries))
    store = RedisStore(client, prefix=_prefix())
    store.claim("warm", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(
                store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
            )
        except Exception as exc:
            outcome.append(exc)

    admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        worker = threading.Thread(target=call)
        worker.start()
        _wait_held_by_pause(admin, name)
        assert _kill_clients_named(admin, name) >= 1
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    worker.join(30)
    after = store.claim("after", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    client.close()
    admin.close()
    return outcome[0], after


def test_a_direct_call_whose_connection_dies_is_sent_again_under_the_retry_policy(
    server: harness.Server,
) -> None:
    answer, after = _sync_killed_mid_call(server, retries=3)
    assert answer == Acquired(takeover=False)  # sent again on a new connection
    assert after == Acquired(takeover=False)


def test_a_direct_call_whose_connection_dies_fails_closed_without_retries(
    server: harness.Server,
) -> None:
    answer, after = _sync_killed_mid_call(server, retries=0)
    assert isinstance(answer, IdempotencyStoreError)
    assert "cannot reach Redis" in str(answer)
    assert after == Acquired(takeover=False)


def test_the_direct_path_is_off_where_the_client_path_is_needed(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    single = redis.Redis(host=harness.HOST, port=port, single_connection_client=True)
    assert not RedisStore(single, prefix=_prefix())._direct
    single.close()
    cluster = redis_farm.cluster(redis_engine).client()
    assert not RedisStore(cluster, prefix=_prefix())._direct
    cluster.close()
