"""Tests that kill the DynamoDB stores' surviving mutants of the mutation pass (issue 17)."""

from __future__ import annotations

import json
import signal
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

import botocore.waiter
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PowertoolsConfig
from botocore.awsrequest import AWSResponse

from dynamodb_harness import ErrorServer, MotoServer, client_for
from onceonly import CorruptRecordError, IdempotencyConfigError, IdempotencyStoreError
from onceonly.records import Acquired, Found, Status, new_token
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore
from onceonly.stores.protocol import ClaimCall
from testkit import ManualClock

LEASE = 60_000
TTL = 60_000
MINE = "0123456789abcdef" * 2


def _claim(store: DynamoDBStore, key: str, token: str, lease_ms: int = LEASE) -> Any:
    return store.claim(key, token=token, lease_ms=lease_ms, ttl_ms=TTL, fingerprint=None)


def _item(client: Any, table: str, key: str) -> dict[str, Any] | None:
    """The item under ``key`` (default layout) as DynamoDB holds it."""
    item: dict[str, Any] | None = client.get_item(
        TableName=table, Key={"id": {"S": key}}, ConsistentRead=True
    ).get("Item")
    return item


@pytest.fixture
def table(moto_server: MotoServer) -> str:
    """A fresh table in the default layout."""
    return moto_server.fresh_table(moto_server.shared_client)


# -- store.py: complete retried, release by another token, release on a corrupt item ------


def test_a_retried_complete_succeeds_until_its_record_ends_and_not_at_its_deadline(
    moto_server: MotoServer, table: str
) -> None:
    clock = ManualClock()
    store = DynamoDBStore(table, client=moto_server.shared_client, clock=clock)
    token = new_token()
    _claim(store, "k", token)
    assert store.complete("k", token=token, outcome=b"j1", ttl_ms=5_000) is True
    # Its reply lost, the same complete again finds its own COMPLETED item: done,
    # while the record lives (deadline > now on the owner's clock) ...
    clock.advance(4_999)
    assert store.complete("k", token=token, outcome=b"j1", ttl_ms=5_000) is True
    # ... and not once the record has ended, exactly at its deadline.
    clock.advance(1)
    assert store.complete("k", token=token, outcome=b"j1", ttl_ms=5_000) is False


def test_a_release_by_another_token_is_done_once_the_holder_ends_with_the_allowance(
    moto_server: MotoServer, table: str
) -> None:
    clock = ManualClock()
    client = moto_server.shared_client
    store = DynamoDBStore(table, client=client, clock=clock, clock_skew_ms=500)
    _claim(store, "k", new_token(), lease_ms=1_000)
    held = _item(client, table, "k")
    clock.advance(1_000 + 499)  # past the lease, not past the allowance: still held
    assert store.release("k", token=new_token()) is False
    clock.advance(1)  # deadline + clock_skew_ms == now: ended, as a claim judges it
    assert store.release("k", token=new_token()) is True
    assert _item(client, table, "k") == held  # another token's item is never deleted


def test_a_release_that_meets_a_corrupt_item_is_not_done_and_leaves_it(
    moto_server: MotoServer, table: str
) -> None:
    client = moto_server.shared_client
    corrupt = {"id": {"S": "k"}, "status": {"S": "X"}, "token": {"S": "a" * 32}}
    corrupt["deadline"] = {"N": "1"}
    client.put_item(TableName=table, Item=corrupt)
    store = DynamoDBStore(table, client=client)
    assert store.release("k", token=new_token()) is False
    assert _item(client, table, "k") == corrupt


# -- async_store.py -----------------------------------------------------------------------


def test_the_async_store_runs_32_calls_at_once_by_default(moto_server: MotoServer) -> None:
    store = AsyncDynamoDBStore("tbl", client=moto_server.shared_client)
    assert store.max_workers == 32
    assert (
        AsyncDynamoDBStore("tbl", client=moto_server.shared_client, max_workers=5).max_workers == 5
    )


def test_the_async_stores_create_table_takes_its_options_max_workers_included(
    moto_server: MotoServer,
) -> None:
    client = moto_server.shared_client
    name = f"am-{uuid.uuid4().hex[:12]}"
    assert AsyncDynamoDBStore.create_table(name, client=client, max_workers=4) is True
    assert AsyncDynamoDBStore.create_table(name, client=client, max_workers=4) is False
    described = client.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]


# -- items.py: options ----------------------------------------------------------------------


def test_a_static_partition_value_of_exactly_2048_bytes_is_accepted_and_used(
    moto_server: MotoServer,
) -> None:
    client = moto_server.shared_client
    name = moto_server.fresh_table(client, sort_key_attr="sk")
    value = "é" * 1024  # 2048 bytes: DynamoDB's limit for a partition key, inclusive
    store = DynamoDBStore(name, client=client, sort_key_attr="sk", static_pk_value=value)
    assert store.static_pk_value == value
    token = new_token()
    assert _claim(store, "k", token) == Acquired()
    item = client.get_item(
        TableName=name, Key={"id": {"S": value}, "sk": {"S": "k"}}, ConsistentRead=True
    )["Item"]
    assert item["token"] == {"S": token}


def test_a_client_the_store_builds_has_the_documented_defaults(moto_server: MotoServer) -> None:
    store = DynamoDBStore("tbl", region_name="us-east-1", endpoint_url=moto_server.url)
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 10)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert config.max_pool_connections == 32
    store.close()


# -- items.py: records ----------------------------------------------------------------------


def test_an_item_without_a_token_is_a_corrupt_onceonly_record_not_a_powertools_one(
    moto_server: MotoServer, table: str
) -> None:
    client = moto_server.shared_client
    item = {"id": {"S": "k"}, "status": {"S": "P"}, "deadline": {"N": str(10**13)}}
    client.put_item(TableName=table, Item=item)
    store = DynamoDBStore(table, client=client)
    with pytest.raises(CorruptRecordError, match="a token that is not 32") as raised:
        store.get("k")
    assert "Powertools" not in str(raised.value)


@pytest.mark.parametrize("expiry_attr", ["expiration", "ttl"])
def test_a_record_powertools_wrote_is_read_under_the_stores_expiry_attribute(
    moto_server: MotoServer, expiry_attr: str
) -> None:
    # Powertools' own persistence layer writes the record (its TTL attribute
    # renamed alike in the second case); the store reads it as a record.
    client = moto_server.client()
    table = moto_server.fresh_table(client, expiry_attr=expiry_attr)
    layer = DynamoDBPersistenceLayer(table_name=table, boto3_client=client, expiry_attr=expiry_attr)
    layer.configure(PowertoolsConfig(), "charge")
    data = {"id": uuid.uuid4().hex}
    layer.save_inprogress(data, remaining_time_in_millis=60_000)
    layer.save_success(data, {"charged": True})
    (item,) = client.scan(TableName=table, ConsistentRead=True)["Items"]
    assert "token" not in item
    key = item["id"]["S"]

    clock = ManualClock(int(time.time() * 1000))
    store = DynamoDBStore(table, client=client, clock=clock, expiry_attr=expiry_attr)
    found = _claim(store, key, new_token())
    assert isinstance(found, Found)
    assert found.record.status is Status.COMPLETED
    assert found.record.outcome == b"j" + item["data"]["S"].encode()
    assert found.record.deadline_ms == int(item[expiry_attr]["N"]) * 1000
    client.close()


# -- items.py: errors ---------------------------------------------------------------------


def test_a_request_dynamodb_rejects_as_invalid_names_the_key_schema(
    moto_server: MotoServer,
) -> None:
    # A store without the table's sort key: get() reads without the store's
    # schema check, and DynamoDB answers ValidationException.
    client = moto_server.shared_client
    name = moto_server.fresh_table(client, sort_key_attr="sk")
    store = DynamoDBStore(name, client=client)
    with pytest.raises(IdempotencyStoreError) as raised:
        store.get("k")
    text = str(raised.value)
    assert text.startswith(f"DynamoDB rejected the request (table {name}, key k): ")
    assert "check that key_attr and sort_key_attr match the table's key schema" in text


def test_another_error_says_dynamodb_failed_with_its_code() -> None:
    server = ErrorServer("InternalServerError", status=500)
    try:
        client = client_for(server.url, retries={"mode": "standard", "total_max_attempts": 1})
        with pytest.raises(IdempotencyStoreError) as raised:
            DynamoDBStore("tbl", client=client).get("k")
        client.close()
    finally:
        server.close()
    text = str(raised.value)
    assert text.startswith("DynamoDB failed (table tbl, key k): InternalServerError: ")
    assert "key_attr" not in text


# -- items.py: create_table -------------------------------------------------------------------


def test_create_table_matches_a_table_that_lists_its_sort_key_first(
    moto_server: MotoServer,
) -> None:
    # DynamoDB requires (and lists) the partition key first; moto, like some
    # DynamoDB-compatible servers, keeps the key schema in the order it was given.
    client = moto_server.shared_client
    name = f"rf-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "sk", "KeyType": "RANGE"},
            {"AttributeName": "id", "KeyType": "HASH"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    assert client.describe_table(TableName=name)["Table"]["KeySchema"][0]["KeyType"] == "RANGE"
    assert DynamoDBStore.create_table(name, client=client, sort_key_attr="sk") is False
    with pytest.raises(IdempotencyConfigError, match="key schema"):
        DynamoDBStore.create_table(name, client=client)


class _Creating:
    """A real client whose DescribeTable answers say CREATING for the first ``polls`` times
    after its CreateTable (botocore's after-call hook edits the parsed answer), and whose
    table waiter's pauses are recorded instead of slept (botocore.waiter's ``time``).
    """

    def __init__(self, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, polls: int):
        self.client = moto_server.client()
        self.left = polls
        self.created = False
        self.describes = 0
        self.pauses: list[float] = []
        monkeypatch.setattr(
            botocore.waiter, "time", types.SimpleNamespace(sleep=self.pauses.append)
        )
        events = self.client.meta.events
        events.register("after-call.dynamodb.CreateTable", self._created)
        events.register("after-call.dynamodb.DescribeTable", self._describe)

    def _created(self, **_: Any) -> None:
        self.created = True

    def _describe(self, parsed: dict[str, Any], **_: Any) -> None:
        if self.created and "Table" in parsed:
            self.describes += 1
            if self.left > 0:
                self.left -= 1
                parsed["Table"]["TableStatus"] = "CREATING"


def test_create_table_waits_for_the_table_polling_every_2_seconds(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    creating = _Creating(moto_server, monkeypatch, polls=3)
    name = f"wt-{uuid.uuid4().hex[:12]}"
    assert DynamoDBStore.create_table(name, client=creating.client) is True
    assert creating.pauses == [2, 2, 2]  # three polls said CREATING, the fourth ACTIVE
    assert creating.describes == 5  # the waiter's four, then the schema check's
    creating.client.close()


def test_create_table_gives_up_on_a_table_still_creating_after_3_minutes(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    creating = _Creating(moto_server, monkeypatch, polls=10_000)
    name = f"wg-{uuid.uuid4().hex[:12]}"
    with pytest.raises(IdempotencyStoreError, match=f"table {name}.*WaiterError"):
        DynamoDBStore.create_table(name, client=creating.client)
    assert creating.describes == 90  # 90 polls, 2 s apart: 3 minutes
    assert creating.pauses == [2] * 89
    creating.client.close()


# -- many.py: max_parallel and the client's connection pool -------------------------------


@pytest.mark.parametrize("max_parallel", [1, 2, 255, 256])
def test_max_parallel_accepts_1_to_256(moto_server: MotoServer, max_parallel: int) -> None:
    client = moto_server.client(max_pool_connections=256)
    assert DynamoDBStore("tbl", client=client, max_parallel=max_parallel).max_parallel == (
        max_parallel
    )
    client.close()


@pytest.mark.parametrize(
    ("pool", "max_parallel"),
    [(1, 1), (2, 2), (-1, 10), (2.5, 10), (True, 10)],
    ids=["pool-1", "pool-2", "pool-minus-1", "pool-2.5", "pool-True"],
)
def test_only_a_positive_whole_connection_pool_caps_max_parallel(
    moto_server: MotoServer, pool: Any, max_parallel: int
) -> None:
    # botocore takes any max_pool_connections; only a positive int is a pool size.
    client = moto_server.client(max_pool_connections=pool)
    assert DynamoDBStore("tbl", client=client).max_parallel == max_parallel
    client.close()


# -- many.py: which thread runs a batch's calls ----------------------------------------------


class _Log:
    """What a client's PutItems do, in order, seen by botocore's event hooks, and marks the
    test adds. ``before[key]`` runs ahead of that key's PutItem (an answer it returns is the
    call's answer); ``after[key]`` once it is answered; ``on_start(n)`` as the n-th starts.
    """

    def __init__(self, client: Any) -> None:
        self.events: list[tuple[str, str]] = []
        self.threads: list[threading.Thread] = []
        self.before: dict[str, Callable[[], Any]] = {}
        self.after: dict[str, Callable[[], None]] = {}
        self.on_start: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        events = client.meta.events
        events.register("before-call.dynamodb.PutItem", self._before)
        events.register("after-call.dynamodb.PutItem", self._after)

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        key = context["test_key"] = json.loads(params["body"])["Item"]["id"]["S"]
        with self._lock:
            self.events.append(("start", key))
            self.threads.append(threading.current_thread())
            started = len(self.threads)
        if self.on_start is not None:
            self.on_start(started)
        hook = self.before.get(key)
        return None if hook is None else hook()

    def _after(self, context: dict[str, Any], **_: Any) -> None:
        key = context["test_key"]
        with self._lock:
            self.events.append(("end", key))
        hook = self.after.get(key)
        if hook is not None:
            hook()

    def mark(self, what: str) -> None:
        with self._lock:
            self.events.append((what, ""))

    def started(self) -> list[str]:
        return [key for what, key in self.events if what == "start"]


def _store(moto_server: MotoServer, **options: Any) -> tuple[DynamoDBStore, _Log]:
    """A store on a fresh table and a client of its own, its table already checked."""
    client = moto_server.client()
    store = DynamoDBStore(moto_server.fresh_table(client), client=client, **options)
    _claim(store, "warm", new_token())  # the one DescribeTable, before the log starts
    return store, _Log(client)


def _waiting_for(event: threading.Event) -> Callable[[], None]:
    def hook() -> None:
        assert event.wait(timeout=60)

    return hook


def _denied() -> tuple[AWSResponse, dict[str, Any]]:
    """DynamoDB's answer AccessDeniedException, as a before-call hook gives it."""
    parsed = {
        "Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    return AWSResponse("https://dynamodb", 400, {}, None), parsed


@pytest.mark.parametrize(
    ("max_parallel", "calls", "in_the_callers_thread"),
    [(1, 4, True), (2, 4, False), (10, 2, False), (10, 1, True)],
    ids=["max_parallel-1", "max_parallel-2", "two-calls", "one-call"],
)
def test_a_batch_runs_on_the_pool_unless_there_is_nothing_to_overlap(
    moto_server: MotoServer, max_parallel: int, calls: int, in_the_callers_thread: bool
) -> None:
    store, log = _store(moto_server, max_parallel=max_parallel)
    batch = [ClaimCall(f"t-{i}", MINE, LEASE, TTL, None) for i in range(calls)]
    assert store.claim_many(batch) == [Acquired()] * calls
    me = threading.current_thread()
    if in_the_callers_thread:
        assert log.threads == [me] * calls
        assert log.started() == [f"t-{i}" for i in range(calls)]  # one by one, in order
    else:
        assert me not in log.threads
        assert all(t.name.startswith("onceonly-dynamodb-batch") for t in log.threads)
    store.close()
    store.client.close()


# -- many.py: a batch that fails -------------------------------------------------------------

_TOO_LONG = "k" * 3000  # over DynamoDB's 2048-byte partition key: fails before any request


def test_a_corrupt_record_in_a_batch_stops_none_of_the_other_calls(
    moto_server: MotoServer,
) -> None:
    store, log = _store(moto_server, max_parallel=2)
    corrupt = {"id": {"S": "bad"}, "status": {"S": "X"}, "token": {"S": "a" * 32}}
    moto_server.shared_client.put_item(TableName=store.table_name, Item=corrupt)
    # The other claims wait until the corrupt one is answered: most are still
    # queued when it fails.
    answered = threading.Event()
    keys = [f"c-{i}" for i in range(20)]
    log.before = {key: _waiting_for(answered) for key in keys}
    log.after = {"bad": answered.set}
    batch = [ClaimCall("bad", MINE, LEASE, TTL, None)]
    batch += [ClaimCall(key, MINE, LEASE, TTL, None) for key in keys]
    answers = store.claim_many(batch)
    assert isinstance(answers[0], CorruptRecordError)
    assert answers[1:] == [Acquired()] * len(keys)
    assert sorted(log.started()) == sorted(["bad", *keys])
    store.close()
    store.client.close()


def test_a_failed_batch_starts_no_more_calls(moto_server: MotoServer) -> None:
    store, log = _store(moto_server, max_parallel=2)
    later = [f"f-{i}" for i in range(30)]
    batch = [ClaimCall(_TOO_LONG, MINE, LEASE, TTL, None)]
    batch += [ClaimCall(key, MINE, LEASE, TTL, None) for key in later]
    with pytest.raises(IdempotencyStoreError, match="over DynamoDB's limit"):
        store.claim_many(batch)
    store.close()  # lets the calls under way end; a call still queued would run now
    # Only the calls the two threads had taken when the batch saw the failure
    # ran (a few); the batch cancelled the rest.
    assert len(log.started()) < len(later), log.started()
    store.client.close()


def test_a_batch_interrupted_by_ctrl_c_starts_no_more_calls(moto_server: MotoServer) -> None:
    store, log = _store(moto_server, max_parallel=2)
    main = threading.main_thread()
    assert threading.current_thread() is main

    def ctrl_c(started: int) -> None:
        # The third call starts once one of the first two has had its answer:
        # by then the caller waits for the batch. Ctrl-C reaches it there.
        if started == 3:
            signal.pthread_kill(main.ident, signal.SIGINT)  # type: ignore[arg-type]

    log.on_start = ctrl_c
    later = [f"i-{i}" for i in range(30)]
    with pytest.raises(KeyboardInterrupt):
        store.claim_many([ClaimCall(key, MINE, LEASE, TTL, None) for key in later])
    store.close()  # lets the calls under way end; a call still queued would run now
    assert len(log.started()) < len(later), log.started()
    store.client.close()


def test_no_call_of_a_failed_batch_is_still_running_when_it_raises(
    moto_server: MotoServer,
) -> None:
    # The first call fails (DynamoDB refuses it) while the second is in flight:
    # claim_many raises only once the second has its answer.
    store, log = _store(moto_server, max_parallel=2)
    second_started, first_answered = threading.Event(), threading.Event()

    def refused() -> Any:
        assert second_started.wait(timeout=60)
        return _denied()

    def second() -> None:
        second_started.set()
        assert first_answered.wait(timeout=60)

    log.before = {"first": refused, "second": second}
    log.after = {"first": first_answered.set}
    batch = [
        ClaimCall("first", MINE, LEASE, TTL, None),
        ClaimCall("second", MINE, LEASE, TTL, None),
    ]
    with pytest.raises(IdempotencyStoreError, match="AccessDeniedException"):
        store.claim_many(batch)
    log.mark("raised")
    store.close()
    assert ("end", "second") in log.events
    assert log.events[-1] == ("raised", "")
    store.client.close()


def test_closing_a_store_twice_is_harmless(moto_server: MotoServer) -> None:
    used, _ = _store(moto_server, max_parallel=2)
    batch = [ClaimCall(f"x-{i}", MINE, LEASE, TTL, None) for i in range(3)]
    assert used.claim_many(batch) == [Acquired()] * 3  # its pool of threads is made
    used.close()
    used.close()
    assert used.claim_many(batch[:2]) == [Acquired()] * 2  # a new pool, after close
    used.close()
    used.client.close()
