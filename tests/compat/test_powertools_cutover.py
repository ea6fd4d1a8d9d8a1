"""Cut-over without a gap (issue 11, item 7), end to end through the decorators.

Powertools' own decorators write the records (on moto's DynamoDB server and on
a real Redis / Valkey server); the same function, decorated with
``onceonly.compat.powertools``, then meets them under the same key: a
completed one replays Powertools' stored response, one in progress holds,
one whose in-progress expiry passed is taken over and runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer as PtDynamoDBPersistenceLayer,
)
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PtConfig
from aws_lambda_powertools.utilities.idempotency import idempotent as pt_idempotent
from aws_lambda_powertools.utilities.idempotency import (
    idempotent_function as pt_idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
    RedisCachePersistenceLayer as PtRedisCachePersistenceLayer,
)

import redis_harness as harness
from dynamodb_harness import MotoServer
from onceonly.compat import powertools as pt
from testkit import RedisFarm


class Context:
    """A Lambda context double with a chosen remaining time (negative: already timed out)."""

    def __init__(self, remaining_ms: int = 30_000) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


Layers = tuple[Any, Any]  # (Powertools' layer, ours) on one backend


@pytest.fixture(params=["dynamodb", "redis"])
def layers(
    request: pytest.FixtureRequest, moto_server: MotoServer, redis_farm: RedisFarm
) -> Iterator[Layers]:
    if request.param == "dynamodb":
        client = moto_server.client()
        table = moto_server.fresh_table(client)
        yield (
            PtDynamoDBPersistenceLayer(table_name=table, boto3_client=client),
            pt.DynamoDBPersistenceLayer(table_name=table, boto3_client=client),
        )
        client.close()
        return
    engine = harness.engines_or_fail()[0]
    server = redis_farm.standalone(engine)
    theirs_client, ours_client = server.client(), server.client()
    with pytest.warns(DeprecationWarning, match="CachePersistenceLayer"):  # renamed in v3
        theirs = PtRedisCachePersistenceLayer(client=theirs_client)
    yield theirs, pt.RedisCachePersistenceLayer(client=ours_client)
    theirs_client.close()
    ours_client.close()


def twins(
    layers: Layers, body: Callable[[dict[str, Any], Any], Any], **options: Any
) -> tuple[Any, Any]:
    """The same handler decorated by Powertools and by the compatibility module."""
    theirs, ours = layers
    return (
        pt_idempotent(persistence_store=theirs, config=PtConfig(**options))(body),
        pt.idempotent(persistence_store=ours, config=pt.IdempotencyConfig(**options))(body),
    )


def test_a_completed_powertools_record_replays_its_response(layers: Layers) -> None:
    runs: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(event)
        return {"statusCode": 201, "order": event["id"], "total": len(runs) * 10}

    theirs, ours = twins(
        layers, handler, event_key_jmespath="id", payload_validation_jmespath="amount"
    )
    event = {"id": uuid.uuid4().hex, "amount": 5}
    first = theirs(event, Context())
    assert ours(event, Context()) == first
    assert ours(event, Context()) == first
    assert len(runs) == 1
    if isinstance(layers[1], pt.DynamoDBPersistenceLayer):
        # Powertools' payload hash is our fingerprint: another amount is key reuse.
        with pytest.raises(pt.IdempotencyValidationError):
            ours({**event, "amount": 6}, Context())
    else:
        # Powertools' Redis layer drops the hash when it completes: nothing to compare.
        assert ours({**event, "amount": 6}, Context()) == first
    assert len(runs) == 1


def test_a_powertools_claim_in_progress_holds(layers: Layers) -> None:
    seen: list[str] = []
    event = {"id": uuid.uuid4().hex}

    def inner(event: dict[str, Any], context: Any) -> str:
        seen.append("ours ran")
        return "ours"

    ours = pt.idempotent(
        persistence_store=layers[1],
        config=pt.IdempotencyConfig("id"),
        key_prefix="orders",
    )(inner)

    def outer(event: dict[str, Any], context: Any) -> str:
        # Powertools holds its INPROGRESS record while this runs.
        with pytest.raises(pt.IdempotencyAlreadyInProgressError):
            ours(event, Context())
        return "theirs"

    theirs = pt_idempotent(persistence_store=layers[0], config=PtConfig("id"), key_prefix="orders")(
        outer
    )
    assert theirs(event, Context()) == "theirs"
    assert seen == []
    assert ours(event, Context()) == "theirs"  # and then Powertools' result replays


def test_a_timed_out_powertools_claim_is_taken_over(layers: Layers) -> None:
    seen: list[str] = []
    event = {"id": uuid.uuid4().hex}

    def inner(event: dict[str, Any], context: Any) -> str:
        seen.append("ours ran")
        return "ours"

    ours = pt.idempotent(
        persistence_store=layers[1], config=pt.IdempotencyConfig("id"), key_prefix="orders"
    )(inner)

    class Crash(Exception):
        """Stands for the invocation's end: Powertools' record is left behind."""

    def outer(event: dict[str, Any], context: Any) -> str:
        assert ours(event, Context()) == "ours"  # its in-progress expiry already passed
        raise Crash

    theirs = pt_idempotent(persistence_store=layers[0], config=PtConfig("id"), key_prefix="orders")(
        outer
    )
    with pytest.raises(Crash):
        # A remaining time 5 s in the past: Powertools' in-progress expiry has passed
        # (also beyond the DynamoDB store's 1 s allowance for clock skew).
        theirs(event, Context(remaining_ms=-5_000))
    assert seen == ["ours ran"]


def test_an_idempotent_function_moves_over_with_its_records(layers: Layers) -> None:
    runs: list[str] = []

    def process(order: dict[str, Any]) -> list[Any]:
        runs.append(order["id"])
        return [order["id"], 0, None]

    their_config = PtConfig(event_key_jmespath="id")
    their_config.register_lambda_context(Context())  # as Powertools' docs do
    theirs = pt_idempotent_function(
        data_keyword_argument="order", persistence_store=layers[0], config=their_config
    )(process)
    ours = pt.idempotent_function(
        data_keyword_argument="order",
        persistence_store=layers[1],
        config=pt.IdempotencyConfig(event_key_jmespath="id"),
    )(process)
    order = {"id": uuid.uuid4().hex}
    assert theirs(order=order) == [order["id"], 0, None]
    assert ours(order=order) == [order["id"], 0, None]
    assert runs == [order["id"]]
