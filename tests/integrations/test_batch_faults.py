"""Record batches when things go wrong: long batches, interruptions, payloads that differ.

On real stores: MemoryStore / SQLiteStore (with a ManualClock, so that a lease
never runs out by itself during a test) and real Redis / Valkey servers for
the heartbeat, whose leases are judged by the server's own clock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

import onceonly._async
import onceonly._sync
import redis_harness as harness
from onceonly import IdempotencyConfig, IdempotencyKeyReuseError
from onceonly.batch import ItemStatus, process_batch, process_batch_async
from onceonly.records import Status, decode_outcome, new_token
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore, MemoryStore, SQLiteStore
from onceonly.stores.protocol import RenewCall, renew_many, renew_many_async
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from testkit import ManualClock, RedisFarm, VirtualAsyncHeartbeatTime, VirtualHeartbeatTime


class CountingConnection(redis.Connection):
    """redis-py's connection, counting what it sends: one per round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _records(orders: list[int], amounts: list[int] | None = None) -> list[dict[str, Any]]:
    """SQS-like records; ``amounts`` (payload-validated) default to 5 each."""
    amounts = amounts or [5] * len(orders)
    return [
        {"messageId": f"m-{i}", "body": json.dumps({"order": order, "amount": amount})}
        for i, (order, amount) in enumerate(zip(orders, amounts, strict=True))
    ]


def _order(record: dict[str, Any]) -> int:
    return int(json.loads(record["body"])["order"])


CONFIG = IdempotencyConfig(event_key_jmespath="from_json(body).order", key_prefix="sqs")
VALIDATED = IdempotencyConfig(
    event_key_jmespath="from_json(body).order",
    payload_validation_jmespath="from_json(body).amount",
    key_prefix="sqs",
)


def _keys(records: list[dict[str, Any]], config: IdempotencyConfig) -> list[str]:
    """Each record's key (keys depend on the config only, not on the store)."""
    probe = process_batch(records, lambda r: None, store=MemoryStore(), config=config)
    keys = [item.key for item in probe.items]
    assert all(key is not None for key in keys)
    return keys  # type: ignore[return-value]


# -- heartbeat (issue 9, item 2) ----------------------------------------------------------------
#
# Lease 1.5 s, three records of 0.9 s: the batch lasts 2.7 s, past the lease of
# every claim it took at the start. A rival consumer tries the same records
# before each record and after the last. Renewed every 0.5 s, a claim keeps at
# least 1 s of lease left at any moment: the margin for a late heartbeat.

LEASE_S = 1.5
RECORD_S = 0.9
HEARTBEAT = IdempotencyConfig(
    event_key_jmespath="from_json(body).order",
    key_prefix="sqs",
    lease_seconds=LEASE_S,
    heartbeat=True,
)


def test_a_heartbeat_batch_keeps_every_claim_until_its_outcome_is_stored(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    prefix = _prefix()
    store = RedisStore(server.client(), prefix=prefix)
    rival = RedisStore(server.client(), prefix=prefix)  # a second consumer, its own connection
    records = _records([1, 2, 3])
    runs: list[int] = []
    rival_runs: list[int] = []
    rival_saw: list[list[ItemStatus]] = []

    def try_rival() -> None:
        seen = process_batch(
            records, lambda r: rival_runs.append(_order(r)), store=rival, config=HEARTBEAT
        )
        rival_saw.append([item.status for item in seen.items])

    def handle(record: dict[str, Any]) -> dict[str, int]:
        try_rival()
        runs.append(_order(record))
        time.sleep(RECORD_S)
        if _order(record) == 3:
            try_rival()
        return {"done": _order(record)}

    result = process_batch(records, handle, store=store, config=HEARTBEAT)

    assert runs == [1, 2, 3]
    assert rival_runs == []  # exactly once: the rival never took a claim over
    assert rival_saw == [[ItemStatus.IN_PROGRESS] * 3] * 4
    assert [item.status for item in result.items] == [ItemStatus.RUN] * 3
    for item in result.items:  # every outcome stored (none refused by the fencing token)
        assert item.key is not None
        stored = store.get(item.key)
        assert stored is not None
        assert stored.status is Status.COMPLETED
        assert stored.outcome is not None
        assert decode_outcome(stored.outcome) == item.value
    again = process_batch(
        records, lambda r: rival_runs.append(_order(r)), store=rival, config=CONFIG
    )
    assert [item.status for item in again.items] == [ItemStatus.REPLAYED] * 3
    assert [item.value for item in again.items] == [{"done": 1}, {"done": 2}, {"done": 3}]


def test_an_async_heartbeat_batch_keeps_every_claim_until_its_outcome_is_stored(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    port = redis_farm.standalone(redis_engine).port
    prefix = _prefix()
    records = _records([1, 2, 3])
    runs: list[int] = []
    rival_runs: list[int] = []
    rival_saw: list[list[ItemStatus]] = []

    async def main() -> tuple[Any, list[Any], list[ItemStatus]]:
        client = redis.asyncio.Redis(host=harness.HOST, port=port)
        rival_client = redis.asyncio.Redis(host=harness.HOST, port=port)
        store = AsyncRedisStore(client, prefix=prefix)
        rival = AsyncRedisStore(rival_client, prefix=prefix)

        async def rival_handle(record: dict[str, Any]) -> None:
            rival_runs.append(_order(record))

        async def try_rival() -> None:
            seen = await process_batch_async(records, rival_handle, store=rival, config=HEARTBEAT)
            rival_saw.append([item.status for item in seen.items])

        async def handle(record: dict[str, Any]) -> dict[str, int]:
            await try_rival()
            runs.append(_order(record))
            await asyncio.sleep(RECORD_S)
            if _order(record) == 3:
                await try_rival()
            return {"done": _order(record)}

        result = await process_batch_async(records, handle, store=store, config=HEARTBEAT)
        stored = [await store.get(item.key) for item in result.items]
        again = await process_batch_async(records, rival_handle, store=rival, config=CONFIG)
        await client.aclose()
        await rival_client.aclose()
        return result, stored, [item.status for item in again.items]

    result, stored, again = asyncio.run(main())
    assert runs == [1, 2, 3]
    assert rival_runs == []
    assert rival_saw == [[ItemStatus.IN_PROGRESS] * 3] * 4
    assert [item.status for item in result.items] == [ItemStatus.RUN] * 3
    for item, record in zip(result.items, stored, strict=True):
        assert record is not None
        assert record.status is Status.COMPLETED
        assert decode_outcome(record.outcome) == item.value
    assert again == [ItemStatus.REPLAYED] * 3


class _RenewalsStore(MemoryStore):
    """A MemoryStore noting when (on its clock) each batch heartbeat beat, and what for.

    With ``stall_at=n``, the n-th beat first moves the clock past every lease,
    as if the process had stalled: its renewals all find their claims ended.
    """

    def __init__(self, clock: ManualClock, stall_at: int = 0) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.stall_at = stall_at
        self.beats: list[tuple[int, list[str], list[Any]]] = []
        self.stalled = threading.Event()

    def renew_many(self, calls: list[RenewCall]) -> list[bool | Exception]:
        if len(self.beats) + 1 == self.stall_at:
            self.clock.advance(60_000)
            self.stalled.set()
        answers = [self.renew(c.key, token=c.token, lease_ms=c.lease_ms) for c in calls]
        self.beats.append((self.clock.now, [c.key for c in calls], list(answers)))
        return list(answers)


@pytest.mark.parametrize("orders", [[1], [1, 2, 3]], ids=["one-record", "three-records"])
def test_a_batch_heartbeat_renews_every_claim_every_third_of_the_lease_in_virtual_time(
    monkeypatch: pytest.MonkeyPatch, orders: list[int]
) -> None:
    # The heartbeat thread's waits move a ManualClock on (testkit.VirtualHeartbeatTime),
    # so the beats land at exact instants: the cadence is asserted, not a margin.
    records = _records(orders)
    keys = _keys(records, HEARTBEAT)
    clock = ManualClock()
    start = clock.now
    store = _RenewalsStore(clock)
    virtual = VirtualHeartbeatTime(clock, 2700)  # the batch "lasts" 2.7 s: past its 1.5 s lease
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    def handle(record: dict[str, Any]) -> dict[str, int]:
        if _order(record) == orders[-1]:
            assert virtual.reached.wait(10)  # until the heartbeat's next wait passes 2.7 s
        return {"done": _order(record)}

    result = process_batch(records, handle, store=store, config=HEARTBEAT)

    assert [item.status for item in result.items] == [ItemStatus.RUN] * len(orders)
    assert virtual.waits_ms[:5] == [500] * 5  # a 1.5 s lease is renewed every 500 ms
    # Every beat renews every claim (their outcomes are stored together at the end).
    assert store.beats == [(start + 500 * i, keys, [True] * len(orders)) for i in range(1, 6)]
    for key in keys:
        record = store.get(key)
        assert record is not None
        assert record.status is Status.COMPLETED


def test_a_batch_heartbeat_stops_once_every_claim_is_found_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records([1, 2])
    keys = _keys(records, HEARTBEAT)
    clock = ManualClock()
    start = clock.now
    store = _RenewalsStore(clock, stall_at=3)
    virtual = VirtualHeartbeatTime(clock, 60_000)
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    def handle(record: dict[str, Any]) -> dict[str, int]:
        if _order(record) == 2:
            assert store.stalled.wait(10)
            # A heartbeat that went on beating would reach the horizon at once
            # (its waits take no real time); one that stopped never does.
            assert not virtual.reached.wait(0.5)
        return {"done": _order(record)}

    with caplog.at_level("WARNING", logger="onceonly"):
        result = process_batch(records, handle, store=store, config=HEARTBEAT)

    assert virtual.waits_ms == [500] * 3  # no wait after the third beat: it stopped
    assert store.beats == [
        (start + 500, keys, [True, True]),
        (start + 1000, keys, [True, True]),
        (start + 60_000 + 1500, keys, [False, False]),  # the last beat
    ]
    lost = [r.getMessage() for r in caplog.records if "heartbeat found the lease" in r.message]
    assert lost == [f"onceonly: heartbeat found the lease on key {key} lost" for key in keys]
    # The claims were lost: the handler's results are handed back, not stored.
    assert [item.value for item in result.items] == [{"done": 1}, {"done": 2}]
    assert [store.get(key) for key in keys] == [None, None]
    unstored = [r.getMessage() for r in caplog.records if "could not store" in r.message]
    assert [message.split(" could not")[1] for message in unstored] == [
        f" store the outcome of key {key} (lease lost)" for key in keys
    ]


def test_redis_renews_many_claims_in_one_round_trip(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    server = redis_farm.standalone(redis_engine)
    pool = redis.ConnectionPool(
        host=harness.HOST, port=server.port, connection_class=CountingConnection
    )
    client = redis.Redis.from_pool(pool)
    store = RedisStore(client, prefix=_prefix())
    held, other = new_token(), new_token()
    for key in ("a", "b"):
        store.claim(key, token=held, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    store.claim("c", token=other, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    calls = [
        RenewCall("a", held, 90_000),
        RenewCall("b", held, 90_000),
        RenewCall("c", held, 90_000),
    ]
    renew_many(store, calls)  # warm: the renew script loaded
    CountingConnection.sends = 0
    answers = renew_many(store, calls)
    sends = CountingConnection.sends
    leases = [client.pttl(f"{store.full_key(k)}") for k in ("a", "b", "c")]
    client.close()
    assert sends == 1
    assert answers == [True, True, False]  # "c" is held by another token: not renewed
    assert leases[0] > 60_000
    assert leases[1] > 60_000
    assert leases[2] <= 60_000


def test_stores_without_renew_many_renew_one_by_one() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    held = new_token()
    store.claim("a", token=held, lease_ms=1_000, ttl_ms=60_000, fingerprint=None)
    store.claim("b", token=new_token(), lease_ms=1_000, ttl_ms=60_000, fingerprint=None)
    calls = [RenewCall("a", held, 5_000), RenewCall("b", held, 5_000)]
    assert renew_many(store, calls) == [True, False]
    assert asyncio.run(renew_many_async(AsyncMemoryStore(clock=clock), calls)) == [False, False]
    clock.advance(4_000)  # past the first lease, within the renewed one
    record = store.get("a")
    assert record is not None
    assert record.status is Status.IN_PROGRESS
    assert store.get("b") is None


# -- interrupted batches (issue 9, item 3) ------------------------------------------------------


def _sync_store(kind: str, tmp_path: Path, clock: ManualClock) -> Any:
    if kind == "memory":
        return MemoryStore(clock=clock)
    return SQLiteStore(tmp_path / "i.sqlite3", clock=clock)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_an_interrupted_batch_stores_what_finished_and_releases_the_rest(
    kind: str, tmp_path: Path
) -> None:
    clock = ManualClock()  # never moved: nothing below is the work of a lease running out
    store = _sync_store(kind, tmp_path, clock)
    records = _records([1, 2, 3, 4, 5, 6])
    keys = _keys(records, CONFIG)
    runs: list[int] = []

    def handle(record: dict[str, Any]) -> str:
        order = _order(record)
        runs.append(order)
        if order == 3:
            raise ValueError("card declined")
        if order == 4:
            raise KeyboardInterrupt
        return f"ok {order}"

    with pytest.raises(KeyboardInterrupt):
        process_batch(records, handle, store=store, config=CONFIG)

    assert runs == [1, 2, 3, 4]
    for key, value in zip(keys[:2], ["ok 1", "ok 2"], strict=True):
        record = store.get(key)
        assert record is not None
        assert record.status is Status.COMPLETED
        assert record.outcome is not None
        assert decode_outcome(record.outcome) == value
    for key in keys[2:]:
        assert store.get(key) is None  # released: the redelivery runs them at once
    again = process_batch(records, lambda r: f"again {_order(r)}", store=store, config=CONFIG)
    assert [item.status for item in again.items] == [ItemStatus.REPLAYED] * 2 + [ItemStatus.RUN] * 4
    assert [item.value for item in again.items] == [
        "ok 1",
        "ok 2",
        "again 3",
        "again 4",
        "again 5",
        "again 6",
    ]


def _async_store(kind: str, tmp_path: Path, clock: ManualClock) -> Any:
    if kind == "async-memory":
        return AsyncMemoryStore(clock=clock)
    return AsyncSQLiteStore(tmp_path / "i.sqlite3", clock=clock)


@pytest.mark.parametrize("cancels", [1, 2])
@pytest.mark.parametrize("kind", ["async-memory", "async-sqlite"])
def test_a_cancelled_async_batch_stores_what_finished_and_releases_the_rest(
    kind: str, cancels: int, tmp_path: Path
) -> None:
    clock = ManualClock()
    records = _records([1, 2, 3, 4, 5, 6])
    keys = _keys(records, CONFIG)
    runs: list[int] = []

    async def main() -> tuple[list[Any], list[ItemStatus]]:
        store = _async_store(kind, tmp_path, clock)
        started = asyncio.Event()

        async def handle(record: dict[str, Any]) -> str:
            order = _order(record)
            runs.append(order)
            if order == 3:
                raise ValueError("card declined")
            if order == 4:
                started.set()
                await asyncio.sleep(3600)
            return f"ok {order}"

        task = asyncio.ensure_future(
            process_batch_async(records, handle, store=store, config=CONFIG)
        )
        await started.wait()
        task.cancel()
        if cancels == 2:
            # Cancelled again while it stores and releases: those writes still finish.
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stored = [await store.get(key) for key in keys]

        async def again(record: dict[str, Any]) -> str:
            return f"again {_order(record)}"

        second = await process_batch_async(records, again, store=store, config=CONFIG)
        if kind == "async-sqlite":
            store.close()
        return stored, [item.status for item in second.items]

    stored, second = asyncio.run(main())
    assert runs == [1, 2, 3, 4]
    for record, value in zip(stored[:2], ["ok 1", "ok 2"], strict=True):
        assert record is not None
        assert record.status is Status.COMPLETED
        assert decode_outcome(record.outcome) == value
    assert stored[2:] == [None] * 4
    assert second == [ItemStatus.REPLAYED] * 2 + [ItemStatus.RUN] * 4


# -- one key, two payloads, one batch (issue 9, item 4) ---------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_one_key_with_another_payload_in_the_same_batch_is_key_reuse(
    kind: str, tmp_path: Path
) -> None:
    store = _sync_store(kind, tmp_path, ManualClock())
    runs: list[int] = []

    def handle(record: dict[str, Any]) -> int:
        amount = int(json.loads(record["body"])["amount"])
        runs.append(amount)
        return amount

    differ = process_batch(_records([7, 7], [5, 6]), handle, store=store, config=VALIDATED)
    assert [item.status for item in differ.items] == [ItemStatus.RUN, ItemStatus.FAILED]
    assert isinstance(differ.items[1].error, IdempotencyKeyReuseError)
    assert differ.items[0].value == 5
    assert differ.batch_item_failures() == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}

    same = process_batch(_records([8, 8], [5, 5]), handle, store=store, config=VALIDATED)
    assert [item.status for item in same.items] == [ItemStatus.RUN, ItemStatus.REPLAYED]
    assert same.items[1].value == 5

    # Stored before with amount 5: in one batch, each record meets that record.
    mixed = process_batch(_records([7, 7, 7], [6, 5, 6]), handle, store=store, config=VALIDATED)
    assert [item.status for item in mixed.items] == [
        ItemStatus.FAILED,
        ItemStatus.REPLAYED,
        ItemStatus.FAILED,
    ]
    assert isinstance(mixed.items[0].error, IdempotencyKeyReuseError)
    assert isinstance(mixed.items[2].error, IdempotencyKeyReuseError)
    assert mixed.items[1].value == 5
    assert runs == [5, 5]


@pytest.mark.parametrize("kind", ["async-memory", "async-sqlite"])
def test_one_key_with_another_payload_in_the_same_async_batch_is_key_reuse(
    kind: str, tmp_path: Path
) -> None:
    runs: list[int] = []

    async def handle(record: dict[str, Any]) -> int:
        amount = int(json.loads(record["body"])["amount"])
        runs.append(amount)
        return amount

    async def main() -> tuple[Any, Any]:
        store = _async_store(kind, tmp_path, ManualClock())
        differ = await process_batch_async(
            _records([7, 7], [5, 6]), handle, store=store, config=VALIDATED
        )
        same = await process_batch_async(
            _records([8, 8], [5, 5]), handle, store=store, config=VALIDATED
        )
        if kind == "async-sqlite":
            store.close()
        return differ, same

    differ, same = asyncio.run(main())
    assert [item.status for item in differ.items] == [ItemStatus.RUN, ItemStatus.FAILED]
    assert isinstance(differ.items[1].error, IdempotencyKeyReuseError)
    assert [item.status for item in same.items] == [ItemStatus.RUN, ItemStatus.REPLAYED]
    assert same.items[1].value == 5
    assert runs == [5, 5]


# -- a release that fails after the outcomes are stored ----------------------------------


def test_a_failed_release_after_the_outcomes_are_stored_does_not_fail_the_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The outcomes of the records that ran are stored; giving back the claim of
    # the record that failed then fails (here: SQLite refuses every DELETE).
    # The batch's result still comes back: it is true, and a raise would make
    # the caller redeliver records that already ran. The failed record's claim
    # is held until its lease ends, which the warning says.
    path = tmp_path / "release-fails.sqlite3"
    store = SQLiteStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER no_deletes BEFORE DELETE ON onceonly "
            "BEGIN SELECT RAISE(ABORT, 'deletes refused by the test'); END"
        )

    def handle(record: dict[str, Any]) -> int:
        if record["id"] == 2:
            raise ValueError("record 2 fails")
        return int(record["id"])

    config = IdempotencyConfig(event_key_jmespath="id")
    result = process_batch([{"id": i} for i in range(3)], handle, store=store, config=config)

    assert [item.status for item in result.items] == [
        ItemStatus.RUN,
        ItemStatus.RUN,
        ItemStatus.FAILED,
    ]
    assert "could not release 1 claim" in caplog.text
    again = process_batch([{"id": 0}, {"id": 1}], handle, store=store, config=config)
    assert [item.status for item in again.items] == [ItemStatus.REPLAYED, ItemStatus.REPLAYED]


class _AsyncRenewalsStore(AsyncMemoryStore):
    """An AsyncMemoryStore noting when (on its clock) each renewal came and how it went.

    With ``stall_at=n`` the n-th renewal first moves the clock past every lease;
    with ``broken=True`` every renewal raises a RuntimeError (not a store error).
    """

    def __init__(self, clock: ManualClock, stall_at: int = 0, broken: bool = False) -> None:
        super().__init__(clock=clock)
        self.clock = clock
        self.stall_at = stall_at
        self.broken = broken
        self.renewals: list[tuple[int, str, bool]] = []

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        if self.broken:
            raise RuntimeError("renew broke (test)")
        if len(self.renewals) + 1 == self.stall_at:
            self.clock.advance(60_000)
        answer = await super().renew(key, token=token, lease_ms=lease_ms)
        self.renewals.append((self.clock.now, key, answer))
        return answer


def _run_async_batch(
    monkeypatch: pytest.MonkeyPatch,
    store: _AsyncRenewalsStore,
    records: list[dict[str, Any]],
    horizon_ms: int,
    wait_for_horizon: bool,
) -> tuple[Any, VirtualAsyncHeartbeatTime]:
    """process_batch_async with the heartbeat in virtual time; the last record waits for
    the heartbeat to reach the horizon (or, without wait_for_horizon, yields a while)."""

    async def main() -> tuple[Any, VirtualAsyncHeartbeatTime]:
        virtual = VirtualAsyncHeartbeatTime(store.clock, horizon_ms)
        monkeypatch.setattr(onceonly._async, "asyncio", virtual)
        last = _order(records[-1])

        async def handle(record: dict[str, Any]) -> dict[str, int]:
            if _order(record) == last:
                if wait_for_horizon:
                    await asyncio.wait_for(virtual.reached.wait(), 10)
                else:
                    for _ in range(50):  # a heartbeat still beating would reach the horizon
                        await asyncio.sleep(0)
            return {"done": _order(record)}

        return await process_batch_async(records, handle, store=store, config=HEARTBEAT), virtual

    return asyncio.run(main())


@pytest.mark.parametrize("orders", [[1], [1, 2, 3]], ids=["one-record", "three-records"])
def test_an_async_batch_heartbeat_renews_every_claim_every_third_of_the_lease_in_virtual_time(
    monkeypatch: pytest.MonkeyPatch, orders: list[int]
) -> None:
    records = _records(orders)
    keys = _keys(records, HEARTBEAT)
    clock = ManualClock()
    start = clock.now
    store = _AsyncRenewalsStore(clock)

    result, virtual = _run_async_batch(monkeypatch, store, records, 2700, wait_for_horizon=True)

    assert [item.status for item in result.items] == [ItemStatus.RUN] * len(orders)
    assert virtual.sleeps_s[:5] == [0.5] * 5  # a 1.5 s lease is renewed every 500 ms
    assert store.renewals == [(start + 500 * i, key, True) for i in range(1, 6) for key in keys]
    for key in keys:
        record = asyncio.run(store.get(key))
        assert record is not None
        assert record.status is Status.COMPLETED


def test_an_async_batch_heartbeat_stops_once_every_claim_is_found_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records([1, 2])
    keys = _keys(records, HEARTBEAT)
    clock = ManualClock()
    start = clock.now
    store = _AsyncRenewalsStore(clock, stall_at=5)  # the third beat's first renewal

    with caplog.at_level("WARNING", logger="onceonly"):
        result, virtual = _run_async_batch(
            monkeypatch, store, records, 600_000, wait_for_horizon=False
        )

    assert not virtual.reached.is_set()  # it stopped beating
    assert virtual.sleeps_s == [0.5] * 3  # after its third beat
    late = start + 60_000 + 1500
    assert store.renewals == [
        *((start + 500, key, True) for key in keys),
        *((start + 1000, key, True) for key in keys),
        *((late, key, False) for key in keys),
    ]
    lost = [r.getMessage() for r in caplog.records if "heartbeat found the lease" in r.message]
    assert lost == [f"onceonly: heartbeat found the lease on key {key} lost" for key in keys]
    assert [item.value for item in result.items] == [{"done": 1}, {"done": 2}]


def test_an_async_batch_heartbeat_that_breaks_is_logged_and_the_batch_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records([1, 2])
    store = _AsyncRenewalsStore(ManualClock(), broken=True)

    with caplog.at_level("WARNING", logger="onceonly"):
        result, _ = _run_async_batch(monkeypatch, store, records, 600_000, wait_for_horizon=False)

    assert [item.status for item in result.items] == [ItemStatus.RUN] * 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "onceonly: heartbeat of a batch failed (RuntimeError)"
    ]


def test_a_batch_heartbeat_over_a_lease_under_3_ms_beats_every_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _records([1])
    clock = ManualClock()
    store = _RenewalsStore(clock)
    virtual = VirtualHeartbeatTime(clock, 1)  # one beat, then the horizon
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    def handle(record: dict[str, Any]) -> None:
        assert virtual.reached.wait(10)

    process_batch(records, handle, store=store, config=HEARTBEAT, lease_ms=2)
    assert virtual.waits_s[:2] == [0.001, 0.001]  # a third of 2 ms is 0: one ms at least


class _WatchedHeartbeatStore(_RenewalsStore):
    """Notes the heartbeat's thread at its first beat, and whether that thread had
    ended when the outcomes came to be stored (it is given ``LONG`` seconds to end)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.thread: threading.Thread | None = None
        self.beating_when_stored: list[bool] = []

    def renew_many(self, calls: list[RenewCall]) -> list[bool | Exception]:
        self.thread = threading.current_thread()
        return super().renew_many(calls)

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        assert self.thread is not None
        self.thread.join(LONG)
        self.beating_when_stored.append(self.thread.is_alive())
        return super().complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms)


LONG = 10  # seconds: an upper bound on what comes at once when the code is right


def test_a_batch_heartbeat_stops_before_the_outcomes_are_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The heartbeat beats in virtual time until its next wait would pass the
    # horizon, and waits there. Once the records have run it must stop: its
    # thread ends before the outcomes are stored, not when the batch returns.
    clock = ManualClock()
    store = _WatchedHeartbeatStore(clock)
    virtual = VirtualHeartbeatTime(clock, 1200)
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    def handle(record: dict[str, Any]) -> dict[str, int]:
        if _order(record) == 2:
            assert virtual.reached.wait(LONG)
        return {"done": _order(record)}

    result = process_batch(_records([1, 2]), handle, store=store, config=HEARTBEAT)

    assert [item.status for item in result.items] == [ItemStatus.RUN] * 2
    assert len(store.beats) == 2  # at 500 and 1000 ms
    assert store.beating_when_stored == [False, False]


class _SlowRenewStore(MemoryStore):
    """A MemoryStore whose renewals each take 0.2 s of real time; ``renewing`` is set
    when the first starts, ``renewed`` when one has finished."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.renewing = threading.Event()
        self.renewed = threading.Event()

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        self.renewing.set()
        time.sleep(0.2)
        answer = super().renew(key, token=token, lease_ms=lease_ms)
        self.renewed.set()
        return answer


def test_a_batch_returns_only_after_its_heartbeat_thread_has_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A renewal is in flight when the records end. The outcomes are stored
    # without waiting for it (it is fenced by the records' state), but the
    # batch does not return and leave a thread of its own still talking to
    # the store: process_batch waits for the heartbeat to end.
    clock = ManualClock()
    store = _SlowRenewStore(clock)
    virtual = VirtualHeartbeatTime(clock, 600_000)
    monkeypatch.setattr(onceonly._sync, "threading", virtual.module)

    def handle(record: dict[str, Any]) -> dict[str, int]:
        assert store.renewing.wait(LONG)
        return {"done": _order(record)}

    result = process_batch(_records([1]), handle, store=store, config=HEARTBEAT)

    assert store.renewed.is_set()
    assert [item.status for item in result.items] == [ItemStatus.RUN]


class _SlowCompleteStore(_AsyncRenewalsStore):
    """Its complete yields to the event loop a while before it stores the outcome."""

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        for _ in range(20):
            await asyncio.sleep(0)
        return await super().complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms)


def test_an_async_batch_heartbeat_stops_before_the_outcomes_are_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The records run without yielding, so the heartbeat has not beaten yet when
    # the outcomes are stored; it must stop then, not beat on while they land.
    store = _SlowCompleteStore(ManualClock())

    async def main() -> Any:
        virtual = VirtualAsyncHeartbeatTime(store.clock, 600_000)
        monkeypatch.setattr(onceonly._async, "asyncio", virtual)

        async def handle(record: dict[str, Any]) -> dict[str, int]:
            return {"done": _order(record)}

        return await process_batch_async(_records([1, 2]), handle, store=store, config=HEARTBEAT)

    result = asyncio.run(main())
    assert [item.status for item in result.items] == [ItemStatus.RUN] * 2
    assert store.renewals == []
