"""The Redis stores whatever the client's encoding, and ACL refusals that say what to grant.

A store sends its arguments as UTF-8 bytes and reads its replies undecoded,
so a client made with ``decode_responses=True`` and any ``encoding`` (or an
``encoding`` that is not UTF-8 without it) replays exactly what was stored:
on the sync direct path, through ``client.evalsha`` (a single-connection
client), in a batch's pipeline, through the async batcher and the async
client's own call, and in ``get``.

An ACL user that lacks a command the store sends, or one a script calls
(``TIME``, ``SET``...), or the key pattern, gets ``IdempotencyStoreError``
that says "ACL", repeats the server's words (which name the command where
the server does) and lists what the user needs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import redis_harness as harness
from onceonly import IdempotencyStoreError, idempotent_function
from onceonly.records import Acquired, Found, Status, new_token
from onceonly.stores.protocol import ClaimCall, CompleteCall
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from onceonly.stores.redis.common import ACL_COMMANDS
from testkit import RedisFarm

RESULT = {"name": "Zoë", "city": "日本", "bytes": "\x00\xff"}
LEASE = 60_000
TTL = 60_000
_CLAIM: dict[str, Any] = {"lease_ms": LEASE, "ttl_ms": TTL, "fingerprint": None}


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# -- encodings ---------------------------------------------------------------------------------

ENCODINGS = [
    pytest.param({"decode_responses": True, "encoding": "latin-1"}, id="decoded-latin-1"),
    pytest.param({"decode_responses": True, "encoding": "cp1252"}, id="decoded-cp1252"),
    pytest.param({"decode_responses": True, "encoding": "utf-8"}, id="decoded-utf-8"),
    pytest.param({"decode_responses": False, "encoding": "utf-16"}, id="raw-utf-16"),
    pytest.param({"decode_responses": False, "encoding": "latin-1"}, id="raw-latin-1"),
]


@pytest.mark.parametrize("options", ENCODINGS)
@pytest.mark.parametrize("single", [False, True], ids=["pooled", "single-connection"])
def test_the_sync_store_replays_exactly_whatever_the_clients_encoding(
    redis_farm: RedisFarm, redis_engine: harness.Engine, options: dict[str, Any], single: bool
) -> None:
    server = redis_farm.standalone(redis_engine)
    client = server.client(single_connection_client=single, **options)
    try:
        store = RedisStore(client, prefix=_prefix())
        runs: list[int] = []

        @idempotent_function(store=store, data="order")
        def process(order: dict[str, Any]) -> dict[str, Any]:
            runs.append(order["id"])
            return RESULT

        assert process({"id": 1}) == RESULT
        assert process({"id": 1}) == RESULT  # the replay
        assert runs == [1]
        record = store.get(process.key_for({"id": 1}))
        assert record is not None
        assert record.status is Status.COMPLETED

        # A batch's pipeline: many claims and completes in one round trip each.
        tokens = [new_token() for _ in range(3)]
        keys = [f"batch:{i}" for i in range(3)]
        claims = store.claim_many(
            [ClaimCall(k, t, LEASE, TTL, None) for k, t in zip(keys, tokens, strict=True)]
        )
        assert claims == [Acquired()] * 3
        outcome = "Zoë 日本".encode()
        assert (
            store.complete_many(
                [CompleteCall(k, t, outcome, TTL) for k, t in zip(keys, tokens, strict=True)]
            )
            == [True] * 3
        )
        for key in keys:
            got = store.get(key)
            assert got is not None
            assert got.outcome == outcome
    finally:
        client.close()


@pytest.mark.parametrize("options", ENCODINGS)
@pytest.mark.parametrize("pipelining", [True, False], ids=["batched", "one-by-one"])
def test_the_async_store_replays_exactly_whatever_the_clients_encoding(
    redis_farm: RedisFarm, redis_engine: harness.Engine, options: dict[str, Any], pipelining: bool
) -> None:
    server = redis_farm.standalone(redis_engine)

    async def main() -> None:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port, **options)
        try:
            store = AsyncRedisStore(client, prefix=_prefix(), pipelining=pipelining)
            runs: list[int] = []

            @idempotent_function(store=store, data="order")
            async def process(order: dict[str, Any]) -> dict[str, Any]:
                runs.append(order["id"])
                return RESULT

            # Different keys in one loop turn share the batcher's round trip.
            assert await asyncio.gather(*(process({"id": i}) for i in range(3))) == [RESULT] * 3
            assert await asyncio.gather(*(process({"id": i}) for i in range(3))) == [RESULT] * 3
            assert sorted(runs) == [0, 1, 2]
            record = await store.get(process.key_for({"id": 1}))
            assert record is not None
            assert record.status is Status.COMPLETED
        finally:
            await client.aclose()

    asyncio.run(main())


# -- ACL -----------------------------------------------------------------------------------

# Each user lacks one thing the store needs; the default user keeps everything.
ACL_USERS = {
    # The scripts call TIME (the server's clock): refused inside the script.
    "no-time": "~{p}:* +evalsha +eval +get +set +del +pttl",
    # SET: the native claim (and inside the scripts).
    "no-set": "~{p}:* +evalsha +eval +get +del +time +pttl",
    # The store's own command.
    "no-evalsha": "~{p}:* +get +set +del +time +pttl",
    # No key pattern at all.
    "no-keys": "+evalsha +eval +get +set +del +time +pttl",
    # PTTL: a claim script that answers with a natively written claim.
    "no-pttl": "~{p}:* +evalsha +eval +get +set +del +time",
}
# What the server's words name, where it names the command (Redis 7 says only
# that "the user executing the script can't run this command").
NAMED = {"no-time": "time", "no-set": "set", "no-evalsha": "evalsha", "no-pttl": "pttl"}
# The claim is a native SET (no script, no TIME); the first call that needs what
# a user lacks: a claim for SET and the key pattern, a second claim that meets
# the first one's live record (the claim script: EVALSHA, TIME, and PTTL to say
# the natively written record's deadline) for the others.
REFUSED_AT = {
    "no-time": "second claim",
    "no-set": "claim",
    "no-evalsha": "second claim",
    "no-keys": "claim",
    "no-pttl": "second claim",
}


def _first_refusal(store: RedisStore, key: str) -> tuple[str, IdempotencyStoreError]:
    """Claim, claim again under another token, complete: which step was refused, and how."""
    token = new_token()
    steps = [
        ("claim", lambda: store.claim(key, token=token, **_CLAIM)),
        ("second claim", lambda: store.claim(key, token=new_token(), **_CLAIM)),
        ("complete", lambda: store.complete(key, token=token, outcome=b"j1", ttl_ms=TTL)),
    ]
    for name, step in steps:
        try:
            step()
        except IdempotencyStoreError as exc:
            return name, exc
    raise AssertionError("no step was refused")


async def _first_refusal_async(
    store: AsyncRedisStore, key: str
) -> tuple[str, IdempotencyStoreError]:
    """As _first_refusal, on the async store."""
    token = new_token()
    steps = [
        ("claim", lambda: store.claim(key, token=token, **_CLAIM)),
        ("second claim", lambda: store.claim(key, token=new_token(), **_CLAIM)),
        ("complete", lambda: store.complete(key, token=token, outcome=b"j1", ttl_ms=TTL)),
    ]
    for name, step in steps:
        try:
            await step()
        except IdempotencyStoreError as exc:
            return name, exc
    raise AssertionError("no step was refused")


@pytest.fixture
def acl_server(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A server of its own with the users above, all on the key prefix it yields."""
    prefix = _prefix()
    rules = [
        f"user {name} on >pw-{name} resetchannels -@all {rule.format(p=prefix)}"
        for name, rule in ACL_USERS.items()
    ]
    server = harness.standalone(
        redis_engine, tmp_path / "acl", extra=["user default on nopass ~* &* +@all", *rules]
    )
    try:
        yield server.port, prefix
    finally:
        server.stop()


def _check_acl_error(error: IdempotencyStoreError, user: str) -> None:
    text = str(error)
    assert "ACL" in text
    if user in NAMED and "can't run this command" not in text:
        assert f"'{NAMED[user]}'" in text.lower()
    for command in ACL_COMMANDS:
        assert f"+{command.lower()}" in text
    assert "~" in text  # the key pattern
    assert "pw-" not in text


@pytest.mark.parametrize("user", list(ACL_USERS))
def test_a_refused_command_says_acl_and_lists_what_the_user_needs(
    acl_server: tuple[int, str], user: str
) -> None:
    port, prefix = acl_server
    client = redis.Redis(host=harness.HOST, port=port, username=user, password=f"pw-{user}")
    try:
        store = RedisStore(client, prefix=prefix)
        step, error = _first_refusal(store, "k")
        assert step == REFUSED_AT[user]
        _check_acl_error(error, user)
        assert isinstance(error.__cause__, redis.exceptions.ResponseError)
        # A batch's pipeline hands each key its own error, the same one.
        token = new_token()
        (answer,) = store.claim_many([ClaimCall("k2", token, LEASE, TTL, None)])
        if step == "second claim":
            (answer,) = store.claim_many([ClaimCall("k2", new_token(), LEASE, TTL, None)])
        elif step == "complete":
            (answer,) = store.complete_many([CompleteCall("k2", token, b"j1", TTL)])
        assert isinstance(answer, IdempotencyStoreError)
        _check_acl_error(answer, user)
    finally:
        client.close()


@pytest.mark.parametrize("user", list(ACL_USERS))
@pytest.mark.parametrize("pipelining", [True, False], ids=["batched", "one-by-one"])
def test_the_async_store_says_acl_too(
    acl_server: tuple[int, str], user: str, pipelining: bool
) -> None:
    port, prefix = acl_server

    async def main() -> None:
        client = redis.asyncio.Redis(
            host=harness.HOST, port=port, username=user, password=f"pw-{user}"
        )
        try:
            store = AsyncRedisStore(client, prefix=prefix, pipelining=pipelining)
            step, error = await _first_refusal_async(store, "k")
            assert step == REFUSED_AT[user]
            _check_acl_error(error, user)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_keys_are_utf_8_from_the_sync_and_the_async_store_whatever_the_encoding(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    # redis-py itself packs text with the client's encoding on some paths and
    # as UTF-8 on others (hiredis): the store sends UTF-8, so the sync and the
    # async store name one Redis key for one idempotency key.
    server = redis_farm.standalone(redis_engine)
    prefix = _prefix()
    client = server.client(decode_responses=True, encoding="latin-1")
    raw = server.client()
    try:
        token = new_token()
        sync = RedisStore(client, prefix=prefix)
        assert sync.claim("clé", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
            Acquired()
        )
        assert raw.exists(f"{prefix}:clé".encode()) == 1

        async def main() -> Any:
            aclient = redis.asyncio.Redis(
                host=harness.HOST, port=server.port, decode_responses=True, encoding="latin-1"
            )
            try:
                store = AsyncRedisStore(aclient, prefix=prefix)
                # The async store finds the sync store's claim: the same key.
                return await store.claim(
                    "clé", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                )
            finally:
                await aclient.aclose()

        found = asyncio.run(main())
        assert isinstance(found, Found)
        assert found.record.token == token
        # A key latin-1 cannot encode is no trouble either.
        assert sync.claim("日本", token=token, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
            Acquired()
        )
        assert raw.exists(f"{prefix}:日本".encode()) == 1
    finally:
        client.close()
        raw.close()
