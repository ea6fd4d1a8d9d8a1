"""Tests on real stores that kill mutants a mutation pass found surviving (issue 17)."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import redis_harness as harness
from dynamodb_harness import MotoServer
from onceonly import (
    CorruptRecordError,
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencyStoreError,
    OnceOnlyWarning,
    idempotent_function,
)
from onceonly.records import Acquired, Found, Record, Status, new_token
from onceonly.stores.dynamodb import DynamoDBStore
from onceonly.stores.protocol import ClaimCall, RenewCall
from onceonly.stores.redis import AsyncRedisStore, RedisStore, common, scripts
from onceonly.stores.sqlite import SQLiteStore
from testkit import ManualClock, RedisFarm, finished_tasks_alive

# -- Redis: a renew moves the key's own expiry, not only the deadline in the value -------

SHORT_LEASE = 10_000
LONG_LEASE = 3_600_000


def test_redis_renew_sets_the_keys_expiry_to_the_new_lease(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    tokens = {key: new_token() for key in ("one", "many")}
    for key, token in tokens.items():
        claimed = store.claim(
            key, token=token, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
        )
        assert claimed == Acquired()
        assert 0 < client.pttl(store.full_key(key)) <= SHORT_LEASE
    assert store.renew("one", token=tokens["one"], lease_ms=LONG_LEASE) is True
    assert store.renew_many([RenewCall("many", tokens["many"], LONG_LEASE)]) == [True]
    for key in tokens:
        # Past the short lease by far more than any pause between the renew and this read
        # could take off, and never past the new lease: Redis keeps the claim that long.
        assert LONG_LEASE - 600_000 < client.pttl(store.full_key(key)) <= LONG_LEASE


# -- Redis: NOSCRIPT with wait_replicas, EVAL and its WAIT on the same connection -------


def _sentinel_primary(engine: harness.Engine, farm: RedisFarm) -> redis.Redis:
    """A client of the Sentinel set's primary, which has two replicas (for WAIT)."""
    host, port = farm.sentinel(engine).master_address()
    return redis.Redis(host=host, port=port)


def test_redis_scripts_under_wait_replicas_run_by_evalsha_or_after_noscript_by_eval(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = _sentinel_primary(redis_engine, redis_farm)
    # An injected clock keeps the claim on its script, as complete and release are.
    store = RedisStore(
        client, prefix=f"t{uuid.uuid4().hex[:12]}", wait_replicas=2, wait_timeout_ms=2_000,
        clock=ManualClock(1_800_000_000_000),
    )  # fmt: skip

    def flush(noscript: bool) -> None:
        # NOSCRIPT first (a restart, a failover or SCRIPT FLUSH), or the cached script.
        if noscript:
            client.script_flush()

    try:
        for noscript in (True, False):
            done, dropped = new_token(), new_token()
            kept, gone = f"kept-{noscript}", f"gone-{noscript}"
            flush(noscript)
            claimed = store.claim(
                kept, token=done, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
            )
            assert claimed == Acquired()
            flush(noscript)
            assert store.complete(kept, token=done, outcome=b"o1", ttl_ms=LONG_LEASE) is True
            flush(noscript)
            claimed = store.claim(
                gone, token=dropped, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
            )
            assert claimed == Acquired()
            flush(noscript)
            assert store.release(gone, token=dropped) is True

            record = store.get(kept)
            assert record is not None
            assert (record.status, record.token, record.outcome) == (
                Status.COMPLETED, done, b"o1"
            )  # fmt: skip
            assert store.get(gone) is None
        # Every write was acknowledged by both replicas.
        assert store.wait_shortfalls == 0
    finally:
        client.close()


def test_redis_native_claims_under_wait_replicas_answer_a_completed_key_with_its_record(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = _sentinel_primary(redis_engine, redis_farm)
    # By the server's time: each claim is the native SET ... NX GET, then WAIT.
    store = RedisStore(
        client, prefix=f"t{uuid.uuid4().hex[:12]}", wait_replicas=2, wait_timeout_ms=2_000
    )
    try:
        token = new_token()
        assert (
            store.claim("k", token=token, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None)
            == Acquired()
        )
        assert store.complete("k", token=token, outcome=b"o1", ttl_ms=LONG_LEASE) is True
        # The SET's GET reply is the completed record, read as one (not as SET's OK
        # flag, which would send the claim script after it): one round trip.
        client.config_resetstat()
        again = store.claim(
            "k", token=new_token(), lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
        )
        assert isinstance(again, Found)
        assert (again.record.status, again.record.token, again.record.outcome) == (
            Status.COMPLETED, token, b"o1"
        )  # fmt: skip
        stats = client.info("commandstats")
        assert stats["cmdstat_set"]["calls"] == 1
        assert "cmdstat_evalsha" not in stats
        assert "cmdstat_eval" not in stats
        assert store.wait_shortfalls == 0
    finally:
        client.close()


def _fail_over(cluster: harness.Cluster, primary_port: int) -> int:
    """Promote the replica of the primary on ``primary_port`` (CLUSTER FAILOVER); its port."""
    replica = next(
        node
        for node in cluster.nodes
        if node.client().info("replication").get("master_port") == primary_port
    )
    deadline = time.monotonic() + harness.START_TIMEOUT_S
    asked = 0.0
    while time.monotonic() < deadline:
        info = replica.client().info("replication")
        old = next(node for node in cluster.nodes if node.port == primary_port)
        if info["role"] == "master" and old.client().info("replication")["role"] == "slave":
            return replica.port
        # A manual failover needs the replica's link up, and is given up by the
        # primary after a few seconds when the two do not agree in time: ask again.
        if info.get("master_link_status") == "up" and time.monotonic() - asked > 5:
            replica.client().execute_command("CLUSTER", "FAILOVER")
            asked = time.monotonic()
        time.sleep(0.05)
    raise AssertionError("the replica was not promoted")


def test_redis_cluster_writes_with_wait_refresh_the_slot_map_after_a_failover(
    redis_engine: harness.Engine, tmp_path: Path
) -> None:
    # A cluster of its own: this test moves a primary.
    cluster = harness.cluster(redis_engine, tmp_path / "cluster")
    client = cluster.client()
    try:
        # wait_replicas sends each write to the key's node directly (the write and its
        # WAIT on one connection), by the client's cached slot map: a failover leaves
        # that map stale.
        store = RedisStore(client, prefix="t", wait_replicas=1, wait_timeout_ms=2_000)
        token = new_token()
        claimed = store.claim(
            "k", token=token, lease_ms=LONG_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
        )
        assert claimed == Acquired()
        primary = client.get_node_from_key(store.full_key("k")).port

        # The write meets MOVED at the old primary and fails closed, the slot map is
        # refreshed, and the next write goes to the new primary.
        _fail_over(cluster, primary)
        with pytest.raises(IdempotencyStoreError):
            store.complete("k", token=token, outcome=b"o1", ttl_ms=LONG_LEASE)
        assert store.complete("k", token=token, outcome=b"o1", ttl_ms=LONG_LEASE) is True
        record = store.get("k")
        assert record is not None
        assert (record.status, record.outcome) == (Status.COMPLETED, b"o1")
    finally:
        client.close()
        cluster.stop()


def test_redis_a_standalone_write_with_wait_that_cannot_connect_fails_as_a_store_error() -> None:
    # The slot-map refresh after a connection error is for cluster clients only.
    client = redis.Redis(host=harness.HOST, port=harness.free_port(), socket_connect_timeout=1)
    store = RedisStore(client, prefix="t", wait_replicas=1, clock=ManualClock())
    try:
        with pytest.raises(IdempotencyStoreError):
            store.claim("k", token=new_token(), lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE,
                        fingerprint=None)  # fmt: skip
    finally:
        client.close()


# By the server's time a batch's claims are native SETs; with an injected clock, the
# claim script. Either way the batch is one pipeline.
_CLAIMS = pytest.mark.parametrize("clock", [None, 1_800_000_000_000], ids=["native", "script"])


@_CLAIMS
def test_redis_a_batch_of_claims_shares_one_wait_and_names_its_first_key(
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
    caplog: pytest.LogCaptureFixture,
    clock: int | None,
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    # A standalone server has no replica: every WAIT falls short, and says so.
    store = RedisStore(
        client, prefix=f"t{uuid.uuid4().hex[:12]}", wait_replicas=1, wait_timeout_ms=10,
        clock=None if clock is None else ManualClock(clock),
    )  # fmt: skip
    keys = ["first", "second", "third"]
    calls = [ClaimCall(key, new_token(), SHORT_LEASE, LONG_LEASE, None) for key in keys]
    try:
        # The script loaded first, so no NOSCRIPT below.
        store.claim(
            "warm", token=new_token(), lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
        )
        caplog.clear()
        client.config_resetstat()
        shortfalls = store.wait_shortfalls
        with caplog.at_level("WARNING", logger="onceonly"):
            assert store.claim_many(calls) == [Acquired()] * 3
        # One pipeline: three writes, then one WAIT for all of them.
        stats = client.info("commandstats")
        writes = "cmdstat_set" if clock is None else "cmdstat_evalsha"
        assert (stats[writes]["calls"], stats["cmdstat_wait"]["calls"]) == (3, 1)
        assert store.wait_shortfalls == shortfalls + 1
        (short,) = [r for r in caplog.records if "fewer replicas" in r.getMessage()]
        assert short.onceonly_key_digest == store.full_key("first")[-16:]  # type: ignore[attr-defined]
    finally:
        client.close()


@_CLAIMS
def test_redis_a_batch_of_claims_in_a_cluster_with_wait_answers_each_key(
    redis_engine: harness.Engine, redis_farm: RedisFarm, clock: int | None
) -> None:
    client = redis_farm.cluster(redis_engine).client()
    store = RedisStore(
        client, prefix=f"t{uuid.uuid4().hex[:12]}", wait_replicas=1, wait_timeout_ms=2_000,
        clock=None if clock is None else ManualClock(clock),
    )  # fmt: skip
    keys = [f"key-{i}" for i in range(6)]
    try:
        # A key that holds a hash: SET ... GET, or the script's GET, answers it
        # WRONGTYPE, for that key only.
        client.hset(store.full_key("key-2"), "field", "value")
        calls = [ClaimCall(key, new_token(), SHORT_LEASE, LONG_LEASE, None) for key in keys]
        answers = store.claim_many(calls)
        assert len(answers) == len(keys)
        for call, answer in zip(calls, answers, strict=True):
            if call.key == "key-2":
                assert isinstance(answer, CorruptRecordError)
            else:
                assert answer == Acquired()
                record = store.get(call.key)
                assert record is not None
                assert record.token == call.token
        assert store.wait_shortfalls == 0
    finally:
        client.close()


@pytest.mark.parametrize(
    "bad",
    [{"token": "not-a-token"}, {"lease_ms": 0}, {"ttl_ms": -1}, {"fingerprint": "NOT-HEX"}],
    ids=["token", "lease", "ttl", "fingerprint"],
)
def test_redis_a_native_claim_checks_its_arguments_before_it_writes(
    redis_engine: harness.Engine, redis_farm: RedisFarm, bad: dict[str, Any]
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}")  # the server's time: native
    arguments: dict[str, Any] = {
        "token": new_token(), "lease_ms": SHORT_LEASE, "ttl_ms": LONG_LEASE, "fingerprint": None,
    }  # fmt: skip
    server = redis_farm.standalone(redis_engine)

    async def async_claim() -> None:
        async_client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        async_store = AsyncRedisStore(async_client, prefix=store.prefix)
        try:
            await async_store.claim("k", **{**arguments, **bad})
        finally:
            await async_client.aclose()

    try:
        with pytest.raises(ValueError, match=next(iter(bad))):
            store.claim("k", **{**arguments, **bad})
        with pytest.raises(ValueError, match=next(iter(bad))):
            asyncio.run(async_claim())
        assert client.exists(store.full_key("k")) == 0
    finally:
        client.close()


async def _claim_all(store: AsyncRedisStore, keys: list[str]) -> list[Any]:
    """Claim ``keys`` concurrently (one loop turn, so one batch); the answers in order."""
    return list(
        await asyncio.gather(
            *(
                store.claim(
                    key,
                    token=new_token(),
                    lease_ms=SHORT_LEASE,
                    ttl_ms=LONG_LEASE,
                    fingerprint=None,
                )
                for key in keys
            )
        )
    )


def test_redis_async_calls_batched_together_share_one_wait_and_name_the_first_key(
    redis_engine: harness.Engine, redis_farm: RedisFarm, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_farm.standalone(redis_engine)
    keys = ["first", "second", "third"]

    async def main() -> AsyncRedisStore:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        # No replica: WAIT falls short. The clock keeps the claims on the script, which
        # the loop's batcher sends together with one WAIT after them.
        store = AsyncRedisStore(
            client, prefix=f"t{uuid.uuid4().hex[:12]}", wait_replicas=1, wait_timeout_ms=10,
            clock=ManualClock(1_800_000_000_000),
        )  # fmt: skip
        try:
            await store.claim(
                "warm", token=new_token(), lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
            )
            caplog.clear()
            before = store.wait_shortfalls
            answers = await _claim_all(store, keys)
            assert answers == [Acquired()] * 3
            assert store.wait_shortfalls == before + 1  # one WAIT for the three
        finally:
            await client.aclose()
        return store

    with caplog.at_level("WARNING", logger="onceonly"):
        store = asyncio.run(main())
    (short,) = [r for r in caplog.records if "fewer replicas" in r.getMessage()]
    assert short.onceonly_key_digest == store.full_key("first")[-16:]  # type: ignore[attr-defined]


class _BatchSizes(AsyncRedisStore):
    """An AsyncRedisStore that notes the size of each pipeline its batcher sends."""

    sizes: list[int]

    async def _raw_batch(self, batch: list[Any], *, use_sha: bool) -> list[Any]:
        self.sizes.append(len(batch))
        return await super()._raw_batch(batch, use_sha=use_sha)


def test_redis_async_calls_of_one_loop_turn_go_in_pipelines_of_at_most_512(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)

    async def main() -> list[int]:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port, max_connections=8)
        # An injected clock keeps every claim on the (batched) claim script.
        store = _BatchSizes(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
        store.sizes = []
        try:
            await store.claim(
                "warm", token=new_token(), lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
            )
            store.sizes.clear()
            answers = await _claim_all(store, [f"k{i}" for i in range(513)])
            assert answers == [Acquired()] * 513
        finally:
            await client.aclose()
        return store.sizes

    assert asyncio.run(main()) == [512, 1]


def test_redis_async_store_keeps_no_task_of_a_pipeline_once_it_is_answered(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)

    async def main() -> tuple[int, int]:
        client = redis.asyncio.Redis(host=harness.HOST, port=server.port)
        # The clock keeps the claims on the script, which the loop's batcher sends.
        store = AsyncRedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
        try:
            before = finished_tasks_alive("Batcher.send")
            for round_ in range(5):
                answers = await _claim_all(store, [f"r{round_}k{i}" for i in range(4)])
                assert answers == [Acquired()] * 4
            # Five pipelines went out and were answered: the store holds none of them.
            return before, finished_tasks_alive("Batcher.send")
        finally:
            await client.aclose()

    before, after = asyncio.run(main())
    assert after == before


@pytest.mark.parametrize(
    "reply", [None, 1, b"abc", [1, 0], [1, 0, 0, 0]], ids=["nil", "int", "bytes", "two", "four"]
)
def test_redis_a_claim_script_reply_that_is_not_three_items_is_refused(reply: object) -> None:
    with pytest.raises(CorruptRecordError, match="unexpected reply from the claim script"):
        scripts.claim_result(reply)


# -- SQLite: the sweep of expired rows runs on exactly every purge_every-th write --------

PURGE_EVERY = 4


def _keys(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT key FROM onceonly ORDER BY key")]
    finally:
        conn.close()


def test_sqlite_sweep_runs_on_exactly_every_purge_every_th_write(tmp_path: Path) -> None:
    clock = ManualClock()
    db = tmp_path / "sweep.sqlite3"
    # Expired rows come from a second store on the file, whose writes the first one does not count.
    seed = SQLiteStore(db, clock=clock, purge_every=1_000_000)
    store = SQLiteStore(db, clock=clock, purge_every=PURGE_EVERY, purge_batch=1_000)
    try:
        for cycle in range(3):
            old = f"old:{cycle}"
            seed.claim(old, token=new_token(), lease_ms=10, ttl_ms=10, fingerprint=None)
            clock.advance(10)  # expired: only a sweep takes its row away
            for i in range(PURGE_EVERY):
                assert old in _keys(db), f"swept after {i} of {PURGE_EVERY} writes"
                key = f"live:{cycle}:{i}"
                claimed = store.claim(
                    key, token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None
                )
                assert claimed == Acquired()
            assert old not in _keys(db), f"not swept by write {PURGE_EVERY}"
            assert len(_keys(db)) == PURGE_EVERY * (cycle + 1)  # the live rows stay
    finally:
        seed.close()
        store.close()


# -- DynamoDB: a backend that does not return the old item on a failed condition ---------


class OldBackend:
    """A real client to moto made to speak like a DynamoDB-compatible server without
    ``ReturnValuesOnConditionCheckFailure``: botocore drops that parameter before every
    request, so a failed conditional write answers without the item and the claim has to
    read it. Also records the operations sent, and runs ``before_get`` ahead of a GetItem.
    """

    def __init__(self, moto_server: MotoServer) -> None:
        self.client = moto_server.client()
        self.table = moto_server.fresh_table(moto_server.shared_client)
        self.names: list[str] = []
        self.before_get: Any = None
        self.before_every: dict[str, Any] = {}  # operation name -> hook run ahead of each
        events = self.client.meta.events
        events.register("provide-client-params.dynamodb.*", self._strip)
        events.register("before-call.dynamodb.*", self._record)

    def _strip(self, params: dict[str, Any], **_: Any) -> None:
        params.pop("ReturnValuesOnConditionCheckFailure", None)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)
        if model.name in self.before_every:
            self.before_every[model.name]()
        if model.name == "GetItem" and self.before_get is not None:
            hook, self.before_get = self.before_get, None
            hook()

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


def _old_backend_store(moto_server: MotoServer) -> tuple[OldBackend, DynamoDBStore, ManualClock]:
    backend, clock = OldBackend(moto_server), ManualClock()
    store = DynamoDBStore(backend.table, client=backend.client, clock=clock, clock_skew_ms=0)
    return backend, store, clock


def test_dynamodb_claim_reads_a_live_holder_when_the_failed_write_returns_no_item(
    moto_server: MotoServer,
) -> None:
    backend, store, clock = _old_backend_store(moto_server)
    holder = new_token()
    assert store.claim("k", token=holder, lease_ms=5_000, ttl_ms=60_000, fingerprint=None) == (
        Acquired()
    )
    backend.take()
    clock.advance(1_000)
    found = store.claim("k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    assert found == Found(Record(Status.IN_PROGRESS, holder, clock() + 4_000), clock())
    assert backend.take() == ["PutItem", "GetItem"]  # the failed write said nothing: read
    assert store.get("k") == found.record


def test_dynamodb_claim_takes_over_an_ended_holder_it_had_to_read(
    moto_server: MotoServer,
) -> None:
    backend, store, clock = _old_backend_store(moto_server)
    store.claim("k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    clock.advance(5_000)  # the holder's lease has ended; its item is still there
    backend.take()
    mine = new_token()
    claimed = store.claim("k", token=mine, lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    assert claimed == Acquired(takeover=True)
    assert backend.take() == ["PutItem", "GetItem", "PutItem"]
    assert (record := store.get("k")) is not None
    assert record.token == mine


def test_dynamodb_claim_whose_holder_ends_and_goes_between_write_and_read_claims_again(
    moto_server: MotoServer,
) -> None:
    backend, store, clock = _old_backend_store(moto_server)
    store.claim("k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    backend.take()

    def holder_ends_and_goes() -> None:
        # After the failed PutItem, before its GetItem: the holder's deadline passes and
        # its item goes (TTL's deletion, or the holder's release), so the read finds nothing.
        clock.advance(5_000)
        moto_server.shared_client.delete_item(TableName=backend.table, Key={"id": {"S": "k"}})

    backend.before_get = holder_ends_and_goes
    mine = new_token()
    claimed = store.claim("k", token=mine, lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    assert claimed == Acquired(takeover=False)  # nothing was there to take over
    assert backend.take() == ["PutItem", "GetItem", "PutItem"]
    assert (record := store.get("k")) is not None
    assert record.token == mine


def test_dynamodb_claim_gives_up_after_eight_holders_that_go_between_write_and_read(
    moto_server: MotoServer,
) -> None:
    backend, store, clock = _old_backend_store(moto_server)
    key = {"id": {"S": "k"}}

    def a_live_holder_arrives() -> None:
        item = dict(key, status={"S": "P"}, token={"S": new_token()})
        item["deadline"] = {"N": str(clock() + 60_000)}
        moto_server.shared_client.put_item(TableName=backend.table, Item=item)

    def it_goes() -> None:
        moto_server.shared_client.delete_item(TableName=backend.table, Key=key)

    store.claim("warm", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    backend.take()  # the first claim's DescribeTable and PutItem
    # Before each PutItem a live holder takes the key; before each GetItem it
    # goes, so every read finds the key free and the claim tries again.
    backend.before_every = {"PutItem": a_live_holder_arrives, "GetItem": it_goes}
    with pytest.raises(IdempotencyStoreError, match="changed hands 8 times during one claim"):
        store.claim("k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    assert backend.take() == ["PutItem", "GetItem"] * 8


# -- Redis: release.lua counts a claim as ended at its deadline, not a millisecond after ----


def test_redis_release_by_another_token_finds_a_claim_ended_exactly_at_its_deadline(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    clock = ManualClock()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=clock)
    owner, other = new_token(), new_token()
    claimed = store.claim(
        "k", token=owner, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
    )
    assert claimed == Acquired()
    clock.advance(SHORT_LEASE - 1)
    # A live claim of another owner: not released.
    assert store.release("k", token=other) is False
    clock.advance(1)
    # At its deadline the claim has ended: nothing live is left to release, and
    # the script leaves the ended record alone (it is not the caller's).
    assert store.release("k", token=other) is True
    assert client.exists(store.full_key("k")) == 1


# -- Redis: only an in-progress record's deadline can be the key-expiry marker ------------


def test_redis_a_completed_record_keeps_a_marker_like_deadline_as_written(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    # The native claim writes the marker 9999999999999999 in an IN_PROGRESS
    # record, meaning "ends with the key". A COMPLETED record (written by hand,
    # or a future writer) with that deadline means that deadline: the scripts
    # must not read it from the key's expiry.
    client = redis_farm.standalone(redis_engine).client()
    # With a clock of its own the store claims through the claim script (no native SET).
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    tok = new_token()
    client.set(store.full_key("k"), f"o1|C|{tok}|9999999999999999||j1".encode(), px=60_000)
    found = store.claim("k", token=new_token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
    assert isinstance(found, Found)
    assert found.record == Record(Status.COMPLETED, tok, 9_999_999_999_999_999, None, b"j1")


# -- Redis: a Powertools record's times may be zero ----------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"status": "COMPLETED", "expiration": 0, "data": "1"},
        {"status": "INPROGRESS", "expiration": 4_000_000_000, "in_progress_expiration": 0},
    ],
    ids=["expiration-0", "in-progress-expiration-0"],
)
def test_redis_a_powertools_record_with_a_zero_time_has_ended(
    value: dict[str, Any], redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    # Zero is a whole number in range (the epoch): the record is one, and long over.
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    client.set(store.full_key("k"), json.dumps(value).encode(), px=60_000)
    assert store.claim("k", token=new_token(), lease_ms=1000, ttl_ms=1000, fingerprint=None) == (
        Acquired(takeover=value["status"] == "INPROGRESS")
    )


@pytest.mark.parametrize(
    ("value", "deadline_ms"),
    [
        ({"status": "COMPLETED", "expiration": 10**12, "data": "1"}, 10**15),
        (
            {"status": "INPROGRESS", "expiration": 10**12, "in_progress_expiration": 10**15},
            10**15,
        ),
    ],
    ids=["expiration-at-its-limit", "in-progress-expiration-at-its-limit"],
)
def test_redis_a_powertools_record_at_the_limits_of_its_times_is_a_record(
    value: dict[str, Any], deadline_ms: int, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    client.set(store.full_key("k"), json.dumps(value).encode(), px=60_000)
    found = store.claim("k", token=new_token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
    assert isinstance(found, Found)
    assert found.record.deadline_ms == deadline_ms


# -- Redis Cluster: the hash-tag warning points at the decorated function ------------------


def test_redis_cluster_a_hash_tag_key_prefix_warns_where_the_function_is_decorated(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.cluster(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="{o}"))
        def charge(order: dict[str, Any]) -> int:
            return 1

    (warning,) = [w for w in caught if issubclass(w.category, OnceOnlyWarning)]
    assert "makes a Redis Cluster hash tag {o}" in str(warning.message)
    assert warning.filename == __file__
    client.close()


# -- the documented defaults of the store options ---------------------------------------


def test_dynamodb_store_allows_one_second_of_clock_skew_by_default(
    moto_server: MotoServer,
) -> None:
    clock = ManualClock()
    table = moto_server.fresh_table(moto_server.shared_client)
    store = DynamoDBStore(table, client=moto_server.shared_client, clock=clock)
    holder = new_token()
    store.claim("k", token=holder, lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    clock.advance(5_000 + 999)  # the lease has passed, but not the 1 s allowance
    found = store.claim("k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None)
    assert type(found) is Found
    assert found.record.token == holder
    clock.advance(1)
    assert store.claim(
        "k", token=new_token(), lease_ms=5_000, ttl_ms=60_000, fingerprint=None
    ) == Acquired(takeover=True)


def test_redis_stores_wait_at_most_one_second_by_default(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    server = redis_farm.standalone(redis_engine)
    url = f"redis://{harness.HOST}:{server.port}"
    sync_stores = [RedisStore(server.client(), wait_replicas=1)]
    sync_stores.append(RedisStore.from_url(url, wait_replicas=1))
    async_stores = [AsyncRedisStore(redis.asyncio.Redis(host=harness.HOST, port=server.port))]
    async_stores.append(AsyncRedisStore.from_url(url, wait_replicas=1))
    try:
        assert [s.wait_timeout_ms for s in sync_stores + async_stores] == [1000] * 4
    finally:
        for store in sync_stores:
            store.client.close()
        for store in async_stores:
            asyncio.run(store.client.aclose())


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({"clock_skew_ms": 0}, True),
        ({"clock_skew_ms": 3_600_000}, True),
        ({"clock_skew_ms": 3_600_001}, False),
        ({"max_outcome_bytes": 1}, True),
        ({"max_outcome_bytes": 0}, False),
        ({"max_outcome_bytes": 400_000}, True),
        ({"max_outcome_bytes": 400_001}, False),
    ],
    ids=lambda v: str(v),
)
def test_dynamodb_store_options_at_the_edges_of_their_ranges(
    moto_server: MotoServer, options: dict[str, int], accepted: bool
) -> None:
    client = moto_server.shared_client
    if accepted:
        store = DynamoDBStore("tbl", client=client, **options)  # type: ignore[arg-type]
        assert [getattr(store, name) for name in options] == list(options.values())
    else:
        with pytest.raises(IdempotencyConfigError, match=f"^{next(iter(options))} must be"):
            DynamoDBStore("tbl", client=client, **options)  # type: ignore[arg-type]


# -- DynamoDB: attribute names of 1-255 bytes; close() closes only a client it built -----


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("k", True),
        ("k" * 255, True),
        ("k" * 256, False),
        ("é" * 127, True),  # 254 bytes
        ("é" * 128, False),  # 128 characters, 256 bytes: the limit is in bytes
        ("", False),
    ],
    ids=[
        "1-byte",
        "255-bytes",
        "256-bytes",
        "254-bytes-of-127-chars",
        "256-bytes-of-128-chars",
        "empty",
    ],
)
def test_dynamodb_attribute_names_are_1_to_255_bytes(
    moto_server: MotoServer, name: str, accepted: bool
) -> None:
    client = moto_server.shared_client
    for option in ("key_attr", "expiry_attr", "sort_key_attr"):
        if accepted:
            store = DynamoDBStore("tbl", client=client, **{option: name})  # type: ignore[arg-type]
            assert getattr(store, option) == name
        else:
            with pytest.raises(IdempotencyConfigError, match=f"^{option} must be an attribute"):
                DynamoDBStore("tbl", client=client, **{option: name})  # type: ignore[arg-type]


def test_dynamodb_close_closes_a_client_it_built_and_leaves_an_injected_one_open(
    moto_server: MotoServer,
) -> None:
    built = DynamoDBStore("tbl", endpoint_url=moto_server.url, region_name="us-east-1")
    injected = DynamoDBStore("tbl", client=moto_server.shared_client)
    closed: list[str] = []
    for name, store in (("built", built), ("injected", injected)):
        close = store.client.close

        def recording(name: str = name, close: Any = close) -> None:
            closed.append(name)
            close()

        store.client.close = recording
    try:
        built.close()
        injected.close()
    finally:
        del injected.client.close  # the shared client's own method again
    assert closed == ["built"]


# -- Redis: the helpers the two stores share ---------------------------------------------


def test_redis_a_pool_needs_a_command_name_only_if_its_first_parameter_is_a_required_one() -> None:
    def old(command_name: str, *keys: Any, **options: Any) -> None: ...

    def new(*args: Any, **options: Any) -> None: ...

    def optional(command_name: str | None = None, *keys: Any, **options: Any) -> None: ...

    def keyword(*, command_name: str) -> None: ...

    assert common.needs_command_name(old) is True
    assert common.needs_command_name(new) is False
    assert common.needs_command_name(optional) is False
    assert common.needs_command_name(keyword) is False
    assert common.needs_command_name(int) is False  # no signature to read


def test_redis_store_errors_are_told_apart_by_both_their_class_and_their_text() -> None:
    wrongtype = common.store_error(redis.exceptions.ResponseError("WRONGTYPE Operation"), "k")
    assert isinstance(wrongtype, CorruptRecordError)
    # Another error reply is a store error, not a corrupt record.
    other = common.store_error(redis.exceptions.ResponseError("ERR unknown command"), "k")
    assert type(other) is IdempotencyStoreError
    assert "Redis failed (key k): ResponseError: ERR unknown command" in str(other)
    # A connection error whose text looks like another case is still a connection error.
    for text in ("WRONGTYPE", "cluster support not enabled"):
        reset = common.store_error(redis.exceptions.ConnectionError(text), "k")
        assert type(reset) is IdempotencyStoreError
        assert str(reset).startswith("cannot reach Redis (key k): ConnectionError")
    not_cluster = common.store_error(
        redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node"), None
    )
    assert "not a cluster node" in str(not_cluster)
    # Another cluster error is reported as it is.
    other_cluster = common.store_error(redis.exceptions.RedisClusterException("no slots"), None)
    assert str(other_cluster) == "Redis failed: RedisClusterException: no slots"


def test_redis_a_wait_timeout_of_zero_waits_for_ever_and_a_negative_one_is_refused() -> None:
    common.check_options("p", 1, 0, False)  # 0: WAIT blocks until the replicas answer
    with pytest.raises(IdempotencyConfigError, match="wait_timeout_ms"):
        common.check_options("p", 1, -1, False)


@pytest.mark.parametrize(
    ("server", "persistence", "refused"),
    [
        ({"redis_version": "7.2.0"}, {"aof_enabled": 1}, None),
        ({"redis_version": "8.0.1"}, {"aof_enabled": "1"}, None),
        ({"redis_version": "7.1.9"}, {"aof_enabled": 1}, "7.2"),
        ({"redis_version": "6.2.14"}, {"aof_enabled": 1}, "7.2"),
        ({"redis_version": "seven"}, {"aof_enabled": 1}, "7.2"),
        ({"redis_version": "7.2.0"}, {"aof_enabled": 0}, "appendonly"),
        ({"redis_version": "7.2.0"}, {}, "appendonly"),
    ],
)
def test_redis_waitaof_needs_7_2_and_appendonly(
    server: dict[str, Any], persistence: dict[str, Any], refused: str | None
) -> None:
    if refused is None:
        common.check_waitaof_support(server, persistence)
    else:
        with pytest.raises(IdempotencyConfigError, match=refused):
            common.check_waitaof_support(server, persistence)


def test_redis_cluster_a_store_prefix_with_a_hash_tag_warns_at_the_line_that_builds_it(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.cluster(redis_engine).client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        here = inspect.currentframe()
        assert here is not None
        RedisStore(client, prefix="{orders}")
        line = here.f_lineno - 1
    (warning,) = [w for w in caught if issubclass(w.category, OnceOnlyWarning)]
    assert "hash tag {orders}" in str(warning.message)
    assert (warning.filename, warning.lineno) == (__file__, line)
    client.close()


def test_redis_time_ms_reads_a_time_reply_as_integer_milliseconds() -> None:
    assert common.time_ms([b"1700000000", b"123456"]) == 1_700_000_000_123
    assert common.time_ms(["0", "999"]) == 0
    assert common.time_ms(["1", "500000"]) == 1_500


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{user1}:k", "user1"),
        ("p:{a}{b}", "a"),
        ("a}b", None),  # a closing brace alone is no tag
        ("{}x}", None),  # an empty tag: the whole key is hashed, not "x"
        ("{open", None),
        ("plain", None),
    ],
)
def test_redis_hash_tag_follows_redis_clusters_rule(key: str, tag: str | None) -> None:
    assert common.hash_tag(key) == tag
