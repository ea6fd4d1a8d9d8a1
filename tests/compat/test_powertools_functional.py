"""Powertools' functional idempotency tests, ported to onceonly (issue 11): the lifecycle.

Written by us from reading Powertools' tests (aws-powertools/powertools-lambda-python,
``tests/functional/idempotency/``); no code or prose of theirs is copied. Every
test runs through the ``api`` seam (port_support.py: onceonly's decorators now,
the compatibility module's once it is added there) on every store of
``pt_store`` (memory, SQLite, Redis and Valkey standalone, DynamoDB on moto's
server), each on a manual clock: time passes by ``clock.advance``, never by
sleeping. The port is split in three files: this one (replay, in progress,
failures, expiry, leases, local cache, response hook, concurrency),
``test_powertools_functional_keys.py`` (keys, JMESPath, payload validation,
``idempotent_function`` payloads) and ``test_powertools_functional_outputs.py``
(results, serializers, async, the switch, store failures).

Where onceonly differs from Powertools on purpose, the test checks onceonly's
behaviour and a comment says what Powertools does. Key formats are never
asserted in shared tests (the compatibility module forms Powertools' keys).

What Powertools' tests check that a user relies on, by their module:

``_boto3/test_idempotency.py`` (with its conftest.py and utils.py). Ported:
  - a completed event replays without running the handler, with and without the
    local cache (``already_completed``); the response holds Decimals (ours replay
    as Decimal, Powertools' as str);
  - a first execution runs and stores; a record past ``expires_after_seconds``
    runs again (``first_execution``, ``expired``);
  - a live in-progress record raises ``IdempotencyAlreadyInProgressError``, again
    and again with the local cache on: in-progress is never cached
    (``in_progress``, ``in_progress_with_cache``, ``in_progress_never_saved_to_cache``);
  - the local cache answers a replay without the store (``first_execution_cached``);
  - a handler that mutates its event does not change its key (``event_mutation``);
  - an exception in the handler releases the key, so a retry runs (``lambda_exception``);
  - payload validation: a tampered validated part raises, nested too and from
    the local cache, and is not cached (``with_validation_bad_payload``,
    ``..._from_local_cache``, ``tampering_nested_object``, ``cache_with_payload_tampering``);
  - in progress until the lease (the Lambda context's remaining time), taken
    over after it (``expires_in_progress_before_expire`` / ``_after_expire``:
    Powertools' stubs make that an ``IdempotencyInconsistentStateError``; the
    behaviour a user relies on is the takeover); without a context
    (``unavailable_remaining_time``) Powertools warns and never expires the
    claim before the record does, ours uses ``lease_seconds`` silently;
  - ``register_lambda_context`` gives ``idempotent_function`` the remaining time;
  - missing key: runs with a warning, or ``IdempotencyKeyError`` with
    ``raise_on_no_idempotency_key`` (``default_no_raise_on_missing_idempotency_key``,
    ``raise_on_no_idempotency_key``, ``handler_raise_idempotency_key_error``), and
    which selections count as missing (``is_missing_idempotency_key``);
  - ``powertools_json(body)`` in a multi-select (``jmespath_with_powertools_json``);
  - ``idempotent_function``: by keyword, among other arguments, both decorators
    on one payload, falsy payloads (with and without raising), key order,
    two functions on one payload, dataclass payloads with a JMESPath
    (``idempotent_function*``, ``data_sorting``, ``function_duplicates``,
    ``function_dataclass_with_jmespath``, ``function_dataclasses``);
  - serializers: custom pair, ``None`` result, dataclass explicit and deduced
    (``function_serialization_*``);
  - the switch variable, true and false values (``idempotency_*_envvar*``);
  - ``response_hook``: not called on a first run, called on a replay with the
    stored result and record, also for ``None`` (``responsehook_*``, ``response_hook_*``);
  - a table with a sort key and a static partition key value (``compound_*``);
  - a store failing before the run raises ``IdempotencyPersistenceLayerError``
    and the handler does not run (``save_inprogress_error``, ``persistence_exception_getting``).
  Ported as onceonly's own behaviour (differs on purpose):
  - the data argument given by position works (``arg_instead_of_kwarg``: Powertools
    raises RuntimeError); a data name that is no parameter is refused when the
    decorator is applied (``invalid_data_kwarg``: Powertools at the call);
  - storing the result fails: the result is returned and a warning logged
    (``persistence_exception_updating``: Powertools raises); releasing fails: the
    handler's own exception propagates (``persistence_exception_deleting``: Powertools
    raises its persistence error).
  Skipped: ``expired_during_request`` (a put and a get that disagree: our claim is
  one atomic call, there is no second read); ``data_record_*``,
  ``handler_for_status_*``, ``user_local_disabled``, ``delete_from_cache_when_empty``
  (Powertools' internal classes); ``custom_jmespath_function_overrides_builtin_functions``
  (ours keep our decode functions beside the user's; test_powertools_jmespath.py);
  ``with_validator_util``, ``event_source`` (Powertools' other decorators; event
  data classes are in test_powertools_events.py); ``invalid_dynamodb_persistence_layer``
  (its constructor; ours are tested in tests/stores); every expected botocore call
  shape and key string (``expected_params_*``, ``MockPersistenceLayer``).

``_pydantic/test_idempotency_with_pydantic.py``. Ported: pydantic results,
explicit and deduced (``serialization_pydantic``); a model payload with a JMESPath
(``pydantic_with_jmespath``); a model payload keyed as its dict
(``function_pydantic``). Skipped: ``serialization_*_failure_*`` (refused when the
decorator is applied, no store involved: test_powertools_migration.py covers it,
as ``IdempotencyConfigError``); ``function_other`` (``_prepare_data``, internal).

``_redis/test_redis_layer.py``. Ported: both decorators replay and a new payload
runs (``redis_basic``, ``redis_cache``, ``redis_basic_no_decode``);
``powertools_json(body).["user_id"]`` (``redis_event_key``); validation
(``redis_validation``, plus ours: an identical retry replays, where Powertools'
Redis layer rejects it); in progress (``redis_in_progress``); a deleted record
runs again (``redis_delete``); two concurrent deliveries, on an empty key and on
an expired record, run once (``redis_race_condition``,
``redis_orphan_record_race_condition``: real threads on real stores, ordered by
events, where Powertools uses processes over a mock client with latency).
Skipped: ``redis_connection_*``, ``redis_key_error``, ``redis_key_corrupted``,
``item_to_datarecord_conversion`` (its constructor and internal reads, over a
mock client; ours: tests/stores, incl. corrupt records); ``redis_orphan_record``
and ``_lock`` (its ``:lock`` key; our takeover is the atomic claim, ported as the
lease tests); ``redis_error_in_progress`` (ported as the store failure tests).

Powertools' e2e handlers add two behaviours ported here: two threads with
different payloads both run (``function_thread_safety_handler``), and a result
past ``expires_after_seconds`` is made again (``ttl_cache_expiration_handler``).
"""

from __future__ import annotations

import contextvars
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from port_support import Api, Context

from onceonly import IdempotencyConfig
from testkit import ManualClock, load_event

APIGW_KEY = "[body, queryStringParameters]"  # the key Powertools' conftest selects

# A Powertools-style response: Decimals as boto3's resource returns numbers.
RESPONSE = {"message": "test", "statusCode": 200, "decimal_val": Decimal("2.5")}


def apigw_event() -> dict[str, Any]:
    return load_event("apiGatewayProxyV2Event.json")


# -- replay and first execution ------------------------------------------------


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_a_completed_event_replays_without_running_the_handler(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    config = IdempotencyConfig(event_key_jmespath=APIGW_KEY, use_local_cache=use_local_cache)
    runs: list[dict[str, Any]] = []

    @api.idempotent(store=pt_store, config=config)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append(event)
        return copy.deepcopy(RESPONSE)

    first = handler(apigw_event(), Context())
    second = handler(apigw_event(), Context())

    assert len(runs) == 1
    # Powertools replays Decimal("2.5") as "2.5" (its JSON encoder writes str).
    assert first == second == RESPONSE
    assert second["decimal_val"].as_tuple() == Decimal("2.5").as_tuple()


def test_different_payloads_run_separately(api: Api, pt_store: Any) -> None:
    runs: list[str] = []

    @api.idempotent(store=pt_store)
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(event["data"])
        return f"done {event['data']}"

    assert handler({"data": "a"}, Context()) == "done a"
    assert handler({"data": "b"}, Context()) == "done b"
    assert handler({"data": "a"}, Context()) == "done a"
    assert runs == ["a", "b"]


def test_both_decorators_on_one_payload_keep_their_own_records(api: Api, pt_store: Any) -> None:
    event = {"data": "value"}
    answer = {"message": "Foo"}
    runs: list[str] = []

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(record: dict[str, Any]) -> dict[str, Any]:
        runs.append("function")
        return dict(answer)

    @api.idempotent(store=pt_store)
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        runs.append("handler")
        return dict(answer)

    assert record_handler(record=event) == lambda_handler(event, Context()) == {"message": "Foo"}
    answer["message"] = "Bar"  # what a new run would return now
    assert record_handler(record=event) == lambda_handler(event, Context()) == {"message": "Foo"}
    other = {"data": "value3"}
    assert record_handler(record=other) == lambda_handler(other, Context()) == {"message": "Bar"}
    assert runs == ["function", "handler", "function", "handler"]


def test_a_handler_that_mutates_its_event_keeps_its_key(api: Api, pt_store: Any) -> None:
    runs: list[int] = []

    @api.idempotent(store=pt_store, config=IdempotencyConfig(event_key_jmespath="body"))
    def handler(event: dict[str, Any], context: Any) -> str:
        event.pop("body")  # the very field the key is taken from
        runs.append(1)
        return "ok"

    assert handler(apigw_event(), Context()) == "ok"
    assert handler(apigw_event(), Context()) == "ok"
    assert runs == [1]


def test_a_deleted_record_lets_the_event_run_again(api: Api, pt_store: Any) -> None:
    answers = iter(["Foo", "Foo2"])

    @api.idempotent(store=pt_store)
    def handler(event: dict[str, Any], context: Any) -> str:
        return next(answers)

    event, context = {"data": "test_delete"}, Context()
    assert handler(event, context) == "Foo"
    assert pt_store.delete(api.key_for(handler, event, context)) is True
    assert handler(event, context) == "Foo2"


# -- failures ------------------------------------------------------------------


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_an_exception_releases_the_key_so_a_retry_runs(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    runs: list[int] = []

    @api.idempotent(store=pt_store, config=IdempotencyConfig(use_local_cache=use_local_cache))
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("Something went wrong!")
        return "second try"

    with pytest.raises(RuntimeError, match="Something went wrong!"):
        handler({"data": 1}, Context())
    assert handler({"data": 1}, Context()) == "second try"
    assert handler({"data": 1}, Context()) == "second try"
    assert runs == [1, 1]


# -- in progress, leases -------------------------------------------------------


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_a_call_while_the_first_runs_is_told_in_progress_every_time(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    in_progress = api.errors.IdempotencyAlreadyInProgressError
    runs: list[int] = []

    @api.idempotent(store=pt_store, config=IdempotencyConfig(use_local_cache=use_local_cache))
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        runs.append(1)
        for _ in range(3):  # an in-progress answer is never cached
            with pytest.raises(in_progress):
                handler(event, context)
        return {"foo": "bar"}

    assert handler({"data": "value4"}, Context()) == {"foo": "bar"}
    assert handler({"data": "value4"}, Context()) == {"foo": "bar"}  # done: it replays
    assert runs == [1]


def _lease_probe(api: Api, store: Any, clock: ManualClock, lease_ms: int) -> Any:
    """A handler whose first run checks, from inside, that its claim holds ``lease_ms``.

    One ms before the lease ends a duplicate is told "in progress"; one ms
    after it, the duplicate takes the orphaned claim over and runs.
    """
    runs: list[int] = []

    @api.idempotent(store=store)
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        run = len(runs)
        runs.append(run)
        if run == 0:
            clock.advance(lease_ms - 1)
            with pytest.raises(api.errors.IdempotencyAlreadyInProgressError) as caught:
                handler(event, context)
            assert caught.value.retry_after_ms == 1  # by the store's clock
            clock.advance(2)
            assert handler(event, context) == {"run": 1}
        return {"run": run}

    handler.runs = runs  # type: ignore[attr-defined]
    return handler


def test_the_lambda_remaining_time_is_the_lease(
    api: Api, pt_store: Any, clock: ManualClock
) -> None:
    handler = _lease_probe(api, pt_store, clock, lease_ms=5_000)

    # The first run outlived its lease: its result reaches its caller but is not
    # stored over the run that took the key over. Powertools' update is
    # unconditional, so there the late first run would overwrite it.
    assert handler({"data": 1}, Context(5_000)) == {"run": 0}
    assert handler({"data": 1}, Context(5_000)) == {"run": 1}
    assert handler.runs == [0, 1]


def test_without_a_context_the_lease_is_lease_seconds(
    api: Api, pt_store: Any, clock: ManualClock
) -> None:
    # Powertools, with no remaining time known, warns and sets no in-progress
    # expiry: the claim then holds until the record expires (an hour by default).
    handler = _lease_probe(api, pt_store, clock, lease_ms=60_000)

    assert handler({"data": 1}, None) == {"run": 0}
    assert handler.runs == [0, 1]


def test_register_lambda_context_gives_a_function_the_remaining_time(
    api: Api, pt_store: Any, clock: ManualClock
) -> None:
    config = IdempotencyConfig()
    runs: list[int] = []

    @api.idempotent_function(store=pt_store, data="record", config=config)
    def record_handler(record: dict[str, Any]) -> int:
        run = len(runs)
        runs.append(run)
        if run == 0:
            clock.advance(4_999)
            with pytest.raises(api.errors.IdempotencyAlreadyInProgressError):
                record_handler(record)
            clock.advance(2)  # 5_001 ms: the remaining time, not lease_seconds (60 s)
            assert record_handler(record) == 1
        return run

    def invocation() -> int:
        config.register_lambda_context(Context(5_000))
        return int(record_handler(record={"id": 1}))

    # Its own context: the registration must not outlive this test.
    assert contextvars.copy_context().run(invocation) == 0
    assert runs == [0, 1]


# -- expiry and the local cache -----------------------------------------------


def test_a_record_past_expires_after_seconds_runs_again(
    api: Api, pt_store: Any, clock: ManualClock
) -> None:
    # Without the local cache: its entries expire on the process's own clock,
    # which a test cannot move (and Powertools' tests do not expire it either).
    runs: list[int] = []

    @api.idempotent(store=pt_store, config=IdempotencyConfig(expires_after_seconds=60))
    def handler(event: dict[str, Any], context: Any) -> int:
        runs.append(len(runs))
        return len(runs)

    assert handler({"data": 1}, Context()) == 1
    clock.advance(59_999)
    assert handler({"data": 1}, Context()) == 1
    clock.advance(2)
    assert handler({"data": 1}, Context()) == 2
    assert handler({"data": 1}, Context()) == 2
    assert runs == [0, 1]


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_the_local_cache_replays_without_the_store(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    runs: list[int] = []

    @api.idempotent(store=pt_store, config=IdempotencyConfig(use_local_cache=use_local_cache))
    def handler(event: dict[str, Any], context: Any) -> str:
        runs.append(1)
        return "hello"

    event, context = {"data": "cached"}, Context()
    assert handler(event, context) == "hello"
    pt_store.delete(api.key_for(handler, event, context))  # the store forgets it
    assert handler(event, context) == "hello"
    assert runs == ([1] if use_local_cache else [1, 1])


# -- response hook -------------------------------------------------------------


def test_the_response_hook_is_not_called_on_a_first_run(api: Api, pt_store: Any) -> None:
    calls: list[Any] = []
    config = IdempotencyConfig(response_hook=lambda result, record: calls.append(result))

    @api.idempotent(store=pt_store, config=config)
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        return {"message": "first"}

    assert handler({"data": 1}, Context()) == {"message": "first"}
    assert calls == []


@pytest.mark.parametrize("use_local_cache", [False, True])
def test_the_response_hook_gets_the_stored_result_on_every_replay(
    api: Api, pt_store: Any, use_local_cache: bool
) -> None:
    seen: list[tuple[Any, Any]] = []

    def hook(result: Any, record: Any) -> Any:
        seen.append((copy.deepcopy(result), record))
        result["idempotent_response"] = True  # a hook may change what it returns
        return result

    config = IdempotencyConfig(response_hook=hook, use_local_cache=use_local_cache)

    @api.idempotent(store=pt_store, config=config)
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        return {"message": "first"}

    handler({"data": 1}, Context())
    assert handler({"data": 1}, Context()) == {"message": "first", "idempotent_response": True}
    assert handler({"data": 1}, Context()) == {"message": "first", "idempotent_response": True}
    # Each replay starts from the stored result, not from what the hook made of it.
    assert [result for result, _ in seen] == [{"message": "first"}] * 2
    assert all(record is not None for _, record in seen)


def test_the_response_hook_gets_a_stored_none(api: Api, pt_store: Any) -> None:
    def hook(result: Any, record: Any) -> Any:
        return {"idempotent_response": True, "response": result}

    @api.idempotent(store=pt_store, config=IdempotencyConfig(response_hook=hook))
    def handler(event: dict[str, Any], context: Any) -> None:
        return None

    assert handler({"data": 1}, Context()) is None
    assert handler({"data": 1}, Context()) == {"idempotent_response": True, "response": None}


# -- concurrency -----------------------------------------------------------------


def _concurrent_duplicate(api: Api, handler: Any, inside: threading.Event, go: Any) -> Any:
    """Start a delivery on a thread; while it runs, a second one must be told "in progress"."""
    event = {"data": "value4"}
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(handler, event, Context())
        try:
            assert inside.wait(30), "the first delivery never started"
            with pytest.raises(api.errors.IdempotencyAlreadyInProgressError):
                handler(event, Context())
        finally:
            go.set()
        return first.result(timeout=30)


def _blocking_handler(api: Api, store: Any, runs: list[int]) -> tuple[Any, Any, Any]:
    inside, go = threading.Event(), threading.Event()

    @api.idempotent(store=store)
    def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        runs.append(1)
        inside.set()
        assert go.wait(30)
        return {"foo": "bar"}

    return handler, inside, go


def test_two_concurrent_deliveries_run_once(api: Api, pt_store: Any) -> None:
    runs: list[int] = []
    handler, inside, go = _blocking_handler(api, pt_store, runs)

    assert _concurrent_duplicate(api, handler, inside, go) == {"foo": "bar"}
    assert handler({"data": "value4"}, Context()) == {"foo": "bar"}
    assert runs == [1]


def test_two_concurrent_deliveries_on_an_expired_record_run_once(
    api: Api, pt_store: Any, clock: ManualClock
) -> None:
    runs: list[int] = []
    handler, inside, go = _blocking_handler(api, pt_store, runs)
    go.set()
    handler({"data": "value4"}, Context())  # a record, then it expires
    clock.advance(3_600_001)
    inside.clear()
    go.clear()

    assert _concurrent_duplicate(api, handler, inside, go) == {"foo": "bar"}
    assert runs == [1, 1]


def test_concurrent_calls_with_different_payloads_both_run(api: Api, pt_store: Any) -> None:
    both_inside = threading.Barrier(2, timeout=30)

    @api.idempotent_function(store=pt_store, data="record")
    def record_handler(record: int) -> dict[str, Any]:
        both_inside.wait()  # each waits for the other: neither is told "in progress"
        return {"record": record, "thread": threading.current_thread().name}

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: record_handler(record=i), [0, 1]))

    assert [r["record"] for r in results] == [0, 1]
    assert results[0]["thread"] != results[1]["thread"]
