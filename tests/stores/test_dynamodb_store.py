"""The DynamoDB store through moto's server: call counts, layout, skew, fencing, errors, storm.

Every test talks HTTP to moto's server with a real boto3 client (see
dynamodb_harness.py). The contract suite (test_store_contract.py) covers the
six operations on the default and the sort-key layout, sync and async; this
file covers what is particular to DynamoDB.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from dynamodb_harness import ErrorServer, MotoServer, client_for, closed_port
from onceonly import (
    CorruptRecordError,
    Event,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencySerializationError,
    IdempotencyStoreError,
    idempotent_function,
)
from onceonly.cli import main as cli_main
from onceonly.records import Acquired, Found, Record, Status, new_token
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore, OutcomeTooLargeError
from testkit import ManualClock

LEASE = 60_000
TTL = 60_000
FP = "ab12" * 16


class Calls:
    """The DynamoDB operations a client sends, in order, seen through botocore's own event hooks."""

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        self.threads: list[threading.Thread] = []
        client.meta.events.register("before-call.dynamodb.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)
        self.threads.append(threading.current_thread())

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


def _raw(client: Any, table: str, key: str, **layout: str) -> dict[str, Any] | None:
    """The item under ``key`` as DynamoDB holds it, read directly."""
    if "sort_key_attr" in layout:
        item_key = {
            layout["key_attr"]: {"S": layout["static_pk_value"]},
            layout["sort_key_attr"]: {"S": key},
        }
    else:
        item_key = {"id": {"S": key}}
    item: dict[str, Any] | None = client.get_item(
        TableName=table, Key=item_key, ConsistentRead=True
    ).get("Item")
    return item


@pytest.fixture
def table(moto_server: MotoServer) -> str:
    """A fresh table in the default layout (partition key id, TTL on expiration)."""
    return moto_server.fresh_table(moto_server.shared_client)


# -- call counts ---------------------------------------------------------------


def test_call_counts_first_duplicate_and_takeover(moto_server: MotoServer, table: str) -> None:
    client = moto_server.client()
    calls = Calls(client)
    clock = ManualClock()
    store = DynamoDBStore(table, client=client, clock=clock)
    runs: list[str] = []

    @idempotent_function(
        store=store,
        data="order",
        config=IdempotencyConfig(event_key_jmespath="id", lease_seconds=60),
    )
    def process(order: dict[str, Any]) -> dict[str, Any]:
        runs.append(order["id"])
        return {"charged": order["id"]}

    # First execution: the claim (PutItem) and the complete (UpdateItem),
    # after the store's one check of the table's key schema (DescribeTable).
    assert process({"id": "o-1"}) == {"charged": "o-1"}
    assert calls.take() == ["DescribeTable", "PutItem", "UpdateItem"]
    # A duplicate: the failed conditional PutItem returns the record. No GetItem.
    assert process({"id": "o-1"}) == {"charged": "o-1"}
    assert calls.take() == ["PutItem"]
    assert runs == ["o-1"]

    # A duplicate of a live claim: one PutItem, answered "in progress".
    key = process.key_for({"id": "o-2"})
    crashed = new_token()
    store.claim(key, token=crashed, lease_ms=5_000, ttl_ms=TTL, fingerprint=None)
    calls.take()
    with pytest.raises(IdempotencyAlreadyInProgressError):
        process({"id": "o-2"})
    assert calls.take() == ["PutItem"]

    # The crashed worker's lease (plus the skew allowance) passes: the next
    # delivery's PutItem returns the orphan, which is checked (a condition
    # cannot tell a valid token from a corrupt one, issue 9 item 11), a second
    # PutItem replaces it while it is still that item, then it completes.
    clock.advance(5_000 + store.clock_skew_ms)
    assert process({"id": "o-2"}) == {"charged": "o-2"}
    assert calls.take() == ["PutItem", "PutItem", "UpdateItem"]
    assert process.stats[Event.TAKEOVER] == 1
    assert runs == ["o-1", "o-2"]

    # Release after a failure: PutItem, then a conditional DeleteItem.
    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def fails(order: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails({"id": "o-3"})
    assert calls.take() == ["PutItem", "DeleteItem"]


def test_store_level_calls_are_one_each(moto_server: MotoServer, table: str) -> None:
    client = moto_server.client()
    calls = Calls(client)
    store = DynamoDBStore(table, client=client)
    tok = new_token()
    assert store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=FP) == Acquired()
    assert isinstance(
        store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=FP), Found
    )
    assert store.renew("k", token=tok, lease_ms=LEASE) is True
    assert store.complete("k", token=tok, outcome=b"j1", ttl_ms=TTL) is True
    assert store.get("k") is not None
    assert store.delete("k") is True
    assert calls.take() == [
        "DescribeTable",  # once per store, before its first claim
        "PutItem",
        "PutItem",
        "UpdateItem",
        "UpdateItem",
        "GetItem",
        "DeleteItem",
    ]


# -- layout --------------------------------------------------------------------


def test_items_use_the_powertools_layout(moto_server: MotoServer) -> None:
    client = moto_server.shared_client
    # A table made the way Powertools' docs make theirs: id (S), TTL on expiration.
    name = f"pt-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    assert DynamoDBStore.create_table(name, client=client) is False  # it matches

    clock = ManualClock(1_700_000_000_250)
    store = DynamoDBStore(name, client=client, clock=clock, clock_skew_ms=1_000)
    tok = new_token()
    store.claim("svc:1", token=tok, lease_ms=30_000, ttl_ms=TTL, fingerprint=FP)
    item = _raw(client, name, "svc:1")
    assert item == {
        "id": {"S": "svc:1"},
        "status": {"S": "P"},
        "token": {"S": tok},
        "deadline": {"N": "1700000030250"},
        "fingerprint": {"S": FP},
        # The lease end plus the skew allowance, in epoch seconds, rounded up.
        "expiration": {"N": "1700000032"},
    }
    clock.advance(1_000)
    assert store.complete("svc:1", token=tok, outcome=b"j[1]", ttl_ms=3_600_000) is True
    item = _raw(client, name, "svc:1")
    assert item is not None
    assert item["status"] == {"S": "C"}
    assert item["outcome"] == {"B": b"j[1]"}
    assert item["deadline"] == {"N": str(1_700_000_001_250 + 3_600_000)}
    assert item["expiration"] == {"N": "1700003603"}


def test_the_sort_key_layout_keeps_keys_under_one_partition_value(
    moto_server: MotoServer,
) -> None:
    client = moto_server.shared_client
    name = f"sk-{uuid.uuid4().hex[:12]}"
    assert DynamoDBStore.create_table(name, client=client, sort_key_attr="sk") is True
    described = client.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [
        {"AttributeName": "id", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    default = DynamoDBStore(name, client=client, sort_key_attr="sk")
    assert default.static_pk_value == f"idempotency#{name}"
    other = DynamoDBStore(name, client=client, sort_key_attr="sk", static_pk_value="svc-b")
    tok = new_token()
    default.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    layout = {"key_attr": "id", "sort_key_attr": "sk"}
    item = _raw(client, name, "k", static_pk_value=f"idempotency#{name}", **layout)
    assert item is not None
    assert (item["id"], item["sk"], item["token"]) == (
        {"S": f"idempotency#{name}"},
        {"S": "k"},
        {"S": tok},
    )
    # Another partition value is another key space.
    assert other.get("k") is None
    assert other.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
        Acquired()
    )


# -- the skew allowance --------------------------------------------------------


def test_the_skew_allowance_delays_takeover_and_expiry_but_not_the_owner(
    moto_server: MotoServer, table: str
) -> None:
    clock = ManualClock()
    store = DynamoDBStore(table, client=moto_server.shared_client, clock=clock, clock_skew_ms=500)
    owner, other = new_token(), new_token()
    t0 = clock()
    store.claim("k", token=owner, lease_ms=1_000, ttl_ms=TTL, fingerprint=None)
    held = Record(Status.IN_PROGRESS, owner, t0 + 1_000)

    # At the deadline another host, whose clock may run 500 ms ahead, still
    # finds the claim; Found.now_ms is the instant expiry is judged by.
    clock.advance(1_000)
    assert store.claim("k", token=other, lease_ms=1_000, ttl_ms=TTL, fingerprint=None) == Found(
        held, t0 + 500
    )
    assert store.get("k") == held
    # The owner judges its lease on its own clock, without the allowance.
    assert store.renew("k", token=owner, lease_ms=1_000) is False
    clock.advance(499)
    assert isinstance(
        store.claim("k", token=other, lease_ms=1_000, ttl_ms=TTL, fingerprint=None), Found
    )
    clock.advance(1)
    assert store.get("k") is None
    assert store.claim("k", token=other, lease_ms=1_000, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=True)
    )
    assert store.complete("k", token=owner, outcome=b"j1", ttl_ms=TTL) is False

    # A completed record replays until retention + allowance.
    assert store.complete("k", token=other, outcome=b"j2", ttl_ms=2_000) is True
    clock.advance(2_000)
    assert isinstance(
        store.claim("k", token=owner, lease_ms=1_000, ttl_ms=TTL, fingerprint=None), Found
    )
    clock.advance(500)
    assert store.claim("k", token=owner, lease_ms=1_000, ttl_ms=TTL, fingerprint=None) == (
        Acquired(takeover=False)
    )


# -- fencing -------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["complete", "release", "renew"])
def test_a_stale_owner_is_refused_and_the_new_owners_item_is_intact(
    moto_server: MotoServer, table: str, operation: str
) -> None:
    client = moto_server.shared_client
    clock = ManualClock()
    store = DynamoDBStore(table, client=client, clock=clock)
    stale, fresh = new_token(), new_token()
    store.claim("k", token=stale, lease_ms=1_000, ttl_ms=TTL, fingerprint=FP)
    clock.advance(1_000 + store.clock_skew_ms)
    assert store.claim("k", token=fresh, lease_ms=LEASE, ttl_ms=TTL, fingerprint=FP) == Acquired(
        takeover=True
    )
    before = _raw(client, table, "k")

    if operation == "complete":
        assert store.complete("k", token=stale, outcome=b"jstale", ttl_ms=TTL) is False
    elif operation == "release":
        assert store.release("k", token=stale) is False
    else:
        assert store.renew("k", token=stale, lease_ms=10 * LEASE) is False

    assert _raw(client, table, "k") == before
    assert store.complete("k", token=fresh, outcome=b"jfresh", ttl_ms=TTL) is True
    record = store.get("k")
    assert record is not None
    assert (record.status, record.token, record.outcome) == (Status.COMPLETED, fresh, b"jfresh")


# -- failures: throttling, unreachable, missing table, access -----------------


def _guarded(store: Any) -> tuple[Any, list[str]]:
    runs: list[str] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def process(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return "done"

    return process, runs


@pytest.mark.parametrize(
    "code",
    ["ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded"],
)
def test_throttling_fails_closed_with_the_cause_chained(code: str) -> None:
    server = ErrorServer(code)
    try:
        client = client_for(server.url, retries={"mode": "standard", "total_max_attempts": 1})
        process, runs = _guarded(DynamoDBStore("orders", client=client))
        with pytest.raises(IdempotencyStoreError, match="throttled") as raised:
            process({"id": "o-1"})
    finally:
        server.close()
    assert runs == []
    cause = raised.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["Error"]["Code"] == code
    assert server.requests == 1


def test_access_denied_names_the_permissions() -> None:
    server = ErrorServer("AccessDeniedException")
    try:
        client = client_for(server.url, retries={"mode": "standard", "total_max_attempts": 1})
        process, runs = _guarded(DynamoDBStore("orders", client=client))
        with pytest.raises(IdempotencyStoreError, match="dynamodb:PutItem") as raised:
            process({"id": "o-1"})
    finally:
        server.close()
    assert runs == []
    assert isinstance(raised.value.__cause__, ClientError)


def test_an_unreachable_endpoint_fails_closed() -> None:
    client = client_for(
        f"http://127.0.0.1:{closed_port()}",
        connect_timeout=1,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    process, runs = _guarded(DynamoDBStore("orders", client=client))
    with pytest.raises(IdempotencyStoreError, match="cannot reach DynamoDB") as raised:
        process({"id": "o-1"})
    assert runs == []
    assert isinstance(raised.value.__cause__, EndpointConnectionError)


def test_no_credentials_fail_closed_and_say_so(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _aws_env(monkeypatch, tmp_path, credentials=False)
    store = DynamoDBStore("orders", region_name="us-east-1", endpoint_url=moto_server.url)
    process, runs = _guarded(store)
    with pytest.raises(IdempotencyStoreError, match="no AWS credentials"):
        process({"id": "o-1"})
    assert runs == []


def test_a_missing_table_says_how_to_create_it(moto_server: MotoServer) -> None:
    process, runs = _guarded(DynamoDBStore("no-such-table", client=moto_server.shared_client))
    with pytest.raises(IdempotencyStoreError, match="onceonly dynamodb create-table") as raised:
        process({"id": "o-1"})
    assert runs == []
    assert isinstance(raised.value.__cause__, ClientError)


# -- corrupt items -------------------------------------------------------------

_LIVE = str(10**13)  # far past any clock here
_GOOD = {
    "status": {"S": "P"},
    "token": {"S": "a" * 32},
    "deadline": {"N": _LIVE},
}
CORRUPT = {
    "missing-status": {k: v for k, v in _GOOD.items() if k != "status"},
    "unknown-status": {**_GOOD, "status": {"S": "INPROGRESS"}},
    "bad-token": {**_GOOD, "token": {"S": "not-a-token"}},
    "numeric-token": {**_GOOD, "token": {"N": "7"}},
    "string-deadline": {**_GOOD, "deadline": {"S": _LIVE}},
    "fractional-deadline": {**_GOOD, "deadline": {"N": _LIVE + ".5"}},
    "completed-without-outcome": {**_GOOD, "status": {"S": "C"}},
    "outcome-as-string": {**_GOOD, "status": {"S": "C"}, "outcome": {"S": "j1"}},
    "in-progress-with-outcome": {**_GOOD, "outcome": {"B": b"j1"}},
    "bad-fingerprint": {**_GOOD, "fingerprint": {"S": "XYZ"}},
}


@pytest.mark.parametrize("shape", sorted(CORRUPT))
def test_an_item_of_the_wrong_shape_is_a_corrupt_record(
    moto_server: MotoServer, table: str, shape: str
) -> None:
    client = moto_server.shared_client
    client.put_item(TableName=table, Item={"id": {"S": "k"}, **CORRUPT[shape]})
    store = DynamoDBStore(table, client=client)
    process, runs = _guarded(store)
    key = process.key_for({"id": "k"})
    client.put_item(TableName=table, Item={"id": {"S": key}, **CORRUPT[shape]})

    with pytest.raises(CorruptRecordError):
        store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    with pytest.raises(CorruptRecordError):
        store.get("k")
    with pytest.raises(CorruptRecordError):
        process({"id": "k"})
    assert runs == []
    # The corrupt item is left as it was, and delete removes it.
    assert _raw(client, table, "k") == {"id": {"S": "k"}, **CORRUPT[shape]}
    assert store.delete("k") is True
    assert store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == (
        Acquired()
    )


def test_a_backend_without_all_old_on_failure_costs_a_get(
    moto_server: MotoServer, table: str
) -> None:
    # Old DynamoDB-compatible servers do not return the item on a failed
    # condition. botocore's after-call hook drops it from the real answer.
    client = moto_server.client()

    def drop_item(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("Item", None)

    client.meta.events.register("after-call.dynamodb.PutItem", drop_item)
    calls = Calls(client)
    store = DynamoDBStore(table, client=client)
    tok = new_token()
    store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    calls.take()
    found = store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert isinstance(found, Found)
    assert found.record.token == tok
    assert calls.take() == ["PutItem", "GetItem"]


# -- outcome size --------------------------------------------------------------


def test_an_outcome_over_the_limit_fails_before_the_write_naming_its_size(
    moto_server: MotoServer, table: str
) -> None:
    client = moto_server.client()
    calls = Calls(client)
    store = DynamoDBStore(table, client=client)
    tok = new_token()
    store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    calls.take()
    with pytest.raises(OutcomeTooLargeError, match=r"350001 bytes.*limit of 350000 bytes"):
        store.complete("k", token=tok, outcome=b"j" + b"0" * 350_000, ttl_ms=TTL)
    assert calls.take() == []
    record = store.get("k")
    assert record is not None
    assert record.status is Status.IN_PROGRESS
    # The limit itself fits in an item, with the key and fields.
    assert store.complete("k", token=tok, outcome=b"j" + b"0" * 349_999, ttl_ms=TTL) is True
    record = store.get("k")
    assert record is not None
    assert record.outcome is not None
    assert len(record.outcome) == 350_000


def test_a_result_too_large_fails_before_the_write_and_releases_the_claim(
    moto_server: MotoServer, table: str
) -> None:
    store = DynamoDBStore(table, client=moto_server.shared_client, max_outcome_bytes=1_000)
    runs: list[str] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def big(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return "x" * 5_000

    # The decorator knows the store's limit: the outcome is refused before any
    # write, with its size, and the claim is released (as for any result that
    # cannot be stored), so the caller hears of it at once.
    with pytest.raises(IdempotencySerializationError, match=r"5003 bytes.*limit of 1000 bytes"):
        big({"id": "o-1"})
    assert runs == ["o-1"]
    assert store.get(big.key_for({"id": "o-1"})) is None  # type: ignore[attr-defined]
    assert issubclass(OutcomeTooLargeError, IdempotencyStoreError)


# -- async ---------------------------------------------------------------------


def test_the_async_store_calls_boto3_off_the_event_loop(
    moto_server: MotoServer, table: str
) -> None:
    client = moto_server.client()
    calls = Calls(client)
    store = AsyncDynamoDBStore(table, client=client)
    runs: list[str] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    async def process(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return "done"

    async def main() -> tuple[threading.Thread, list[str]]:
        first = await process({"id": "o-1"})
        second = await process({"id": "o-1"})
        return threading.current_thread(), [first, second]

    loop_thread, results = asyncio.run(main())
    assert results == ["done", "done"]
    assert runs == ["o-1"]
    assert calls.take() == ["DescribeTable", "PutItem", "UpdateItem", "PutItem"]
    assert calls.threads
    assert all(t is not loop_thread for t in calls.threads)


# -- options -------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"table_name": "ab"},
        {"table_name": "bad name"},
        {"key_attr": ""},
        {"key_attr": "status"},
        {"expiry_attr": "id"},
        {"sort_key_attr": "id"},
        {"sort_key_attr": "token"},
        {"static_pk_value": "p"},
        {"sort_key_attr": "sk", "static_pk_value": ""},
        {"clock": 5},
        {"clock_skew_ms": -1},
        {"clock_skew_ms": 1.5},
        {"max_outcome_bytes": 0},
        {"max_outcome_bytes": 500_000},
        {"client": object()},
        {"boto_config": "fast"},
        {"region_name": "us-east-1"},  # beside client=
    ],
    # A value without a stable repr (an object's address) is named by its type.
    ids=lambda o: "-".join(
        f"{k}={v!r}" if isinstance(v, (str, int, float)) else f"{k}={type(v).__name__}"
        for k, v in o.items()
    ),
)
def test_bad_options_fail_at_construction(moto_server: MotoServer, options: dict[str, Any]) -> None:
    options = dict(options)
    name = options.pop("table_name", "orders")
    if "client" not in options and "boto_config" not in options:
        options["client"] = moto_server.shared_client
    with pytest.raises(IdempotencyConfigError):
        DynamoDBStore(name, **options)


def test_without_boto3_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    with pytest.raises(IdempotencyConfigError, match=r"onceonly\[dynamodb\]"):
        DynamoDBStore("orders")


def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, credentials: bool) -> None:
    """The default AWS chain sees only what the test sets: never files, never instance metadata."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_a_store_builds_its_own_client(
    moto_server: MotoServer, table: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from botocore.config import Config

    _aws_env(monkeypatch, tmp_path, credentials=True)
    store = DynamoDBStore(
        table,
        region_name="us-east-1",
        endpoint_url=moto_server.url,
        boto_config=Config(read_timeout=20),
    )
    assert store.client.meta.config.read_timeout == 20
    assert store.client.meta.config.connect_timeout == 5
    assert store.client.meta.config.max_pool_connections == 32
    tok = new_token()
    assert store.claim("k", token=tok, lease_ms=LEASE, ttl_ms=TTL, fingerprint=None) == Acquired()
    store.close()


# -- create_table and the CLI --------------------------------------------------


def test_create_table_is_idempotent_and_enables_ttl(moto_server: MotoServer) -> None:
    client = moto_server.shared_client
    name = f"ct-{uuid.uuid4().hex[:12]}"
    assert DynamoDBStore.create_table(name, client=client) is True
    assert DynamoDBStore.create_table(name, client=client) is False
    described = client.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiration"}


def test_create_table_refuses_a_mismatched_table(moto_server: MotoServer) -> None:
    client = moto_server.shared_client
    name = f"mm-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "N"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(IdempotencyConfigError, match=r"pk \(HASH, N\).*id \(HASH, S\)"):
        DynamoDBStore.create_table(name, client=client)
    with pytest.raises(IdempotencyConfigError, match="key schema"):
        DynamoDBStore.create_table(name, client=client, key_attr="pk")
    with pytest.raises(IdempotencyConfigError, match="key schema"):
        DynamoDBStore.create_table(name, client=client, key_attr="pk", sort_key_attr="sk")


def test_create_table_refuses_ttl_on_another_attribute(moto_server: MotoServer) -> None:
    client = moto_server.shared_client
    name = f"tt-{uuid.uuid4().hex[:12]}"
    DynamoDBStore.create_table(name, client=client, expiry_attr="ttl")
    with pytest.raises(IdempotencyConfigError, match="expiry_attr='ttl'"):
        DynamoDBStore.create_table(name, client=client)


def test_the_cli_creates_the_table(
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _aws_env(monkeypatch, tmp_path, credentials=True)
    name = f"cli-{uuid.uuid4().hex[:12]}"
    where = ["--endpoint-url", moto_server.url, "--region", "us-east-1"]

    assert cli_main(["dynamodb", "create-table", name, *where, "--sort-key", "sk"]) == 0
    assert capsys.readouterr().out == (
        f"created table {name}: partition key id, sort key sk, on-demand billing, "
        "TTL on expiration\n"
    )
    assert cli_main(["dynamodb", "create-table", name, *where, "--sort-key", "sk"]) == 0
    assert "is already there" in capsys.readouterr().out
    client = moto_server.shared_client
    assert client.describe_time_to_live(TableName=name)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expiration",
    }
    # Without the sort key the layout does not match: a clear error, exit 2.
    assert cli_main(["dynamodb", "create-table", name, *where]) == 2
    assert "key schema" in capsys.readouterr().err


# -- the storm -----------------------------------------------------------------

PROCESSES = 8
KEYS = 500
COPIES = 4


def _storm_worker(
    url: str, table: str, deliveries: list[str], result_path: str, start: Any
) -> None:
    """One consumer process: its own boto3 client to moto's server, its own queue."""
    store = DynamoDBStore(table, client=client_for(url))
    executed: list[str] = []

    @idempotent_function(
        store=store,
        data="message",
        config=IdempotencyConfig(event_key_jmespath="id", key_prefix="storm", lease_seconds=60),
    )
    def handle(message: dict[str, Any]) -> dict[str, Any]:
        executed.append(message["id"])
        return {"id": message["id"], "by": os.getpid()}

    queue = collections.deque({"id": key} for key in deliveries)
    answers: list[list[Any]] = []
    start.wait()
    while queue:
        message = queue.popleft()
        try:
            answer = handle(message)
        except IdempotencyAlreadyInProgressError:
            queue.append(message)  # redelivered later, as a queue would
            time.sleep(0.001)
            continue
        answers.append([message["id"], answer["id"], answer["by"]])
    Path(result_path).write_text(
        json.dumps({"pid": os.getpid(), "executed": executed, "answers": answers})
    )


def _deliveries(keys: list[str], rng: random.Random) -> list[list[str]]:
    """Each key to COPIES distinct processes, at about the same place in each queue."""
    slots: list[list[tuple[float, str]]] = [[] for _ in range(PROCESSES)]
    for i, key in enumerate(keys):
        for p in rng.sample(range(PROCESSES), COPIES):
            slots[p].append((i * COPIES / PROCESSES + rng.uniform(0, 3), key))
    return [[key for _, key in sorted(queue)] for queue in slots]


@pytest.mark.slow
def test_a_storm_of_duplicates_across_processes_runs_each_key_once(
    moto_server: MotoServer, table: str, tmp_path: Path
) -> None:
    keys = [f"order-{i:04d}" for i in range(KEYS)]
    queues = _deliveries(keys, random.Random(20240502))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    processes = []
    for p in range(PROCESSES):
        args = (moto_server.url, table, queues[p], str(tmp_path / f"result-{p}.json"), start)
        proc = ctx.Process(target=_storm_worker, args=args)
        proc.start()
        processes.append(proc)
    start.set()
    for proc in processes:
        proc.join(timeout=400)
    stuck = [proc.pid for proc in processes if proc.is_alive()]
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert stuck == []
    assert [proc.exitcode for proc in processes] == [0] * PROCESSES

    executed_by: dict[str, list[int]] = collections.defaultdict(list)
    answers: list[list[Any]] = []
    for p in range(PROCESSES):
        result = json.loads((tmp_path / f"result-{p}.json").read_text())
        for key in result["executed"]:
            executed_by[key].append(result["pid"])
        answers += result["answers"]

    # Exactly 500 executions, one per key.
    assert sum(len(runs) for runs in executed_by.values()) == KEYS
    assert sorted(executed_by) == keys
    # Every delivery was answered with the result of that one execution.
    assert len(answers) == KEYS * COPIES
    wrong = [a for a in answers if a[1] != a[0] or a[2] != executed_by[a[0]][0]]
    assert wrong == []
    # And the table holds one completed record per key.
    count = moto_server.shared_client.scan(TableName=table, Select="COUNT")["Count"]
    assert count == KEYS
