"""The native claim: ``SET key record NX PX lease GET`` instead of the claim script.

By the server's time (no ``clock=``) a claim is one native SET: it takes an
absent key, or answers a completed record, and runs no script. A live claim,
a value Powertools wrote or a corrupt value goes on to the claim script,
which answers as it always did. The record a native SET writes carries the
key-expiry deadline marker; whoever reads it (another claimer, ``get``,
``onceonly inspect``) sees the real deadline. Commands are counted with the
server's commandstats, on Redis 7 and Valkey 8, standalone, cluster and
Sentinel; the fallback runs on a real Redis 6.2, which refuses NX with GET.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import redis_harness as harness
from onceonly import CorruptRecordError, IdempotencyConfig, idempotent_function
from onceonly.cli import main
from onceonly.records import Acquired, Found, Record, Status, encode_outcome, new_token
from onceonly.stores.protocol import ClaimCall
from onceonly.stores.redis import AsyncRedisStore, RedisStore, scripts
from onceonly.stores.redis.common import time_ms
from testkit import ManualClock, RedisFarm

LEASE = 60_000
TTL = 60_000
MARKER = b"|9999999999999999|"  # the key-expiry deadline, as stored
COUNTED = ("set", "evalsha", "eval", "get", "pttl", "time", "wait", "waitaof", "exec")


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _claim(store: RedisStore, key: str, token: str, lease_ms: int = LEASE) -> Any:
    return store.claim(key, token=token, lease_ms=lease_ms, ttl_ms=TTL, fingerprint=None)


class Bracket:
    """Server times read around something the server did (by one client's TIME).

    A read of a native claim derives its deadline as the server's TIME plus the
    key's PTTL, and Redis counts PTTL from the instant its command (or MULTI,
    or script) began: the derived deadline is the key's expiry plus however
    long the server took between that instant and TIME, never less (to a ms of
    rounding). So a deadline is checked against the expiry and the server time
    the read spanned, which no scheduling delay can break, not a fixed margin.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def __enter__(self) -> Bracket:
        self.start = time_ms(self.client.time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = time_ms(self.client.time())

    @property
    def span(self) -> int:
        return self.end - self.start


def _expiry(claim: Bracket, lease_ms: int) -> tuple[int, int]:
    """Where the absolute expiry of a key claimed inside ``claim`` lies."""
    return claim.start + lease_ms - 1, claim.end + lease_ms + 1


def _read_at_expiry(deadline_ms: int, expiry: tuple[int, int], read: Bracket) -> bool:
    """Whether a deadline read inside ``read`` is the key's expiry (see Bracket)."""
    return expiry[0] - 1 <= deadline_ms <= expiry[1] + read.span + 1


def _calls(*servers: harness.Server) -> collections.Counter[str]:
    """Commands run since the last CONFIG RESETSTAT (scripts' inner calls included)."""
    counts: collections.Counter[str] = collections.Counter()
    for server in servers:
        with server.client() as c:
            for name, value in c.info("commandstats").items():
                short = name.removeprefix("cmdstat_")
                if short in COUNTED:
                    counts[short] += int(value["calls"])
    return counts


def _reset(*servers: harness.Server) -> None:
    for server in servers:
        with server.client() as c:
            c.config_resetstat()


def _warm(store: RedisStore) -> None:
    """Load the scripts, so that counted calls never meet NOSCRIPT."""
    key, tok = f"warm:{uuid.uuid4().hex}", new_token()
    store.renew(key, token=tok, lease_ms=LEASE)
    store.release(key, token=tok)
    store.complete(key, token=tok, outcome=b"j1", ttl_ms=TTL)
    _claim(RedisStore(store.client, prefix=store.prefix, clock=ManualClock()), key, tok)


# -- on the wire ---------------------------------------------------------------------


def test_a_first_execution_is_a_native_set_and_a_complete_script_a_duplicate_one_set(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    store = RedisStore(server.client(), prefix=_prefix())
    runs: list[str] = []

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(lease_seconds=10))
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(order["id"])
        return {"charged": order["id"]}

    _warm(store)
    _reset(server)
    assert charge({"id": "a"}) == {"charged": "a"}
    # The claim's SET; the complete script with the GET, TIME and SET it runs.
    assert _calls(server) == {"set": 2, "evalsha": 1, "get": 1, "time": 1}

    _reset(server)
    assert charge({"id": "a"}) == {"charged": "a"}
    assert _calls(server) == {"set": 1}  # one round trip, no script
    assert runs == ["a"]


def test_a_duplicate_in_a_cluster_and_through_sentinel_is_one_set(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    cluster = redis_farm.cluster(redis_engine)
    sentinels = redis_farm.sentinel(redis_engine)
    sentinel_client = redis.sentinel.Sentinel(sentinels.addresses(), socket_timeout=5).master_for(
        harness.SERVICE, socket_timeout=5
    )
    for client, servers in (
        (cluster.client(), cluster.primaries()),  # replicas count the SETs they copy
        (sentinel_client, [sentinels.primary]),
    ):
        store = RedisStore(client, prefix=_prefix())
        tok = new_token()
        _reset(*servers)
        assert _claim(store, "k", tok) == Acquired(takeover=False)
        assert _calls(*servers) == {"set": 1}
        assert store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL) is True
        _reset(*servers)
        found = _claim(store, "k", new_token())
        assert isinstance(found, Found)
        assert (found.record.status, found.record.outcome) == (Status.COMPLETED, b"j1")
        assert _calls(*servers) == {"set": 1}
        client.close()


def test_the_async_store_claims_natively_in_a_loop_turns_pipeline_without_scripts(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    prefix = _prefix()
    done = new_token()
    sync = RedisStore(server.client(), prefix=prefix)
    _claim(sync, "done", done)
    sync.complete("done", token=done, outcome=b"j7", ttl_ms=TTL)

    async def main() -> list[Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        store = AsyncRedisStore(client, prefix=prefix)
        try:
            _reset(server)
            return await asyncio.gather(
                *(
                    store.claim(k, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
                    for k in ["done", *(f"new{i}" for i in range(9))]
                )
            )
        finally:
            await client.aclose()

    answers = asyncio.run(main())
    assert _calls(server) == {"set": 10}  # no script, no TIME
    assert isinstance(answers[0], Found)
    assert answers[0].record.outcome == b"j7"
    assert answers[1:] == [Acquired(takeover=False)] * 9
    with server.client() as c:
        assert all(c.get(f"{prefix}:new{i}").count(MARKER) == 1 for i in range(9))


def test_a_clock_injected_store_never_sends_the_native_set(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    clock = ManualClock(1_800_000_000_000)
    store = RedisStore(server.client(), prefix=_prefix(), clock=clock)
    _warm(store)
    _reset(server)
    tok = new_token()
    assert _claim(store, "k", tok) == Acquired(takeover=False)
    store.claim_many([ClaimCall("k2", new_token(), LEASE, TTL, None)])
    # Two claim scripts, each with its inner GET and SET; nothing native.
    assert _calls(server) == {"evalsha": 2, "get": 2, "set": 2}
    raw = server.client().get(f"{store.prefix}:k")
    assert raw == f"o1|P|{tok}|{clock() + LEASE}||".encode()


# -- what the others see -------------------------------------------------------------


def test_a_native_claim_is_seen_in_progress_with_its_time_left(
    redis_engine: harness.Engine, redis_farm: RedisFarm, capsys: pytest.CaptureFixture[str]
) -> None:
    server = redis_farm.standalone(redis_engine)
    client = server.client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    tok = new_token()
    with Bracket(client) as claimed:
        assert store.claim("k", token=tok, lease_ms=30_000, ttl_ms=TTL, fingerprint="ab") == (
            Acquired(takeover=False)
        )
    expiry = _expiry(claimed, 30_000)
    raw = client.get(f"{prefix}:k")
    assert raw == f"o1|P|{tok}|9999999999999999|ab|".encode()
    assert 29_000 < client.pttl(f"{prefix}:k") <= 30_000

    # Another claimer: the claim script answers with the real deadline.
    with Bracket(client) as read:
        found = _claim(store, "k", new_token())
    assert isinstance(found, Found)
    assert (found.record.status, found.record.token, found.record.fingerprint) == (
        Status.IN_PROGRESS,
        tok,
        "ab",
    )
    assert 29_000 < found.record.deadline_ms - found.now_ms <= 30_000
    assert _read_at_expiry(found.record.deadline_ms, expiry, read)

    # get: the same deadline (the key's expiry), by the server's clock.
    with Bracket(client) as read:
        record = store.get("k")
    assert record is not None
    assert (record.status, record.token, record.fingerprint) == (Status.IN_PROGRESS, tok, "ab")
    assert _read_at_expiry(record.deadline_ms, expiry, read)
    assert record.deadline_ms - time_ms(client.time()) > 20_000

    # onceonly inspect, through the store's get.
    url = f"redis://127.0.0.1:{server.port}"
    with Bracket(client) as read:
        assert main(["inspect", "--store", url, "--prefix", prefix, "k"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "IN_PROGRESS"
    assert _read_at_expiry(shown["deadline_ms"], expiry, read)
    assert not shown["time_left"].startswith("none")

    # The async store's get too.
    async def aget() -> Record | None:
        aclient = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        try:
            return await AsyncRedisStore(aclient, prefix=prefix).get("k")
        finally:
            await aclient.aclose()

    with Bracket(client) as read:
        seen = asyncio.run(aget())
    assert seen is not None
    assert _read_at_expiry(seen.deadline_ms, expiry, read)
    assert raw == client.get(f"{prefix}:k")  # reading changed nothing
    client.close()


def test_a_native_claim_in_a_cluster_is_read_with_its_real_deadline(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    cluster = redis_farm.cluster(redis_engine)
    client = cluster.client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    tok = new_token()
    with Bracket(client) as claimed:
        _claim(store, "k", tok, lease_ms=30_000)
    expiry = _expiry(claimed, 30_000)
    with Bracket(client) as read:
        found = _claim(store, "k", new_token())
    assert isinstance(found, Found)
    assert 20_000 < found.record.deadline_ms - found.now_ms <= 30_000
    assert _read_at_expiry(found.record.deadline_ms, expiry, read)
    with Bracket(client) as read:
        record = store.get("k")
    assert record is not None
    assert _read_at_expiry(record.deadline_ms, expiry, read)

    async def aget() -> Record | None:
        aclient = redis.asyncio.RedisCluster(host=harness.HOST, port=cluster.nodes[0].port)
        try:
            return await AsyncRedisStore(aclient, prefix=prefix).get("k")
        finally:
            await aclient.aclose()

    with Bracket(client) as read:
        seen = asyncio.run(aget())
    assert seen is not None
    assert _read_at_expiry(seen.deadline_ms, expiry, read)
    client.close()


def test_renew_complete_and_release_read_a_native_claim(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    tok, other = new_token(), new_token()
    _claim(store, "k", tok, lease_ms=5_000)
    assert client.get(f"{prefix}:k").count(MARKER) == 1  # type: ignore[union-attr]

    # Another token holds nothing here: each write is refused and changes nothing.
    assert store.renew("k", token=other, lease_ms=LEASE) is False
    assert store.complete("k", token=other, outcome=b"j1", ttl_ms=TTL) is False
    assert store.release("k", token=other) is False
    assert client.get(f"{prefix}:k").count(MARKER) == 1  # type: ignore[union-attr]

    # renew writes a real deadline: the server's now + the new lease.
    assert store.renew("k", token=tok, lease_ms=LEASE) is True
    raw = client.get(f"{prefix}:k")
    assert raw is not None
    assert MARKER not in raw
    deadline = int(raw.split(b"|")[3])
    assert 50_000 < deadline - time_ms(client.time()) <= LEASE
    assert 50_000 < client.pttl(f"{prefix}:k") <= LEASE

    # complete on a native claim (never renewed): a COMPLETED record, real deadline.
    _claim(store, "c", tok)
    assert store.complete("c", token=tok, outcome=b"j1", ttl_ms=120_000) is True
    done = store.get("c")
    assert done is not None
    assert (done.status, done.outcome) == (Status.COMPLETED, b"j1")
    assert 110_000 < done.deadline_ms - time_ms(client.time()) <= 120_000

    # release of a native claim drops it.
    _claim(store, "r", tok)
    assert store.release("r", token=tok) is True
    assert client.exists(f"{prefix}:r") == 0
    client.close()


def test_after_the_lease_the_key_is_taken_again(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    first, second = new_token(), new_token()
    assert _claim(store, "k", first, lease_ms=200) == Acquired(takeover=False)
    harness.wait_until(lambda: client.exists(f"{prefix}:k") == 0, "the lease to end", 10)
    # Redis dropped the ended claim: the key is absent, as the script says too.
    assert _claim(store, "k", second) == Acquired(takeover=False)
    assert client.get(f"{prefix}:k") == f"o1|P|{second}|9999999999999999||".encode()
    assert store.complete("k", token=first, outcome=b"j1", ttl_ms=TTL) is False

    # An orphan the key still holds (its deadline passed, by the script's clock)
    # goes on to the claim script, which takes it over and says so.
    orphan = new_token()
    ended = time_ms(client.time()) - 1_000
    client.set(f"{prefix}:o", f"o1|P|{orphan}|{ended}||".encode(), px=LEASE)
    assert _claim(store, "o", second) == Acquired(takeover=True)
    client.close()


def test_values_the_native_claim_cannot_judge_get_the_scripts_answer(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    scripted = RedisStore(client, prefix=prefix, clock=lambda: time_ms(client.time()))
    tok = "0" * 32
    values = {
        "garbage": b"garbage",
        "completed-without-outcome": f"o1|C|{tok}|99999999999999||".encode(),
        "completed-bad-token": b"o1|C|" + b"X" * 32 + b"|99999999999999||j1",
        "powertools": json.dumps(
            {"status": "COMPLETED", "expiration": 9_999_999_999, "data": "{}"}
        ).encode(),
        "powertools-ended": json.dumps({"status": "COMPLETED", "expiration": 1}).encode(),
    }
    for name, value in values.items():
        for which in (store, scripted):
            client.set(f"{prefix}:{name}", value, px=LEASE)
            try:
                answer: Any = _claim(which, name, new_token())
            except Exception as exc:  # the answer compared is the error's kind
                answer = type(exc)
            if which is store:
                native = answer
            else:
                assert native == answer or (
                    isinstance(native, Found)
                    and isinstance(answer, Found)
                    and native.record == answer.record
                ), name
    client.hset(f"{prefix}:hash", "a", "b")
    with pytest.raises(CorruptRecordError):  # WRONGTYPE, from the SET as from the script
        _claim(store, "hash", new_token())
    client.close()


def test_claim_many_sends_the_native_sets_then_the_scripts_it_needs(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    client = server.client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    _warm(store)
    done, held, own = new_token(), new_token(), new_token()
    _claim(store, "done", done)
    store.complete("done", token=done, outcome=b"j1", ttl_ms=TTL)
    _claim(store, "held", held)
    _claim(store, "own", own)
    client.set(f"{prefix}:bad", b"garbage")
    _reset(server)
    answers = store.claim_many(
        [
            ClaimCall("new", new_token(), LEASE, TTL, None),
            ClaimCall("done", new_token(), LEASE, TTL, None),
            ClaimCall("held", new_token(), LEASE, TTL, None),
            ClaimCall("own", own, LEASE, TTL, None),
            ClaimCall("bad", new_token(), LEASE, TTL, None),
        ]
    )
    new, found_done, found_held, again, bad = answers
    assert new == Acquired(takeover=False)
    assert isinstance(found_done, Found)
    assert found_done.record.outcome == b"j1"
    assert isinstance(found_held, Found)
    assert found_held.record.status is Status.IN_PROGRESS
    assert 0 < found_held.record.deadline_ms - found_held.now_ms <= LEASE
    assert again == Acquired(takeover=False)  # its own claim, sent again
    assert isinstance(bad, CorruptRecordError)
    calls = _calls(server)
    # Five native SETs; three scripts (held, own, bad), own's re-claim SET inside.
    assert (calls["set"], calls["evalsha"]) == (6, 3)
    client.close()


def test_wait_follows_the_native_set(redis_engine: harness.Engine, redis_farm: RedisFarm) -> None:
    primary = redis_farm.sentinel(redis_engine).primary  # with two replicas
    store = RedisStore(primary.client(), prefix=_prefix(), wait_replicas=1)
    _reset(primary)
    assert _claim(store, "k", new_token()) == Acquired(takeover=False)
    assert store.claim_many([ClaimCall("k2", new_token(), LEASE, TTL, None)]) == [
        Acquired(takeover=False)
    ]
    assert _calls(primary) == {"set": 2, "wait": 2}
    assert store.wait_shortfalls == 0


# -- a server that refuses NX with GET: Redis 6.2 -------------------------------------


@pytest.fixture
def redis62(tmp_path: Path) -> Iterator[harness.Server]:
    server = harness.standalone(harness.redis62(), tmp_path / "redis62")
    try:
        yield server
    finally:
        server.stop()


def test_on_redis_6_2_the_store_falls_back_to_the_claim_script(
    redis62: harness.Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis62.client()
    prefix = _prefix()
    store = RedisStore(client, prefix=prefix)
    runs: list[str] = []

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(lease_seconds=10))
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(order["id"])
        return {"charged": order["id"]}

    with caplog.at_level(logging.INFO, logger="onceonly"):
        assert charge({"id": "a"}) == {"charged": "a"}
        assert charge({"id": "a"}) == {"charged": "a"}
        assert store.claim_many([ClaimCall("b", new_token(), LEASE, TTL, None)]) == [
            Acquired(takeover=False)
        ]
    assert runs == ["a"]
    refusals = [r for r in caplog.records if "refuses SET with NX and GET" in r.getMessage()]
    assert len(refusals) == 1  # logged once
    assert refusals[0].onceonly_outcome == "claim_script"  # type: ignore[attr-defined]
    assert refusals[0].onceonly_store == "RedisStore"  # type: ignore[attr-defined]
    # Only the first claim tried SET NX GET; the rest were scripts.
    _reset(redis62)
    tok = new_token()
    assert _claim(store, "c", tok) == Acquired(takeover=False)
    assert _calls(redis62) == {"evalsha": 1, "get": 1, "set": 1, "time": 1}
    assert MARKER not in client.get(f"{prefix}:c")  # type: ignore[operator]

    # A store whose first call is a batch: each refused SET goes on to the script.
    batch = RedisStore(client, prefix=prefix)
    answers = batch.claim_many([ClaimCall(k, new_token(), LEASE, TTL, None) for k in "xyc"])
    assert answers[:2] == [Acquired(takeover=False)] * 2
    assert isinstance(answers[2], Found)  # "c" is held
    assert batch._native is False
    client.close()


def test_on_redis_6_2_the_async_store_falls_back_too(redis62: harness.Server) -> None:
    prefix = _prefix()

    async def main() -> list[Any]:
        client = redis.asyncio.Redis(host=harness.HOST, port=redis62.port)
        answers: list[Any] = []
        try:
            for pipelining in (True, False):
                store = AsyncRedisStore(client, prefix=prefix, pipelining=pipelining)
                tok = new_token()
                answers += await asyncio.gather(
                    store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None),
                    store.claim(
                        f"k{pipelining}", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                    ),
                )
                answers.append(store._native)
        finally:
            await client.aclose()
        return answers

    first, second, native, third, fourth, native_again = asyncio.run(main())
    assert first == second == fourth == Acquired(takeover=False)
    assert isinstance(third, Found)  # "k" is held by the first store's claim
    assert (native, native_again) == (False, False)


def test_refusal_is_recognised_only_for_the_syntax_error() -> None:
    store = RedisStore(redis.Redis(host=harness.HOST, port=1), prefix="p")
    assert store._native_refused(redis.exceptions.ResponseError("WRONGTYPE no")) is False
    assert store._native is True
    assert store._native_refused(ValueError("syntax error")) is False
    assert store._native_refused(redis.exceptions.ResponseError("syntax error")) is True
    assert store._native is False


def test_key_expiry_helpers() -> None:
    tok = new_token()
    value = scripts.native_claim_value(tok, "ab")
    assert value == f"o1|P|{tok}|9999999999999999|ab|".encode()
    assert scripts.has_key_expiry(value)
    assert not scripts.has_key_expiry(f"o1|P|{tok}|9999999999999998|ab|".encode())
    assert not scripts.has_key_expiry(f"o1|C|{tok}|9999999999999999|ab|j1".encode())
    assert not scripts.has_key_expiry("text")
    record = scripts.decode_value(value)
    assert record.deadline_ms == scripts.KEY_EXPIRY_DEADLINE
    real = scripts.resolve_key_expiry(record, 1_500, 1_000_000)
    assert real == Record(Status.IN_PROGRESS, tok, 1_001_500, "ab", None)
    assert scripts.resolve_key_expiry(record, -1, 1_000_000) == record  # no expiry: never ends
    assert scripts.resolve_key_expiry(record, -2, 1_000_000) is None  # gone
    # At its last millisecond (PTTL 0) the claim ends now, as a deadline of now does.
    assert scripts.resolve_key_expiry(record, 0, 1_000_000).deadline_ms == 1_000_000
    done = Record(Status.COMPLETED, tok, 5, None, encode_outcome(1))
    assert scripts.resolve_key_expiry(done, 10, 1) == done
    # Only an IN_PROGRESS record with the marker is resolved: a completed record
    # with that deadline, and a claim with a real deadline, are as they were.
    done_far = Record(Status.COMPLETED, tok, scripts.KEY_EXPIRY_DEADLINE, None, encode_outcome(1))
    assert scripts.resolve_key_expiry(done_far, 1_500, 1_000_000) == done_far
    claimed = Record(Status.IN_PROGRESS, tok, 2_000_000, "ab", None)
    assert scripts.resolve_key_expiry(claimed, 1_500, 1_000_000) == claimed
    assert scripts.native_claim_result(None) == Acquired(takeover=False)
    found = scripts.native_claim_result(b"o1|C|" + tok.encode() + b"|5||j1")
    assert isinstance(found, Found)
    assert found.now_ms == 4  # below the deadline: the server held the record
    # Far from its deadline, the answer's now is the caller's clock in ms.
    before = time.time_ns() // 1_000_000
    found = scripts.native_claim_result(b"o1|C|" + tok.encode() + b"|9999999999999||j1")
    after = time.time_ns() // 1_000_000
    assert isinstance(found, Found)
    assert before <= found.now_ms <= after
    for other in (value, b"garbage", b"o1|C|" + tok.encode() + b"|5||", "o1|C|"):
        assert scripts.native_claim_result(other) is None
