"""What docs/coming-from-powertools.md states, checked (issue 11: the migration guide).

The IAM policy and the ACL rule are read from the guide itself and used: the
policy must name every DynamoDB operation the store sends (and nothing it
does not); the ACL rule is applied to a real server and the store works
under it. Powertools' batch utility runs with our decorator on the record
handler, and a Powertools instance that meets a record onceonly wrote does
not run the function again.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer as PtDynamoDBPersistenceLayer,
)
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PtConfig
from aws_lambda_powertools.utilities.idempotency import idempotent as pt_idempotent
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyPersistenceLayerError as PtPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
    RedisCachePersistenceLayer as PtRedisCachePersistenceLayer,
)

import redis_harness as harness
from dynamodb_harness import MotoServer
from onceonly.compat import powertools as pt
from onceonly.records import new_token
from onceonly.stores import MemoryStore
from testkit import RedisFarm, load_event

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "coming-from-powertools.md"


def guide_block(language: str) -> str:
    """The one fenced block of ``language`` in the guide."""
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, f"the guide has {len(blocks)} {language} blocks"
    return str(blocks[0])


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 30_000


# -- IAM -------------------------------------------------------------------------------


def test_the_iam_policy_names_exactly_the_calls_the_store_sends(moto_server: MotoServer) -> None:
    policy = json.loads(guide_block("json"))
    (statement,) = policy["Statement"]
    allowed = {action.removeprefix("dynamodb:") for action in statement["Action"]}
    assert statement["Effect"] == "Allow"

    client = moto_server.client()
    table = moto_server.fresh_table(client)
    sent: list[str] = []
    client.meta.events.register("before-call.dynamodb", lambda model, **_: sent.append(model.name))
    store = pt.DynamoDBPersistenceLayer(table_name=table, boto3_client=client)
    runs: list[str] = []

    @pt.idempotent(persistence_store=store, config=pt.IdempotencyConfig("id"))
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(event["id"])
        if event.get("fail"):
            raise RuntimeError("the handler failed")
        return "ok"

    assert handler({"id": "a"}, Context()) == "ok"  # claim + complete
    assert handler({"id": "a"}, Context()) == "ok"  # duplicate
    with pytest.raises(RuntimeError):
        handler({"id": "b", "fail": True}, Context())  # claim + release
    key = handler.key_for({"id": "a"}, None)
    assert store.get(key) is not None  # what `onceonly inspect` and waits read
    token = new_token()
    store.claim("renewed", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    assert store.renew("renewed", token=token, lease_ms=60_000) is True  # heartbeat
    assert store.delete(key) is True  # `onceonly purge`
    assert runs == ["a", "b"]
    assert set(sent) == allowed
    client.close()


# -- the ACL rule ----------------------------------------------------------------------


def test_the_acl_rule_lets_the_compat_layer_work_and_nothing_else(
    redis_farm: RedisFarm, redis_engine: harness.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (line,) = [ln for ln in guide_block("text").splitlines() if ln.startswith("ACL SETUSER")]
    words = shlex.split(line)
    user = words[2]
    password = f"pw-{uuid.uuid4().hex}"
    words = [f">{password}" if w == ">CHANGE-ME" else w for w in words]
    admin = redis_farm.standalone(redis_engine).client()
    admin.execute_command(*words)
    function_name = user  # the rule's key pattern is the Lambda function's name
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function_name)
    server = redis_farm.standalone(redis_engine)
    store = pt.RedisCachePersistenceLayer(
        host=server.client_host(),
        port=server.port,
        username=user,
        password=password,
        ssl=False,
    )
    runs: list[int] = []

    @pt.idempotent(persistence_store=store, config=pt.IdempotencyConfig("id"))
    def handler(event: dict[str, Any], context: Any) -> int:
        runs.append(1)
        return len(runs)

    event = {"id": uuid.uuid4().hex}
    assert handler(event, Context()) == 1
    assert handler(event, Context()) == 1
    assert runs == [1]
    key = handler.key_for(event, None)
    assert str(key).startswith(f"{function_name}.")
    assert store.get(key) is not None
    assert store.delete(key) is True
    # The rule is narrow: other keys are out of reach.
    with pytest.raises(pt.IdempotencyPersistenceLayerError, match="ACL"):
        store.claim("elsewhere#1", token=new_token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
    store.client.close()
    admin.execute_command("ACL", "DELUSER", user)
    admin.close()


# -- batches ---------------------------------------------------------------------------


def test_powertools_batch_processor_with_our_record_handler() -> None:
    event = load_event("sqsEvent.json")
    records = event["Records"]
    assert len(records) >= 2
    event["Records"] = [*records, records[0]]  # a duplicate delivery inside the batch
    store = MemoryStore()
    config = pt.IdempotencyConfig(event_key_jmespath="messageId")
    seen: list[str] = []

    @pt.idempotent_function(data_keyword_argument="record", persistence_store=store, config=config)
    def record_handler(record: Any) -> str:
        seen.append(record.message_id)
        if record.body == "fail":
            raise ValueError("cannot process")
        return str(record.message_id)

    processor = BatchProcessor(event_type=EventType.SQS)
    event["Records"][1] = {**event["Records"][1], "body": "fail"}
    result = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=Context()
    )
    failed = records[1]["messageId"]
    assert result == {"batchItemFailures": [{"itemIdentifier": failed}]}
    # The duplicate replayed; the failed record released its claim and runs on redelivery.
    assert seen.count(records[0]["messageId"]) == 1
    redelivery = {"Records": [{**records[1], "body": "ok now"}]}
    assert process_partial_response(
        event=redelivery, record_handler=record_handler, processor=processor, context=Context()
    ) == {"batchItemFailures": []}
    assert seen.count(failed) == 2


# -- a Powertools instance meeting our records -------------------------------------------


def test_powertools_meeting_a_record_onceonly_wrote_does_not_run_again(
    moto_server: MotoServer,
) -> None:
    client = moto_server.client()
    table = moto_server.fresh_table(client)
    runs: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(event["id"])
        return "done"

    store = pt.DynamoDBPersistenceLayer(table_name=table, boto3_client=client)
    ours = pt.idempotent(persistence_store=store, config=pt.IdempotencyConfig("id"))(handler)
    theirs = pt_idempotent(
        persistence_store=PtDynamoDBPersistenceLayer(table_name=table, boto3_client=client),
        config=PtConfig(event_key_jmespath="id"),
    )(handler)
    assert ours({"id": "1"}, Context()) == "done"  # a completed record of ours
    held = ours.key_for({"id": "2"}, None)  # and a claim of ours, in progress
    store.claim(held, token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    for event in ({"id": "1"}, {"id": "2"}):
        # Powertools reads a status it does not know ("C", "P") and fails the call.
        with pytest.raises(PtPersistenceLayerError, match="in progress record"):
            theirs(event, Context())
    assert runs == ["1"]
    client.close()


def test_powertools_on_redis_meeting_a_record_onceonly_wrote_runs_again(
    redis_farm: RedisFarm, redis_engine: harness.Engine
) -> None:
    # What the guide warns of: Powertools' Redis layer takes a value it cannot
    # read for an orphan and overwrites it, so the two must not serve at once.
    server = redis_farm.standalone(redis_engine)
    ours_client, theirs_client = server.client(), server.client()
    runs: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(event["id"])
        return "done"

    ours = pt.idempotent(
        persistence_store=pt.RedisCachePersistenceLayer(client=ours_client),
        config=pt.IdempotencyConfig("id"),
        key_prefix=f"guide-{uuid.uuid4().hex}",
    )(handler)
    with pytest.warns(DeprecationWarning, match="CachePersistenceLayer"):
        layer = PtRedisCachePersistenceLayer(client=theirs_client)
    theirs = pt_idempotent(
        persistence_store=layer,
        config=PtConfig(event_key_jmespath="id"),
        key_prefix=ours.guard.keyer.prefix[:-1],
    )(handler)
    assert ours({"id": "1"}, Context()) == "done"
    assert theirs({"id": "1"}, Context()) == "done"
    assert runs == ["1", "1"]
    ours_client.close()
    theirs_client.close()
