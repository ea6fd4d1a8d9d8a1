"""DynamoDBStore's claim_many / complete_many / release_many / renew_many: calls side by side.

A record batch's conditional calls run on a bounded pool of the store's own
threads (stores/dynamodb/many.py). These tests hold them to the answers the
one-by-one fallback of stores/protocol.py gives on the same items (each
answer in its place, CorruptRecordError in its place, any other error failing
the batch), and count the calls in flight with botocore's own event hooks.
Everything runs over HTTP against moto's server (dynamodb_harness.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from dynamodb_harness import ErrorServer, MotoServer, client_for
from onceonly import (
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencyStoreError,
)
from onceonly.batch import process_batch, process_batch_async
from onceonly.records import Acquired, Found, new_token
from onceonly.stores import protocol
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore, OutcomeTooLargeError
from onceonly.stores.protocol import ClaimCall, CompleteCall, ReleaseCall, RenewCall
from testkit import ManualClock

LEASE = 60_000
TTL = 600_000
MINE = "0123456789abcdef" * 2
OTHER = "fedcba9876543210" * 2
WRITES = ("PutItem", "UpdateItem", "DeleteItem")


def _one_by_one(store: DynamoDBStore) -> Any:
    """The same store's single calls without its ``*_many``: protocol.py's fallback runs them."""
    return types.SimpleNamespace(
        claim=store.claim, complete=store.complete, release=store.release, renew=store.renew
    )


def _seed(client: Any, table: str, clock: ManualClock) -> None:
    """The items of a mixed batch, written as DynamoDB holds them (keys k-*)."""
    now = clock()

    def put(key: str, **fields: Any) -> None:
        client.put_item(TableName=table, Item={"id": {"S": key}, **fields})

    live = {"N": str(now + LEASE)}
    ended = {"N": str(now - 1)}
    put("k-done", status={"S": "C"}, token={"S": OTHER}, deadline=live, outcome={"B": b"j1"})
    put("k-busy", status={"S": "P"}, token={"S": OTHER}, deadline=live)
    put("k-own", status={"S": "P"}, token={"S": MINE}, deadline=live)
    put("k-orphan", status={"S": "P"}, token={"S": OTHER}, deadline=ended)
    put("k-corrupt", status={"S": "X"}, token={"S": OTHER}, deadline=ended)
    put("k-old-done", status={"S": "C"}, token={"S": MINE}, deadline=live, outcome={"B": b"j1"})


def _comparable(answers: Sequence[Any], table: str) -> list[Any]:
    """Answers with errors as (type, message) and the table's name taken out of messages."""
    return [
        (type(a).__name__, str(a).replace(table, "T")) if isinstance(a, Exception) else a
        for a in answers
    ]


@pytest.fixture
def twins(moto_server: MotoServer) -> Any:
    """Two stores on two tables seeded alike, on one manual clock, skew 0."""
    client = moto_server.shared_client
    clock = ManualClock()
    stores = []
    for _ in range(2):
        table = moto_server.fresh_table(client)
        _seed(client, table, clock)
        stores.append(DynamoDBStore(table, client=client, clock=clock, clock_skew_ms=0))
    yield stores
    for store in stores:
        store.close()
        client.delete_table(TableName=store.table_name)


def _same(twins: list[DynamoDBStore], run: Callable[[Any, DynamoDBStore], list[Any]]) -> list[Any]:
    side_by_side, one_by_one = twins
    parallel = _comparable(run(side_by_side, side_by_side), side_by_side.table_name)
    sequential = _comparable(run(_one_by_one(one_by_one), one_by_one), one_by_one.table_name)
    assert parallel == sequential
    return parallel


def test_a_mixed_batch_gets_the_answers_of_the_one_by_one_calls(twins: list[DynamoDBStore]) -> None:
    keys = ["k-new-1", "k-done", "k-busy", "k-own", "k-orphan", "k-corrupt", "k-new-2"]
    claims = [ClaimCall(k, MINE, LEASE, TTL, None) for k in keys]
    answers = _same(twins, lambda store, _: protocol.claim_many(store, claims))
    assert answers[0] == Acquired(takeover=False)
    assert isinstance(answers[1], Found)
    assert answers[1].record.token == OTHER
    assert isinstance(answers[2], Found)
    assert answers[2].record.token == OTHER
    assert answers[3] == Acquired(takeover=False)  # the caller's own claim, retried
    assert answers[4] == Acquired(takeover=True)
    assert answers[5][0] == "CorruptRecordError"
    assert "not an onceonly record" in answers[5][1]
    assert answers[6] == Acquired(takeover=False)

    renewals = [RenewCall(k, MINE, LEASE * 2) for k in ("k-new-1", "k-busy", "k-gone")]
    assert _same(twins, lambda store, _: protocol.renew_many(store, renewals)) == [
        True,
        False,
        False,
    ]
    completions = [
        CompleteCall("k-new-1", MINE, b"j1", TTL),
        CompleteCall("k-busy", MINE, b"j1", TTL),  # another token's claim: refused
        CompleteCall("k-old-done", MINE, b"j1", TTL),  # its own, retried: True again
        CompleteCall("k-gone", MINE, b"j1", TTL),
    ]
    assert _same(twins, lambda store, _: protocol.complete_many(store, completions)) == [
        True,
        False,
        True,
        False,
    ]
    releases = [ReleaseCall(k, MINE) for k in ("k-new-2", "k-busy", "k-gone", "k-done")]
    assert _same(twins, lambda store, _: protocol.release_many(store, releases)) == [
        True,
        False,
        True,  # nothing there: a retried release's job is done
        False,
    ]
    # What the batches left in the tables is the same too.
    gets = [store.get(k) for store in twins for k in keys if k != "k-corrupt"]
    assert gets[: len(gets) // 2] == gets[len(gets) // 2 :]


def test_a_call_that_fails_fails_the_batch_with_the_same_error(
    twins: list[DynamoDBStore],
) -> None:
    too_long = "k" * 3000  # over DynamoDB's 2048-byte partition key: refused before a request
    claims = [
        ClaimCall("k-corrupt", MINE, LEASE, TTL, None),
        ClaimCall("k-x1", MINE, LEASE, TTL, None),
        ClaimCall(too_long, MINE, LEASE, TTL, None),
        ClaimCall("k-x2", MINE, LEASE, TTL, None),
    ]
    errors = []
    for store in (twins[0], _one_by_one(twins[1])):
        with pytest.raises(IdempotencyStoreError) as caught:
            protocol.claim_many(store, claims)
        errors.append((type(caught.value), str(caught.value).replace(too_long, "K")))
    assert errors[0] == errors[1]

    twins[0].claim("k-x3", token=MINE, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    big = b"j" + b"x" * twins[0].max_outcome_bytes
    with pytest.raises(OutcomeTooLargeError):
        twins[0].complete_many(
            [CompleteCall("k-x3", MINE, b"j1", TTL), CompleteCall("k-x3", MINE, big, TTL)]
        )


def test_a_store_that_is_down_fails_the_whole_batch_as_one_by_one() -> None:
    server = ErrorServer("InternalServerError", status=500)
    try:
        client = client_for(server.url, retries={"mode": "standard", "total_max_attempts": 1})
        store = DynamoDBStore("tbl", client=client)
        claims = [ClaimCall(f"k-{i}", MINE, LEASE, TTL, None) for i in range(6)]
        errors = []
        for target in (store, _one_by_one(store)):
            with pytest.raises(IdempotencyStoreError) as caught:
                protocol.claim_many(target, claims)
            errors.append((type(caught.value), str(caught.value)))
        assert errors[0] == errors[1]
        store.close()
        client.close()
    finally:
        server.close()


def _warm(store: DynamoDBStore) -> None:
    """A first claim checks the table's key schema (DescribeTable, under a lock): done here."""
    store.claim("warm", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)


class InFlight:
    """The conditional writes a client has in flight, counted by botocore's event hooks.

    Each write waits at ``before-call`` until ``opened`` is set, so a pool
    that runs calls side by side shows as many in flight at once as it runs.
    """

    def __init__(self, client: Any) -> None:
        self.now = 0
        self.most = 0
        self.threads: set[threading.Thread] = set()
        self.opened = threading.Event()
        self.reached: bool | None = None
        self._lock = threading.Condition()
        for name in WRITES:
            client.meta.events.register(f"before-call.dynamodb.{name}", self._before)
            client.meta.events.register(f"after-call.dynamodb.{name}", self._after)

    def _before(self, **_: Any) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.current_thread())
            self._lock.notify_all()
        self.opened.wait(timeout=60)

    def _after(self, **_: Any) -> None:
        with self._lock:
            self.now -= 1

    def open_at(self, count: int) -> None:
        """Open the gate once ``count`` writes wait at it (fails if they never do)."""
        with self._lock:
            reached = self._lock.wait_for(lambda: self.now >= count, timeout=60)
        self.opened.set()
        self.reached = reached  # the test asserts it (an assert in this thread would be lost)


def test_process_batch_runs_the_claims_side_by_side_on_a_bounded_pool(
    moto_server: MotoServer,
) -> None:
    client = moto_server.client()
    table = moto_server.fresh_table(client)
    store = DynamoDBStore(table, client=client, max_parallel=4)
    _warm(store)
    flight = InFlight(client)
    records = [{"id": f"r-{i}"} for i in range(12)]

    def handler(record: dict[str, str]) -> str:
        return record["id"]

    opener = threading.Thread(target=flight.open_at, args=(4,))
    opener.start()
    result = process_batch(
        records, handler, store=store, config=IdempotencyConfig(event_key_jmespath="id")
    )
    opener.join()
    assert flight.reached, f"never 4 calls in flight at once (at most {flight.most})"
    assert [item.value for item in result.items] == [r["id"] for r in records]
    assert flight.most == 4  # 12 claims and 12 completions, never more than 4 at once
    assert len(flight.threads) == 4
    assert threading.current_thread() not in flight.threads
    store.close()
    assert not [t for t in flight.threads if t.is_alive()]  # close() ended them
    client.close()


def test_the_async_store_runs_a_batch_side_by_side_on_its_own_bounded_pool(
    moto_server: MotoServer,
) -> None:
    import asyncio

    client = moto_server.client()
    table = moto_server.fresh_table(client)
    store = AsyncDynamoDBStore(table, client=client, max_workers=4)
    _warm(store.sync)
    flight = InFlight(client)
    records = [{"id": f"r-{i}"} for i in range(12)]

    async def handler(record: dict[str, str]) -> str:
        return record["id"]

    opener = threading.Thread(target=flight.open_at, args=(4,))
    opener.start()
    result = asyncio.run(
        process_batch_async(
            records, handler, store=store, config=IdempotencyConfig(event_key_jmespath="id")
        )
    )
    opener.join()
    assert flight.reached, f"never 4 calls in flight at once (at most {flight.most})"
    assert [item.value for item in result.items] == [r["id"] for r in records]
    assert flight.most == 4
    assert len(flight.threads) == 4
    store.close()
    client.close()


def test_the_pool_is_made_on_first_use_reused_and_ended_by_close(moto_server: MotoServer) -> None:
    # Only threads that appear during this test count (another test's open store may have some).
    before = {t for t in threading.enumerate() if t.name.startswith("onceonly-dynamodb-batch")}

    def pool_threads() -> set[threading.Thread]:
        named = {t for t in threading.enumerate() if t.name.startswith("onceonly-dynamodb-batch")}
        return named - before

    client = moto_server.client()
    store = DynamoDBStore(moto_server.fresh_table(client), client=client, max_parallel=3)
    store.claim_many([ClaimCall("one", MINE, LEASE, TTL, None)])  # one call: no thread hop
    assert not pool_threads()
    seen = []
    for batch in range(3):
        calls = [ClaimCall(f"b{batch}-{i}", MINE, LEASE, TTL, None) for i in range(6)]
        assert store.claim_many(calls) == [Acquired()] * 6
        seen.append(pool_threads())
    assert 1 <= len(seen[0]) <= 3
    assert seen[0] == seen[1] == seen[2]  # the same threads serve every batch
    store.close()
    assert not pool_threads()
    # Used after close: a new pool, ended by the next close.
    assert store.release_many([ReleaseCall("b0-0", MINE), ReleaseCall("b0-1", MINE)]) == [True] * 2
    store.close()
    assert not pool_threads()
    client.close()


def test_an_unclosed_store_lets_the_interpreter_exit_cleanly(moto_server: MotoServer) -> None:
    table = moto_server.fresh_table(moto_server.shared_client)
    script = f"""
import sys
sys.path[:0] = {[p for p in sys.path if p]!r}
from dynamodb_harness import client_for
from onceonly.stores.dynamodb import DynamoDBStore
from onceonly.stores.protocol import ClaimCall
store = DynamoDBStore({table!r}, client=client_for({moto_server.url!r}))
calls = [ClaimCall(f"exit-{{i}}", {MINE!r}, 60000, 60000, None) for i in range(8)]
print(sum(1 for a in store.claim_many(calls) if type(a).__name__ == "Acquired"))
"""
    env = {**os.environ, "PYTHONWARNINGS": "error", "PYTHONDEVMODE": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "8", "")


@pytest.mark.parametrize("bad", [0, -1, 257, 2.0, "4", True, None])
def test_max_parallel_is_checked_at_construction(moto_server: MotoServer, bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="max_parallel"):
        DynamoDBStore("tbl", client=moto_server.shared_client, max_parallel=bad)


def test_max_parallel_is_capped_at_the_client_connection_pool(moto_server: MotoServer) -> None:
    small = moto_server.client(max_pool_connections=3)
    assert DynamoDBStore("tbl", client=small, max_parallel=10).max_parallel == 3
    shared = moto_server.shared_client  # 32 pooled connections
    assert DynamoDBStore("tbl", client=shared).max_parallel == 10
    assert DynamoDBStore("tbl", client=shared, max_parallel=32).max_parallel == 32
    assert DynamoDBStore("tbl", client=small, max_parallel=2).max_parallel == 2
    small.close()


def test_no_call_is_still_running_when_a_failed_batch_raises(
    moto_server: MotoServer,
) -> None:
    """A batch that fails has no call still running when claim_many raises."""
    client = moto_server.client()
    store = DynamoDBStore(moto_server.fresh_table(client), client=client, max_parallel=2)
    _warm(store)
    flight = InFlight(client)
    flight.opened.set()
    claims = [ClaimCall(f"e-{i}", MINE, LEASE, TTL, None) for i in range(5)]
    claims.insert(1, ClaimCall("k" * 3000, MINE, LEASE, TTL, None))
    with pytest.raises(IdempotencyStoreError):
        store.claim_many(claims)
    assert flight.now == 0
    store.close()
    client.close()
