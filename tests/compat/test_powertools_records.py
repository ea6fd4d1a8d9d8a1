"""Our stores read the records Powertools' idempotency utility wrote (issue 11, item 7).

A team moves a function from Powertools to onceonly on a live DynamoDB table
or Redis: under the same keys our stores meet what Powertools stored. Every
record here is written by Powertools itself (its decorators, or its
persistence layer's ``save_inprogress``), on moto's DynamoDB server and on
real Redis / Valkey servers, then read by our stores. Time is moved with the
stores' injected clocks, started at the wall clock that Powertools stamps its
records with (see powertools_writers.py). This file has the DynamoDB half;
test_powertools_records_redis.py has the Redis half.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PowertoolsConfig
from aws_lambda_powertools.utilities.idempotency import idempotent as pt_idempotent
from aws_lambda_powertools.utilities.idempotency import (
    idempotent_function as pt_idempotent_function,
)
from powertools_writers import (
    LEASE,
    TTL,
    LambdaContext,
    check_foreign_writes_refused,
    claim,
    save_inprogress,
    wall_clock,
)

from dynamodb_harness import MotoServer
from onceonly import CorruptRecordError, powertools_records
from onceonly.records import Acquired, Found, Record, Status, decode_outcome, new_token
from onceonly.stores.dynamodb import AsyncDynamoDBStore, DynamoDBStore

# -- DynamoDB ----------------------------------------------------------------------


def dynamodb_table(moto_server: MotoServer) -> tuple[Any, str, DynamoDBPersistenceLayer]:
    """A client of its own (Powertools tags it), a table made by our helper, Powertools' layer."""
    client = moto_server.client()
    table = moto_server.fresh_table(client)
    return client, table, DynamoDBPersistenceLayer(table_name=table, boto3_client=client)


def items_of(client: Any, table: str) -> dict[str, dict[str, Any]]:
    """Every item of the table by its key."""
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["id"]["S"]: item for item in items}


def test_dynamodb_a_completed_record_from_powertools_replays(moto_server: MotoServer) -> None:
    client, table, layer = dynamodb_table(moto_server)
    config = PowertoolsConfig(event_key_jmespath="id", payload_validation_jmespath="amount")
    # With a Lambda context Powertools writes in_progress_expiration, and leaves
    # it on the item once COMPLETED.
    config.register_lambda_context(LambdaContext(30_000))
    result = {"charged": 5, "none": None, "zero": 0, "empty": [], "text": "é"}

    @pt_idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return result

    order = {"id": f"o-{uuid.uuid4().hex}", "amount": 5}
    assert charge(order=order) == result
    key = layer._get_hashed_idempotency_key(order)
    assert key is not None
    before = items_of(client, table)
    item = before[key]
    assert item["status"] == {"S": "COMPLETED"}
    assert {"validation", "in_progress_expiration"} <= set(item)
    assert "token" not in item

    clock = wall_clock()
    store = DynamoDBStore(table, client=client, clock=clock)
    found = claim(store, key)
    assert isinstance(found, Found)
    record = found.record
    assert record.status is Status.COMPLETED
    assert decode_outcome(record.outcome) == result
    assert record.fingerprint == item["validation"]["S"]
    assert record.deadline_ms == int(item["expiration"]["N"]) * 1000
    assert record.token == powertools_records.PLACEHOLDER_TOKEN
    assert store.get(key) == record
    check_foreign_writes_refused(store, key)
    assert items_of(client, table) == before  # nothing of Powertools' was written over

    # Past its expiration (plus the store's skew allowance) a claim takes the
    # key, no takeover (it was COMPLETED), and the item becomes ours.
    clock.advance(record.deadline_ms + store.clock_skew_ms - clock.now)
    assert store.get(key) is None
    token = new_token()
    assert claim(store, key, token) == Acquired(takeover=False)
    assert store.complete(key, token=token, outcome=b'j"ours"', ttl_ms=TTL) is True
    mine = store.get(key)
    assert mine is not None
    assert mine.token == token
    assert decode_outcome(mine.outcome) == "ours"


def test_dynamodb_a_handler_record_from_powertools_replays_async(
    moto_server: MotoServer,
) -> None:
    client, table, layer = dynamodb_table(moto_server)

    @pt_idempotent(persistence_store=layer, config=PowertoolsConfig(event_key_jmespath="id"))
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": event["id"]}

    event = {"id": f"e-{uuid.uuid4().hex}"}
    assert handler(event, LambdaContext(30_000)) == {"statusCode": 200, "body": event["id"]}
    (key,) = items_of(client, table)
    store = AsyncDynamoDBStore(table, client=client, clock=wall_clock())

    async def scenario() -> None:
        found = await store.claim(
            key, token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
        )
        assert isinstance(found, Found)
        assert decode_outcome(found.record.outcome) == {"statusCode": 200, "body": event["id"]}
        assert found.record.fingerprint is None  # no payload validation: no hash
        assert await store.get(key) == found.record
        store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("remaining_ms", [5_000, None], ids=["in-progress-expiry", "none"])
def test_dynamodb_an_inprogress_record_holds_until_its_expiry_then_is_taken_over(
    moto_server: MotoServer, remaining_ms: int | None
) -> None:
    client, table, layer = dynamodb_table(moto_server)
    layer.configure(PowertoolsConfig(payload_validation_jmespath="amount"), "charge")
    key = save_inprogress(layer, {"id": uuid.uuid4().hex, "amount": 7}, remaining_ms)
    item = items_of(client, table)[key]
    expiration_ms = int(item["expiration"]["N"]) * 1000
    # Without an in-progress expiry Powertools keeps the key locked until the
    # record expires; so do we.
    deadline = expiration_ms if remaining_ms is None else int(item["in_progress_expiration"]["N"])

    clock = wall_clock()
    exact = DynamoDBStore(table, client=client, clock=clock, clock_skew_ms=0)
    skewed = DynamoDBStore(table, client=client, clock=clock)  # 1000 ms allowance
    found = claim(exact, key)
    assert isinstance(found, Found)
    assert found.record == Record(
        Status.IN_PROGRESS,
        powertools_records.PLACEHOLDER_TOKEN,
        deadline,
        item["validation"]["S"],
        None,
    )
    assert exact.get(key) == found.record
    check_foreign_writes_refused(exact, key)

    clock.advance(deadline - 1 - clock.now)
    assert isinstance(claim(exact, key), Found)
    clock.advance(1)  # the deadline: ended here, not for the store that allows for skew
    assert exact.get(key) is None
    assert exact.release(key, token=new_token()) is True  # nothing live is left
    assert isinstance(claim(skewed, key), Found)
    assert skewed.release(key, token=new_token()) is False
    assert items_of(client, table)[key] == item  # untouched so far

    clock.advance(skewed.clock_skew_ms)
    token = new_token()
    assert claim(skewed, key, token) == Acquired(takeover=True)
    assert skewed.renew(key, token=token, lease_ms=LEASE) is True
    assert skewed.complete(key, token=token, outcome=b"j1", ttl_ms=TTL) is True
    ours = items_of(client, table)[key]
    assert ours["token"] == {"S": token}
    assert ours["status"] == {"S": "C"}
    assert "in_progress_expiration" not in ours  # PutItem replaced the whole item


def test_dynamodb_a_claim_replaces_a_powertools_item_only_while_it_is_unchanged(
    moto_server: MotoServer,
) -> None:
    # Our claim reads an ended INPROGRESS item (its in-progress expiry passed),
    # then, just before our second PutItem, a Powertools worker takes the key
    # over itself (a new in_progress_expiration, the same status). Our PutItem
    # must then fail its condition, and the claim answer with the new holder.
    client, table, layer = dynamodb_table(moto_server)
    layer.configure(PowertoolsConfig(), "charge")
    data = {"id": uuid.uuid4().hex}
    key = save_inprogress(layer, data, -1_000)  # its Lambda timed out a second ago
    rival = DynamoDBPersistenceLayer(table_name=table, boto3_client=moto_server.client())
    rival.configure(PowertoolsConfig(), "charge")
    puts: list[int] = []

    def powertools_strikes_first(**_: Any) -> None:
        puts.append(1)
        if len(puts) == 2:
            rival.save_inprogress(data, remaining_time_in_millis=60_000)

    client.meta.events.register("before-call.dynamodb.PutItem", powertools_strikes_first)
    store = DynamoDBStore(table, client=client, clock=wall_clock(), clock_skew_ms=0)
    found = claim(store, key)
    assert len(puts) == 2  # read the orphan; lost the race, and read the new holder
    assert isinstance(found, Found)
    assert found.record.status is Status.IN_PROGRESS
    new = items_of(client, table)[key]
    assert "token" not in new
    assert found.record.deadline_ms == int(new["in_progress_expiration"]["N"])


def test_dynamodb_an_expired_status_has_ended(moto_server: MotoServer) -> None:
    # Powertools never stores EXPIRED (it computes it); an item that says so has ended.
    client, table, _ = dynamodb_table(moto_server)
    far = str(int(time.time()) + 3600)
    client.put_item(
        TableName=table,
        Item={"id": {"S": "pt#1"}, "status": {"S": "EXPIRED"}, "expiration": {"N": far}},
    )
    store = DynamoDBStore(table, client=client, clock=wall_clock())
    assert store.get("pt#1") is None
    assert store.release("pt#1", token=new_token()) is True
    assert claim(store, "pt#1") == Acquired(takeover=False)


def test_dynamodb_our_own_keys_beside_powertools_items_leave_them_alone(
    moto_server: MotoServer,
) -> None:
    client, table, layer = dynamodb_table(moto_server)
    config = PowertoolsConfig(event_key_jmespath="id")
    config.register_lambda_context(LambdaContext(30_000))

    @pt_idempotent_function(data_keyword_argument="order", persistence_store=layer, config=config)
    def charge(order: dict[str, Any]) -> str:
        return "charged"

    charge(order={"id": "done"})
    layer.configure(config, "charge")
    save_inprogress(layer, {"id": "running"}, 60_000)
    before = items_of(client, table)
    assert len(before) == 2

    store = DynamoDBStore(table, client=client)
    token = new_token()
    assert claim(store, "billing.charge:abc", token) == Acquired()
    assert store.complete("billing.charge:abc", token=token, outcome=b"j1", ttl_ms=TTL)
    record = store.get("billing.charge:abc")
    assert record is not None
    assert record.token == token
    after = items_of(client, table)
    del after["billing.charge:abc"]
    assert after == before


_FAR = str(int(time.time()) + 3600)
_PAST = "1"  # an expiration long past: a claim that read these as records would take them
DYNAMODB_CORRUPT = {
    "unknown-status": {"status": {"S": "DONE"}, "expiration": {"N": _PAST}},
    "garbage-status": {"status": {"S": "{"}, "expiration": {"N": _PAST}},
    "list-status": {"status": {"L": [{"S": "COMPLETED"}]}, "expiration": {"N": _PAST}},
    "lower-case-status": {"status": {"S": "completed"}, "expiration": {"N": _PAST}},
    "no-expiration": {"status": {"S": "INPROGRESS"}},
    "string-expiration": {"status": {"S": "INPROGRESS"}, "expiration": {"S": _PAST}},
    "fractional-expiration": {"status": {"S": "INPROGRESS"}, "expiration": {"N": "1.5"}},
    "negative-in-progress-expiry": {
        "status": {"S": "INPROGRESS"},
        "expiration": {"N": _PAST},
        "in_progress_expiration": {"N": "-1"},
    },
    "binary-data": {
        "status": {"S": "COMPLETED"},
        "expiration": {"N": _PAST},
        "data": {"B": b"1"},
    },
    "validation-not-hex": {
        "status": {"S": "COMPLETED"},
        "expiration": {"N": _PAST},
        "validation": {"S": "XYZ"},
    },
    # A layout with custom attribute names (data_attr="result"): read by the
    # default names it would replay None; refused instead.
    "custom-data-attribute": {
        "status": {"S": "COMPLETED"},
        "expiration": {"N": _FAR},
        "result": {"S": "1"},
    },
}


@pytest.mark.parametrize("shape", sorted(DYNAMODB_CORRUPT))
def test_dynamodb_what_is_not_a_powertools_record_stays_corrupt(
    moto_server: MotoServer, shape: str
) -> None:
    client = moto_server.shared_client
    table = moto_server.shared_table(client, "powertools-corrupt")
    key = f"pt#{uuid.uuid4().hex}"
    item = {"id": {"S": key}, **DYNAMODB_CORRUPT[shape]}
    client.put_item(TableName=table, Item=item)
    store = DynamoDBStore(table, client=client)
    with pytest.raises(CorruptRecordError, match="not an onceonly record"):
        claim(store, key)
    with pytest.raises(CorruptRecordError):
        store.get(key)
    assert store.release(key, token=new_token()) is False
    assert store.complete(key, token=new_token(), outcome=b"j1", ttl_ms=TTL) is False
    stored = client.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True)
    assert stored["Item"] == item


def test_the_outcome_of_a_powertools_record_is_its_data_as_json() -> None:
    # The plain JSON envelope of the text Powertools stored: what json.loads
    # gives, falsy values and all; absent or empty data replays None.
    for data, value in [('{"a": [1, 0, ""]}', {"a": [1, 0, ""]}), ("0", 0), ("false", False)]:
        record = powertools_records.from_fields(
            {"status": "COMPLETED", "expiration": 10, "data": data}
        )
        assert record.outcome is not None
        assert decode_outcome(record.outcome) == value
        assert decode_outcome(record.outcome) == json.loads(data)
    for fields in ({}, {"data": ""}):
        record = powertools_records.from_fields({"status": "COMPLETED", "expiration": 10, **fields})
        assert record.outcome is not None
        assert decode_outcome(record.outcome) is None
    # Data that is not JSON fails when replayed, as any record's outcome would.
    record = powertools_records.from_fields({"status": "COMPLETED", "expiration": 10, "data": "{"})
    assert record.outcome is not None
    with pytest.raises(CorruptRecordError):
        decode_outcome(record.outcome)
