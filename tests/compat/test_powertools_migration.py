"""Powertools code moved over (issue 11, items 4, 5, 6 and 8).

``config.register_lambda_context`` and a handler's context give an
idempotent_function's claims the invocation's remaining time; serializer
classes given as Powertools users write them; old argument names get a hint;
the switch-off variables (both names, Powertools' truthy values, set after
import) and ``onceonly.testing.disabled()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import warnings
from typing import Any

import pydantic
import pytest

from onceonly import IdempotencyConfig, idempotent, idempotent_function, testing
from onceonly.batch import ItemStatus, process_batch
from onceonly.errors import IdempotencyConfigError, OnceOnlyWarning
from onceonly.serializers import CustomSerializer, DataclassSerializer, PydanticSerializer
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import ManualClock

# -- item 4: the Lambda context of the invocation ------------------------------


class Context:
    """A Lambda context double with a fixed remaining time."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def _deadline_seen(store: MemoryStore, seen: list[int]) -> Any:
    """An idempotent_function whose body records its own claim's deadline."""

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="fn"))
    def charge(order: dict[str, Any]) -> str:
        record = store.get(charge.key_for(order))
        assert record is not None
        seen.append(record.deadline_ms)
        return "ok"

    return charge


def test_register_lambda_context_gives_a_function_the_remaining_time() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    seen: list[int] = []
    charge = _deadline_seen(store, seen)
    config = IdempotencyConfig(key_prefix="fn")
    before = (config, hash(config))

    def invocation() -> None:
        config.register_lambda_context(Context(5_000))
        charge({"id": 1})

    contextvars.copy_context().run(invocation)

    assert seen == [clock.now + 5_000]
    assert (config, hash(config)) == before  # the frozen config is not changed
    charge({"id": 2})  # outside that invocation: lease_seconds again
    assert seen[1] == clock.now + 60_000


def test_a_handler_context_reaches_functions_called_inside_and_ends_with_it() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    seen: list[int] = []
    charge = _deadline_seen(store, seen)

    @idempotent(store=store, config=IdempotencyConfig(key_prefix="h"))
    def handler(event: dict[str, Any], context: Any) -> str:
        return str(charge({"id": event["id"]}))

    assert handler({"id": 1}, Context(5_000)) == "ok"
    charge({"id": 2})

    assert seen == [clock.now + 5_000, clock.now + 60_000]


def test_a_registration_does_not_leak_to_another_thread() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    seen: list[int] = []
    charge = _deadline_seen(store, seen)
    registered = threading.Event()
    other_done = threading.Event()

    def first() -> None:
        IdempotencyConfig().register_lambda_context(Context(5_000))
        registered.set()
        assert other_done.wait(30)
        charge({"id": 1})

    def second() -> None:
        assert registered.wait(30)
        charge({"id": 2})
        other_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert seen == [clock.now + 60_000, clock.now + 5_000]


def test_a_registration_does_not_leak_to_another_task() -> None:
    clock = ManualClock()
    store = AsyncMemoryStore(clock=clock)
    seen: list[int] = []

    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="a"))
    async def charge(order: dict[str, Any]) -> str:
        record = await store.get(charge.key_for(order))
        assert record is not None
        seen.append(record.deadline_ms)
        return "ok"

    async def main() -> None:
        registered = asyncio.Event()

        async def first() -> None:
            IdempotencyConfig().register_lambda_context(Context(5_000))
            registered.set()
            await charge({"id": 1})

        async def second() -> None:
            await registered.wait()
            await charge({"id": 2})

        await asyncio.gather(first(), second())

    asyncio.run(main())

    assert sorted(seen) == [clock.now + 5_000, clock.now + 60_000]


# -- item 5: serializers -------------------------------------------------------


@dataclasses.dataclass
class Receipt:
    order: int
    total: str


class Model(pydantic.BaseModel):
    order: int


def test_dataclass_serializer_class_reads_the_return_annotation() -> None:
    runs: list[int] = []

    @idempotent_function(store=MemoryStore(), data="order", output_serializer=DataclassSerializer)
    def buy(order: int) -> Receipt:
        runs.append(order)
        return Receipt(order, "9.99")

    assert buy(1) == Receipt(1, "9.99")
    assert buy(1) == Receipt(1, "9.99")
    assert runs == [1]


def test_pydantic_serializer_class_reads_an_optional_return_annotation() -> None:
    @idempotent_function(store=MemoryStore(), data="order", output_serializer=PydanticSerializer)
    def buy(order: int) -> Model | None:
        return Model(order=order)

    assert buy(3) == Model(order=3)
    assert buy(3) == Model(order=3)


@pytest.mark.parametrize("kind", [DataclassSerializer, PydanticSerializer])
def test_a_serializer_class_without_a_usable_annotation_is_refused_when_applied(
    kind: Any,
) -> None:
    def bare(order: int):  # type: ignore[no-untyped-def]
        raise AssertionError("never runs")

    def plain(order: int) -> dict[str, int]:
        raise AssertionError("never runs")

    for func in (bare, plain):
        with pytest.raises(IdempotencyConfigError, match=f"{kind.__name__}.*return annotation"):
            idempotent_function(store=MemoryStore(), data="order", output_serializer=kind)(func)


def test_a_dataclass_serializer_class_refuses_a_pydantic_annotation() -> None:
    def buy(order: int) -> Model:
        raise AssertionError("never runs")

    with pytest.raises(IdempotencyConfigError, match="DataclassSerializer"):
        idempotent_function(
            store=MemoryStore(), data="order", output_serializer=DataclassSerializer
        )(buy)


def test_a_custom_serializer_is_not_called_for_none() -> None:
    def to_json(value: Any) -> Any:
        assert value is not None, "to_json called with None"
        return {"v": value}

    def from_json(data: Any) -> Any:
        assert data is not None, "from_json called with None"
        return data["v"]

    runs: list[int] = []

    @idempotent_function(
        store=MemoryStore(), data="order", output_serializer=CustomSerializer(to_json, from_json)
    )
    def maybe(order: int) -> Any:
        runs.append(order)
        return None if order == 0 else order

    assert maybe(0) is None
    assert maybe(0) is None
    assert maybe(5) == 5
    assert maybe(5) == 5
    assert runs == [0, 5]


# -- item 6: old names get a hint ----------------------------------------------


def test_persistence_store_on_idempotent_names_store() -> None:
    with pytest.raises(IdempotencyConfigError, match=r"store="):
        idempotent(persistence_store=MemoryStore())  # type: ignore[call-arg]


def test_powertools_names_on_idempotent_function_name_ours() -> None:
    with pytest.raises(IdempotencyConfigError, match=r"data="):
        idempotent_function(store=MemoryStore(), data_keyword_argument="order")  # type: ignore[call-arg]
    with pytest.raises(IdempotencyConfigError, match=r"store="):
        idempotent_function(persistence_store=MemoryStore(), data="order")  # type: ignore[call-arg]


def test_an_unknown_keyword_is_still_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        idempotent_function(store=MemoryStore(), data="x", colour=1)  # type: ignore[call-arg]


def test_an_empty_event_key_jmespath_means_the_whole_payload() -> None:
    store = MemoryStore()

    def handler(event: Any, context: Any) -> str:
        return "ok"

    whole = idempotent(store=store, config=IdempotencyConfig(key_prefix="p"))(handler)
    empty = idempotent(
        store=store,
        config=IdempotencyConfig(
            key_prefix="p", event_key_jmespath="", payload_validation_jmespath=""
        ),
    )(handler)

    assert empty.key_for({"a": 1}, None) == whole.key_for({"a": 1}, None)
    assert IdempotencyConfig(event_key_jmespath="") == IdempotencyConfig()


# -- item 8: switching off -----------------------------------------------------


def _counting(store: MemoryStore, runs: list[int]) -> Any:
    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix="off"))
    def work(order: int) -> int:
        runs.append(order)
        return order

    return work


@pytest.mark.parametrize("name", ["ONCEONLY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"])
@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Y", "on", "t", "True "])
def test_the_switch_set_after_decoration_runs_every_call(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    store = MemoryStore()
    runs: list[int] = []
    work = _counting(store, runs)
    monkeypatch.setenv(name, value)

    for _ in range(2):
        with pytest.warns(OnceOnlyWarning, match="running without idempotency"):
            assert work(7) == 7

    assert runs == [7, 7]
    assert store.get(work.key_for(7)) is None


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_a_false_switch_protects(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    runs: list[int] = []
    work = _counting(MemoryStore(), runs)
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", value)

    work(7)
    work(7)

    assert runs == [7]


def test_removing_the_variable_switches_protection_back_on() -> None:
    runs: list[int] = []
    work = _counting(MemoryStore(), runs)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("ONCEONLY_DISABLED", "1")
        with pytest.warns(OnceOnlyWarning):
            work(1)

    work(1)
    work(1)

    assert runs == [1, 1]


def test_testing_disabled_switches_every_decorator_off_for_its_block() -> None:
    runs: list[int] = []
    work = _counting(MemoryStore(), runs)

    with testing.disabled():
        for _ in range(2):
            with pytest.warns(OnceOnlyWarning, match="running without idempotency"):
                work(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        work(1)
        work(1)

    assert runs == [1, 1, 1]


def test_the_switch_covers_process_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    records = [{"id": 1}, {"id": 1}, {"id": 2}]
    runs: list[int] = []

    def handle(record: dict[str, int]) -> int:
        runs.append(record["id"])
        return record["id"]

    config = IdempotencyConfig(event_key_jmespath="id", key_prefix="b")
    monkeypatch.setenv("POWERTOOLS_IDEMPOTENCY_DISABLED", "1")
    with pytest.warns(OnceOnlyWarning, match="running without idempotency"):
        result = process_batch(records, handle, store=store, config=config)

    assert runs == [1, 1, 2]
    assert [item.status for item in result.items] == [ItemStatus.RUN] * 3
    assert [item.value for item in result.items] == [1, 1, 2]
    assert store.get(_batch_key(config, 1)) is None


def _batch_key(config: IdempotencyConfig, record_id: int) -> str:
    probe = idempotent_function(store=MemoryStore(), data="record", config=config)(
        lambda record: record
    )
    key = probe.key_for({"id": record_id})
    assert isinstance(key, str)
    return key


def test_the_environment_is_followed_under_pytest_only() -> None:
    # The audit hook that follows os.environ is a tax on every audited
    # operation of the process: it is installed for test runs, not in
    # production, where the variables are read at import.
    import subprocess
    import sys

    from onceonly import runtime

    assert runtime.FOLLOWS_ENVIRONMENT is True
    code = (
        "import onceonly.runtime as r, sys; print(r.FOLLOWS_ENVIRONMENT, 'pytest' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
