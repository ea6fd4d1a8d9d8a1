"""OpenTelemetry (issue 16): a span per idempotent call, a counter per outcome, store latency.

Through the real OpenTelemetry SDK and its in-memory exporters, installed as
this process's providers by the ``otel`` fixture (once: OpenTelemetry takes
a global provider once). Each test decorates a function of its own, so its
spans and data points are told apart by ``onceonly.function``. What a program
that never imports OpenTelemetry gets is checked in fresh interpreters.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from onceonly import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyKeyReuseError,
    IdempotencyStoreError,
    OnceOnlyWarning,
    idempotent,
    idempotent_function,
)
from onceonly.stores import AsyncMemoryStore, MemoryStore
from onceonly.stores.redis import RedisStore
from onceonly.testing import LambdaContext
from testkit import ManualClock


@dataclass
class Otel:
    """The SDK's in-memory span exporter and metric reader, and their tracer."""

    spans: Any
    metrics: Any
    tracer: Any

    def calls_of(self, function: str) -> list[Any]:
        """The finished ``onceonly.call`` spans of one function, oldest first."""
        return [
            span
            for span in self.spans.get_finished_spans()
            if span.name == "onceonly.call" and span.attributes["onceonly.function"] == function
        ]

    def points(self, metric: str) -> list[Any]:
        """The data points of one of onceonly's metrics (cumulative since the fixture)."""
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != "onceonly":
                    continue
                for each in scope.metrics:
                    if each.name == metric:
                        found.extend(each.data.data_points)
        return found

    def outcomes(self, function: str) -> dict[str, int]:
        """``onceonly.calls`` of one function, by outcome."""
        return {
            point.attributes["onceonly.outcome"]: point.value
            for point in self.points("onceonly.calls")
            if point.attributes["onceonly.function"] == function
        }


@pytest.fixture(scope="module")
def otel() -> Iterator[Otel]:
    """This process's tracer and meter providers: the SDK, exporting to memory."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    metering = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracing)
    metrics.set_meter_provider(metering)
    yield Otel(spans, reader, trace.get_tracer("tests"))
    # Later tests' spans go nowhere: a stopped exporter keeps none.
    tracing.shutdown()
    metering.shutdown()


def _events(span: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes)) for event in span.events]


def test_a_first_call_and_its_duplicate(otel: Otel) -> None:
    store = MemoryStore()

    @idempotent_function(data="order", store=store)
    def charge_once(order: dict[str, Any]) -> dict[str, int]:
        return {"amount": order["amount"]}

    assert charge_once(order={"id": 1, "amount": 5}) == {"amount": 5}
    assert charge_once(order={"id": 1, "amount": 5}) == {"amount": 5}
    first, second = otel.calls_of(charge_once.guard.name)
    key = charge_once.key_for(order={"id": 1, "amount": 5})
    assert dict(first.attributes) == {
        "onceonly.function": charge_once.guard.name,
        "onceonly.store": "MemoryStore",
        "onceonly.key_digest": key[-16:],
        "onceonly.outcome": "executed",
        "onceonly.takeover": False,
        "onceonly.round_trips": 2,
    }
    assert _events(first) == [
        ("claim", {"onceonly.claimed": True, "onceonly.takeover": False}),
        ("run", {"onceonly.protected": True}),
        ("complete", {"onceonly.stored": True}),
    ]
    assert first.status.is_ok
    assert second.attributes["onceonly.outcome"] == "replayed"
    assert second.attributes["onceonly.round_trips"] == 1
    assert _events(second) == [
        ("claim", {"onceonly.claimed": False, "onceonly.found": "completed"})
    ]
    assert otel.outcomes(charge_once.guard.name) == {"executed": 1, "replayed": 1}


def test_store_latency_is_one_histogram_point_per_operation(otel: Otel) -> None:
    @idempotent_function(data="order", store=MemoryStore())
    def latency_probe(order: int) -> int:
        if order < 0:
            raise ValueError("refused")
        return order

    before = {
        tuple(sorted(p.attributes.items())): p.count for p in otel.points("onceonly.store.duration")
    }
    latency_probe(order=1)
    latency_probe(order=1)
    with pytest.raises(ValueError, match="refused"):
        latency_probe(order=-1)
    after = {
        tuple(sorted(p.attributes.items())): p.count for p in otel.points("onceonly.store.duration")
    }
    grown = {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}
    memory = ("onceonly.store", "MemoryStore")
    assert grown == {
        (("onceonly.operation", "claim"), memory): 3,
        (("onceonly.operation", "complete"), memory): 1,
        (("onceonly.operation", "release"), memory): 1,
    }
    assert all(p.min >= 0 for p in otel.points("onceonly.store.duration"))


def test_the_functions_own_spans_are_children_of_the_call(otel: Otel) -> None:
    @idempotent_function(data="order", store=MemoryStore())
    def traced_inside(order: int) -> int:
        with otel.tracer.start_as_current_span("charge the card"):
            return order

    with otel.tracer.start_as_current_span("request") as request:
        traced_inside(order=7)
    (call,) = otel.calls_of(traced_inside.guard.name)
    inner = next(s for s in otel.spans.get_finished_spans() if s.name == "charge the card")
    assert inner.parent.span_id == call.context.span_id
    assert call.parent.span_id == request.get_span_context().span_id


def test_a_function_that_raises_releases_and_the_span_says_so(otel: Otel) -> None:
    @idempotent_function(data="order", store=MemoryStore())
    def declined(order: int) -> int:
        raise ValueError("card declined")

    with pytest.raises(ValueError, match="card declined"):
        declined(order=1)
    (call,) = otel.calls_of(declined.guard.name)
    assert call.attributes["onceonly.outcome"] == "released"
    assert call.attributes["onceonly.round_trips"] == 2
    assert [name for name, _ in _events(call)] == ["claim", "run", "release", "exception"]
    assert _events(call)[1] == ("run", {"onceonly.protected": True, "error.type": "ValueError"})
    assert _events(call)[2] == ("release", {"onceonly.released": True})
    assert _events(call)[3][1]["exception.type"] == "ValueError"
    assert not call.status.is_ok
    assert call.status.description == "ValueError"
    assert otel.outcomes(declined.guard.name) == {"released": 1}


def test_in_progress_and_key_reuse_are_outcomes(otel: Otel) -> None:
    store = MemoryStore()
    config = IdempotencyConfig(event_key_jmespath="id", payload_validation_jmespath="amount")

    @idempotent_function(data="order", store=store, config=config)
    def busy(order: dict[str, Any]) -> int:
        return int(order["amount"])

    held = busy.key_for(order={"id": 1, "amount": 5})
    store.claim(held, token="f" * 32, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    with pytest.raises(IdempotencyAlreadyInProgressError):
        busy(order={"id": 1, "amount": 5})
    busy(order={"id": 2, "amount": 5})
    with pytest.raises(IdempotencyKeyReuseError):
        busy(order={"id": 2, "amount": 6})
    in_progress, executed, reused = otel.calls_of(busy.guard.name)
    assert in_progress.attributes["onceonly.outcome"] == "in_progress"
    assert _events(in_progress)[0] == (
        "claim",
        {"onceonly.claimed": False, "onceonly.found": "in_progress"},
    )
    assert executed.attributes["onceonly.outcome"] == "executed"
    assert reused.attributes["onceonly.outcome"] == "key_reuse"
    assert reused.status.description == "IdempotencyKeyReuseError"
    assert otel.outcomes(busy.guard.name) == {"in_progress": 1, "executed": 1, "key_reuse": 1}


def test_a_takeover_and_a_wait_are_noted(otel: Otel) -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=5)

    @idempotent_function(data="order", store=store, config=config)
    def orphaned(order: int) -> int:
        return order

    key = orphaned.key_for(order=1)
    store.claim(key, token="e" * 32, lease_ms=1_000, ttl_ms=60_000, fingerprint=None)
    clock.advance(1_001)
    assert orphaned(order=1) == 1
    (call,) = otel.calls_of(orphaned.guard.name)
    assert call.attributes["onceonly.outcome"] == "executed"
    assert call.attributes["onceonly.takeover"] is True
    assert _events(call)[0] == ("claim", {"onceonly.claimed": True, "onceonly.takeover": True})


def test_a_wait_is_an_event_with_its_length(otel: Otel) -> None:
    store = MemoryStore()
    config = IdempotencyConfig(on_in_progress="wait", wait_timeout_seconds=0.05)

    @idempotent_function(data="order", store=store, config=config)
    def waited_on(order: int) -> int:
        return order

    key = waited_on.key_for(order=1)
    store.claim(key, token="d" * 32, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    with pytest.raises(IdempotencyAlreadyInProgressError):
        waited_on(order=1)
    (call,) = otel.calls_of(waited_on.guard.name)
    waits = [attributes for name, attributes in _events(call) if name == "wait"]
    assert waits[0] == {"onceonly.wait_ms": 20}
    assert all(attributes["onceonly.wait_ms"] >= 1 for attributes in waits)
    claims = [name for name, _ in _events(call) if name == "claim"]
    assert call.attributes["onceonly.round_trips"] == len(claims) == len(waits) + 1


def test_a_local_cache_hit_is_a_replay_with_no_round_trip(otel: Otel) -> None:
    @idempotent_function(
        data="order", store=MemoryStore(), config=IdempotencyConfig(use_local_cache=True)
    )
    def cached(order: int) -> int:
        return order

    cached(order=1)
    cached(order=1)
    _, hit = otel.calls_of(cached.guard.name)
    assert hit.attributes["onceonly.outcome"] == "replayed"
    assert hit.attributes["onceonly.round_trips"] == 0
    assert _events(hit) == []


@pytest.fixture
def dead_redis() -> Iterator[redis.Redis]:
    """A client of a loopback port nobody listens on: every command fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    yield client
    client.close()


def test_a_store_error_before_the_run_and_running_unprotected(
    otel: Otel, dead_redis: redis.Redis
) -> None:
    store = RedisStore(dead_redis)

    @idempotent_function(data="order", store=store)
    def closed(order: int) -> int:
        return order

    @idempotent_function(data="order", store=store, config=IdempotencyConfig(on_store_error="run"))
    def open_(order: int) -> int:
        return order

    with pytest.raises(IdempotencyStoreError):
        closed(order=1)
    assert open_(order=1) == 1
    (failed,) = otel.calls_of(closed.guard.name)
    assert failed.attributes["onceonly.outcome"] == "store_error"
    assert failed.attributes["onceonly.store"] == "RedisStore"
    assert failed.attributes["onceonly.round_trips"] == 1
    assert _events(failed)[0] == ("claim", {"error.type": "IdempotencyStoreError"})
    (ran,) = otel.calls_of(open_.guard.name)
    assert ran.attributes["onceonly.outcome"] == "unprotected"
    assert [name for name, _ in _events(ran)] == ["claim", "run"]
    assert _events(ran)[1] == ("run", {"onceonly.protected": False})
    failures = [
        p
        for p in otel.points("onceonly.store.duration")
        if p.attributes.get("error.type") == "IdempotencyStoreError"
        and p.attributes["onceonly.store"] == "RedisStore"
    ]
    assert [p.attributes["onceonly.operation"] for p in failures] == ["claim"]
    assert failures[0].count == 2


def test_a_call_without_a_key_is_unprotected(otel: Otel) -> None:
    @idempotent(store=MemoryStore(), config=IdempotencyConfig(event_key_jmespath="order_id"))
    def handler(event: dict[str, Any], context: Any) -> str:
        return "ok"

    with pytest.warns(OnceOnlyWarning, match="no idempotency key"):
        assert handler({"other": 1}, LambdaContext()) == "ok"
    (call,) = otel.calls_of(handler.guard.name)
    assert call.attributes["onceonly.outcome"] == "unprotected"
    assert "onceonly.key_digest" not in call.attributes
    assert call.attributes["onceonly.round_trips"] == 0


def test_an_async_call_has_its_span_and_children(otel: Otel) -> None:
    @idempotent_function(data="order", store=AsyncMemoryStore())
    async def charge_async(order: int) -> int:
        with otel.tracer.start_as_current_span("inside"):
            await asyncio.sleep(0)
        return order

    async def main() -> None:
        assert await charge_async(order=3) == 3
        assert await charge_async(order=3) == 3

    asyncio.run(main())
    first, second = otel.calls_of(charge_async.guard.name)
    assert first.attributes["onceonly.outcome"] == "executed"
    assert second.attributes["onceonly.outcome"] == "replayed"
    inside = next(s for s in otel.spans.get_finished_spans() if s.name == "inside")
    assert inside.parent.span_id == first.context.span_id


def test_an_async_call_that_raises_is_released(otel: Otel) -> None:
    @idempotent_function(data="order", store=AsyncMemoryStore())
    async def refuse_async(order: int) -> int:
        raise KeyError(order)

    with pytest.raises(KeyError):
        asyncio.run(refuse_async(order=3))
    (call,) = otel.calls_of(refuse_async.guard.name)
    assert call.attributes["onceonly.outcome"] == "released"
    assert [name for name, _ in _events(call)] == ["claim", "run", "release", "exception"]


def test_nothing_of_the_payload_or_the_raw_key_is_in_a_span(otel: Otel) -> None:
    secret = "4111-1111-1111-1111"

    @idempotent_function(data="card", store=MemoryStore())
    def tokenize(card: str) -> str:
        return "tok"

    tokenize(card=secret)
    (call,) = otel.calls_of(tokenize.guard.name)
    key = tokenize.key_for(card=secret)
    seen = json.dumps([dict(call.attributes), _events(call)], default=str)
    assert secret not in seen
    assert key not in seen
    assert key[-16:] in seen


def _fresh(code: str) -> list[Any]:
    """Run ``code`` in a fresh interpreter with this test's path; the JSON it prints last."""
    script = f"import sys\nsys.path[:0] = {[p for p in sys.path if p]!r}\n{code}\n"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: list[Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_a_program_that_never_imports_opentelemetry_gets_no_telemetry() -> None:
    loaded = _fresh(
        "import json\n"
        "from onceonly import idempotent_function\n"
        "from onceonly.stores import MemoryStore\n"
        "@idempotent_function(data='order', store=MemoryStore())\n"
        "def f(order): return order\n"
        "f(order=1); f(order=1)\n"
        "print(json.dumps([f.guard.watcher.telemetry is None,"
        " sorted(m for m in sys.modules if m.startswith('opentelemetry'))]))"
    )
    assert loaded == [True, []]


def test_opentelemetry_imported_after_the_decoration_is_found_by_the_next_call() -> None:
    found = _fresh(
        "import json\n"
        "from onceonly import idempotent_function\n"
        "from onceonly.stores import MemoryStore\n"
        "@idempotent_function(data='order', store=MemoryStore())\n"
        "def f(order): return order\n"
        "f(order=1)\n"
        "before = f.guard.watcher.telemetry is None\n"
        "import opentelemetry.trace\n"  # the API alone: no SDK, spans are no-ops
        "assert f(order=1) == 1 and f(order=2) == 2\n"
        "print(json.dumps([before, type(f.guard.watcher.telemetry).__name__]))"
    )
    assert found == [True, "Telemetry"]


# -- the HTTP middlewares: a span per covered request -------------------------------------


async def _made(scope: Any, receive: Any, send: Any) -> None:
    """A raw ASGI app: reads the body, answers 201 inside a span of its own."""
    from opentelemetry import trace

    while (await receive()).get("more_body", False):
        pass
    with trace.get_tracer("tests").start_as_current_span("asgi app"):
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})


def test_an_asgi_request_and_its_retry(otel: Otel) -> None:
    import httpx

    from onceonly.http.asgi import IdempotencyMiddleware

    app = IdempotencyMiddleware(_made, AsyncMemoryStore())

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            answers = [
                await http.post("/pay", content=b"{}", headers={"Idempotency-Key": "k-asgi-1"})
                for _ in range(2)
            ]
        return [answer.status_code for answer in answers]

    assert asyncio.run(main()) == [201, 201]
    first, retry = otel.calls_of("asgi")[-2:]
    assert first.attributes["onceonly.outcome"] == "executed"
    assert first.attributes["onceonly.store"] == "AsyncMemoryStore"
    assert retry.attributes["onceonly.outcome"] == "replayed"
    inner = [s for s in otel.spans.get_finished_spans() if s.name == "asgi app"][-1]
    assert inner.parent.span_id == first.context.span_id
    seen = json.dumps([dict(first.attributes), _events(first)])
    assert "k-asgi-1" not in seen


def test_a_wsgi_request_whose_app_fails_is_released(otel: Otel) -> None:
    from werkzeug.test import Client

    from onceonly.http.wsgi import IdempotencyMiddleware

    def broken(environ: Any, start_response: Any) -> list[bytes]:
        raise RuntimeError("the app failed")

    client = Client(IdempotencyMiddleware(broken, MemoryStore()))
    with pytest.raises(RuntimeError, match="the app failed"):
        client.post("/pay", data=b"{}", headers={"Idempotency-Key": "k-wsgi-1"})
    (call,) = otel.calls_of("wsgi")
    assert call.attributes["onceonly.outcome"] == "released"
    assert call.attributes["onceonly.round_trips"] == 2
    assert [name for name, _ in _events(call)] == ["claim", "run", "release", "exception"]
