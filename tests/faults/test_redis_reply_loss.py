"""Lost replies and a restarted server, with the clients ``from_url`` builds.

The server runs a script call and its reply never arrives (the proxy in
``proxy.py`` closes the connection in its place), or the server restarts
between the claim and the complete. Each of the four scripts is safe to send
again under the same token, so the store's own client sends it again on a new
connection: the claim comes back Acquired (not "in progress" for the whole
lease), the function runs once, and its outcome is stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy import ReplyDropProxy

import redis_harness as harness
from onceonly import IdempotencyConfig, idempotent_function
from onceonly.records import Acquired, Status, encode_outcome, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from testkit import RedisFarm

# The writes whose replies are dropped: the scripts, and the claim's native SET.
SCRIPTS = {"EVALSHA", "EVAL", "SET"}


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[ReplyDropProxy]:
    """A reply-dropping proxy in front of the engine's shared standalone server."""
    with ReplyDropProxy(redis_farm.standalone(redis_engine).port) as p:
        yield p


def _status(server: harness.Server, prefix: str, key: str) -> str:
    raw = server.client().get(f"{prefix}:{key}")
    assert raw is not None
    return {b"P": "IN_PROGRESS", b"C": "COMPLETED"}[raw[3:4]]


# -- the sync store ----------------------------------------------------------------------


def test_sync_from_url_retries_a_lost_claim_reply_and_a_lost_complete_reply(
    proxy: ReplyDropProxy, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    prefix = _prefix()
    store = RedisStore.from_url(proxy.url(), prefix=prefix)
    runs: list[str] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def charge(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        proxy.drop_replies(1, commands=SCRIPTS)  # the complete's reply is lost too
        return f"charged {order['id']}"

    proxy.drop_replies(1, commands=SCRIPTS)  # the claim's reply is lost
    assert charge({"id": "a"}) == "charged a"
    assert proxy.dropped == 2
    assert runs == ["a"]
    key = charge.key_for({"id": "a"})  # type: ignore[attr-defined]
    assert _status(redis_farm.standalone(redis_engine), prefix, key) == "COMPLETED"
    assert charge({"id": "a"}) == "charged a"  # a replay
    assert runs == ["a"]


def test_sync_from_url_a_lost_claim_reply_comes_back_acquired_under_the_same_token(
    proxy: ReplyDropProxy,
) -> None:
    store = RedisStore.from_url(proxy.url(), prefix=_prefix())
    token = new_token()
    proxy.drop_replies(1, commands=SCRIPTS)
    assert store.claim("k", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None) == (
        Acquired(takeover=False)
    )
    assert proxy.dropped == 1
    proxy.drop_replies(1, commands=SCRIPTS)
    assert store.complete("k", token=token, outcome=encode_outcome(1), ttl_ms=60_000) is True
    record = store.get("k")
    assert record is not None
    assert record.status is Status.COMPLETED
    # release and renew, each with its reply lost, are answered too (never raised).
    other = new_token()
    assert isinstance(
        store.claim("k2", token=other, lease_ms=60_000, ttl_ms=60_000, fingerprint=None), Acquired
    )
    proxy.drop_replies(1, commands=SCRIPTS)
    assert store.renew("k2", token=other, lease_ms=60_000) is True
    proxy.drop_replies(1, commands=SCRIPTS)
    # The first release deleted the key; the repeat finds nothing left to
    # release, which is what it asked for: True, no lost lease.
    assert store.release("k2", token=other) is True
    assert store.get("k2") is None
    assert proxy.dropped == 4


def test_a_retried_claim_whose_set_reply_was_lost_is_acquired_and_runs_once(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    prefix = _prefix()
    with ReplyDropProxy(server.port) as proxy:
        store = RedisStore.from_url(proxy.url(), prefix=prefix)
        runs: list[str] = []

        @idempotent_function(
            store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
        )
        def charge(order: dict[str, Any]) -> str:
            runs.append(order["id"])
            return f"charged {order['id']}"

        token = new_token()
        proxy.drop_replies(1, commands={"SET"})
        # The SET took the key; its reply was lost; the client sent it again,
        # met its own claim, and the claim script answered Acquired.
        claimed = store.claim("k", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        assert claimed == Acquired(takeover=False)
        assert proxy.dropped == 1
        raw = server.client().get(f"{prefix}:k")
        assert raw is not None
        assert raw.startswith(f"o1|P|{token}|".encode())  # the script wrote it again

        proxy.drop_replies(1, commands={"SET"})
        assert charge({"id": "a"}) == "charged a"
        assert charge({"id": "a"}) == "charged a"
        assert runs == ["a"]
        assert proxy.dropped == 2
        key = charge.key_for({"id": "a"})  # type: ignore[attr-defined]
        assert server.client().get(f"{prefix}:{key}").startswith(b"o1|C|")  # type: ignore[union-attr]


# -- the asyncio store --------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "unpipelined"])
def test_async_from_url_retries_a_lost_claim_reply_and_a_lost_complete_reply(
    pipelining: bool,
    proxy: ReplyDropProxy,
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
) -> None:
    prefix = _prefix()
    runs: list[str] = []

    async def main() -> None:
        store = AsyncRedisStore.from_url(proxy.url(), prefix=prefix, pipelining=pipelining)

        @idempotent_function(
            store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
        )
        async def charge(order: dict[str, Any]) -> str:
            runs.append(order["id"])
            proxy.drop_replies(1, commands=SCRIPTS)
            return f"charged {order['id']}"

        try:
            proxy.drop_replies(1, commands=SCRIPTS)
            assert await charge({"id": "a"}) == "charged a"
            assert proxy.dropped == 2
            key = charge.key_for({"id": "a"})  # type: ignore[attr-defined]
            assert _status(redis_farm.standalone(redis_engine), prefix, key) == "COMPLETED"
            assert await charge({"id": "a"}) == "charged a"
            # Many calls in one pipeline, the reply of one of them lost: the
            # whole batch goes again on a new connection, each answered once.
            proxy.drop_replies(1, commands=SCRIPTS)
            orders = [{"id": f"b{i}"} for i in range(20)]
            results = await asyncio.gather(*(charge(o) for o in orders))
            assert results == [f"charged b{i}" for i in range(20)]
        finally:
            await store.aclose()

    asyncio.run(main())
    assert sorted(runs) == sorted(["a"] + [f"b{i}" for i in range(20)])


# -- a server restart between the claim and the complete -----------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_from_url_keeps_the_outcome_when_the_server_restarts_between_claim_and_complete(
    is_async: bool, redis_engine: harness.Engine, tmp_path: Path
) -> None:
    # appendfsync always: the claim is on disk before the restart.
    server = harness.standalone(redis_engine, tmp_path / "srv", extra=["appendfsync always"])
    url = f"redis://{harness.HOST}:{server.port}/0"
    prefix = _prefix()
    runs: list[str] = []
    config = IdempotencyConfig(event_key_jmespath="id")
    try:
        if is_async:

            async def main() -> list[str]:
                store = AsyncRedisStore.from_url(url, prefix=prefix)

                @idempotent_function(store=store, data="order", config=config)
                async def charge(order: dict[str, Any]) -> str:
                    runs.append(order["id"])
                    server.stop()  # SIGTERM: the server writes its AOF and exits
                    server.start()  # same port and folder: the pooled connection is stale
                    return f"charged {order['id']}"

                try:
                    first = await charge({"id": "a"})
                    key = charge.key_for({"id": "a"})  # type: ignore[attr-defined]
                    status = _status(server, prefix, key)
                    return [first, status, await charge({"id": "a"})]
                finally:
                    await store.aclose()

            answers = asyncio.run(main())
        else:
            store = RedisStore.from_url(url, prefix=prefix)

            @idempotent_function(store=store, data="order", config=config)
            def charge(order: dict[str, Any]) -> str:
                runs.append(order["id"])
                server.stop()
                server.start()
                return f"charged {order['id']}"

            first = charge({"id": "a"})
            key = charge.key_for({"id": "a"})  # type: ignore[attr-defined]
            answers = [first, _status(server, prefix, key), charge({"id": "a"})]
        assert answers == ["charged a", "COMPLETED", "charged a"]
        assert runs == ["a"]
    finally:
        server.stop()
