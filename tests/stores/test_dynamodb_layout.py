"""The DynamoDB store checks the table's key schema before its first claim, and key sizes.

A store whose layout (``key_attr``, ``sort_key_attr``, string keys) differs
from the table's key schema must fail before anything runs: a sort key the
table does not have would otherwise put every key on one item. The check
reads ``DescribeTable`` once per store. A key over DynamoDB's size limit
says so, and by how much. All against moto's server over HTTP.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from dynamodb_harness import MotoServer
from onceonly import (
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencyStoreError,
    idempotent_function,
)
from onceonly.records import Acquired, new_token
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore

LEASE = 60_000
TTL = 60_000


def _table(client: Any, *schema: tuple[str, str, str]) -> str:
    """A table with the key schema ``(name, HASH|RANGE, S|N|B)...``, made directly."""
    name = f"lay-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": n, "KeyType": k} for n, k, _ in schema],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, _, t in schema],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def _guarded(store: Any) -> tuple[Any, list[str]]:
    runs: list[str] = []

    @idempotent_function(
        store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id")
    )
    def process(order: dict[str, Any]) -> str:
        runs.append(order["id"])
        return "done"

    return process, runs


class Calls:
    """The DynamoDB operations a client sends, seen through botocore's own event hook."""

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        client.meta.events.register("before-call.dynamodb.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)


MISMATCHES = [
    pytest.param(
        [("id", "HASH", "S")],
        {"sort_key_attr": "sk"},
        r"no sort key.*sort_key_attr='sk'.*drop sort_key_attr",
        id="sort-key-the-table-lacks",
    ),
    pytest.param(
        [("id", "HASH", "S"), ("sk", "RANGE", "S")],
        {},
        r"sort key sk.*store has none.*sort_key_attr='sk'",
        id="sort-key-the-store-lacks",
    ),
    pytest.param(
        [("pk", "HASH", "S")],
        {},
        r"partition key pk.*key_attr='id'.*key_attr='pk'",
        id="partition-key-name",
    ),
    pytest.param(
        [("id", "HASH", "N")],
        {},
        r"partition key id is of type N.*string \(S\)",
        id="partition-key-type",
    ),
    pytest.param(
        [("id", "HASH", "S"), ("sk", "RANGE", "S")],
        {"sort_key_attr": "other"},
        r"sort key sk.*sort_key_attr='other'.*sort_key_attr='sk'",
        id="sort-key-name",
    ),
    pytest.param(
        [("id", "HASH", "S"), ("sk", "RANGE", "B")],
        {"sort_key_attr": "sk"},
        r"sort key sk is of type B.*string \(S\)",
        id="sort-key-type",
    ),
]


@pytest.mark.parametrize(("schema", "layout", "says"), MISMATCHES)
def test_a_layout_that_differs_from_the_table_fails_before_the_function_runs(
    moto_server: MotoServer, schema: list[tuple[str, str, str]], layout: dict[str, str], says: str
) -> None:
    client = moto_server.shared_client
    name = _table(client, *schema)
    process, runs = _guarded(DynamoDBStore(name, client=client, **layout))
    for order in ("o-1", "o-2"):
        with pytest.raises(IdempotencyConfigError, match=says):
            process({"id": order})
    assert runs == []
    assert client.scan(TableName=name)["Items"] == []  # nothing was written


def test_the_async_store_checks_the_layout_too(moto_server: MotoServer) -> None:
    import asyncio

    client = moto_server.shared_client
    name = _table(client, ("id", "HASH", "S"))
    store = AsyncDynamoDBStore(name, client=client, sort_key_attr="sk")
    with pytest.raises(IdempotencyConfigError, match="no sort key"):
        asyncio.run(
            store.claim("k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
        )
    assert client.scan(TableName=name)["Items"] == []


def test_the_key_schema_is_read_once_per_store(moto_server: MotoServer) -> None:
    client = moto_server.client()
    name = moto_server.fresh_table(client, sort_key_attr="sk")
    calls = Calls(client)
    store = DynamoDBStore(name, client=client, sort_key_attr="sk")
    for key in ("a", "b", "c"):
        store.claim(key, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    assert calls.names == ["DescribeTable", "PutItem", "PutItem", "PutItem"]
    client.close()


def test_a_failed_describe_table_fails_closed_and_is_tried_again(
    moto_server: MotoServer,
) -> None:
    # DescribeTable of a table that is not there: the claim fails (nothing
    # runs), and the next claim reads the schema again once the table exists.
    client = moto_server.shared_client
    name = f"late-{uuid.uuid4().hex[:12]}"
    process, runs = _guarded(DynamoDBStore(name, client=client))
    with pytest.raises(IdempotencyStoreError, match="does not exist"):
        process({"id": "o-1"})
    DynamoDBStore.create_table(name, client=client)
    assert process({"id": "o-1"}) == "done"
    assert runs == ["o-1"]


def _deny(operation: str) -> Any:
    """A botocore before-call hook answering ``operation`` with AccessDeniedException."""

    def hook(model: Any, **_: Any) -> Any:
        if model.name != operation:
            return None
        http = AWSResponse("https://dynamodb", 400, {}, None)
        parsed = {
            "Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return http, parsed

    return hook


def test_access_denied_on_describe_table_skips_the_check_with_one_warning(
    moto_server: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A role granted only the item operations still works: the check is
    # skipped, once, with a warning that names the permission.
    client = moto_server.client()
    name = moto_server.fresh_table(client)
    client.meta.events.register("before-call.dynamodb.DescribeTable", _deny("DescribeTable"))
    store = DynamoDBStore(name, client=client)
    with caplog.at_level(logging.WARNING, logger="onceonly"):
        for key in ("a", "b"):
            got = store.claim(key, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
            assert got == Acquired()
    warned = [r for r in caplog.records if "DescribeTable" in r.getMessage()]
    assert len(warned) == 1
    assert "dynamodb:DescribeTable" in warned[0].getMessage()
    assert warned[0].onceonly_outcome == "schema_unchecked"  # type: ignore[attr-defined]
    assert warned[0].onceonly_store == "DynamoDBStore"  # type: ignore[attr-defined]
    client.close()


# -- key sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "limit", "kind"),
    [({}, 2048, "partition"), ({"sort_key_attr": "sk"}, 1024, "sort")],
    ids=["partition-key", "sort-key"],
)
def test_an_over_long_key_says_how_long_and_by_how_much(
    moto_server: MotoServer, layout: dict[str, str], limit: int, kind: str
) -> None:
    client = moto_server.shared_client
    name = moto_server.fresh_table(client, **layout)
    store = DynamoDBStore(name, client=client, **layout)
    at_limit = "é" * (limit // 2)  # 2 bytes each: the limit counts bytes, not characters
    assert store.claim(at_limit, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    over = at_limit + "abc"
    with pytest.raises(IdempotencyStoreError) as raised:
        store.claim(over, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None)
    text = str(raised.value)
    assert f"{limit + 3} bytes" in text
    assert f"3 over DynamoDB's limit of {limit} bytes for a {kind} key" in text
    assert "key_prefix" in text
    assert "key_attr" not in text


def test_a_static_partition_value_over_the_limit_is_refused_at_construction(
    moto_server: MotoServer,
) -> None:
    with pytest.raises(IdempotencyConfigError, match=r"static_pk_value is 2049 bytes"):
        DynamoDBStore(
            "orders",
            client=moto_server.shared_client,
            sort_key_attr="sk",
            static_pk_value="p" * 2049,
        )
