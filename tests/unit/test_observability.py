"""Observability (issue 16): Stats' repr and snapshot, on_event callbacks, logs' extra fields.

Every path that counts (a decorated function, sync and async, a batch, the
WSGI and ASGI middlewares) tells the callbacks registered on its Stats; a
callback that raises is logged once and the call goes on. Log records carry
``onceonly_*`` fields and never the payload, the result or a raw
Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from onceonly import Event, IdempotencyConfig, IdempotencyConfigError, Stats, idempotent_function
from onceonly.batch import ItemStatus, process_batch, process_batch_async
from onceonly.http.asgi import IdempotencyMiddleware as AsgiMiddleware
from onceonly.http.wsgi import IdempotencyMiddleware as WsgiMiddleware
from onceonly.metrics import KEY_DIGEST_CHARS, StatsEvent, key_digest, log_extra
from onceonly.stores import AsyncMemoryStore, MemoryStore

SECRET = "card-4111-1111-1111-1111"  # in payloads and results: never in a log record
RAW_HTTP_KEY = "raw-key-9f8e7d"  # an Idempotency-Key as sent: never in a log record
EXTRA_FIELDS = {
    "onceonly_function",
    "onceonly_key_digest",
    "onceonly_outcome",
    "onceonly_store",
    "onceonly_duration_ms",
}


def _events(stats: Stats) -> list[StatsEvent]:
    seen: list[StatsEvent] = []
    stats.on_event(seen.append)
    return seen


def _no_secret_in(records: list[logging.LogRecord], *secrets: str) -> None:
    for record in records:
        text = repr(record.__dict__) + record.getMessage()
        for secret in secrets:
            assert secret not in text, (secret, record.getMessage())


# -- Stats ----------------------------------------------------------------------------


def test_repr_lists_the_counts_that_are_not_zero_in_event_order() -> None:
    stats = Stats()
    assert repr(stats) == "Stats()"
    stats.add(Event.REPLAYED)
    stats.add(Event.EXECUTED)
    stats.add(Event.REPLAYED)
    assert repr(stats) == "Stats(executed=1, replayed=2)"
    assert stats[Event.REPLAYED] == 2  # reading (repr too) does not change the counts


def test_snapshot_has_every_event_by_value_and_is_the_callers_to_keep() -> None:
    stats = Stats()
    stats.add(Event.TAKEOVER)
    snap = stats.snapshot()
    assert list(snap) == [event.value for event in Event]
    assert snap["takeover"] == 1
    assert sum(snap.values()) == 1
    snap["takeover"] = 99
    stats.add(Event.TAKEOVER)
    assert stats.snapshot()["takeover"] == 2


def test_reset_keeps_the_callbacks() -> None:
    stats = Stats()
    seen = _events(stats)
    stats.reset()
    stats.add(Event.EXECUTED, "f", "f:" + "a" * 64, "MemoryStore", 1.5)
    assert seen == [StatsEvent(Event.EXECUTED, "f", "a" * KEY_DIGEST_CHARS, "MemoryStore", 1.5)]


def test_on_event_registers_once_returns_the_callback_and_off_event_removes_it() -> None:
    stats = Stats()
    seen: list[Event] = []

    @stats.on_event
    def note(event: StatsEvent) -> None:
        seen.append(event.event)

    assert stats.on_event(note) is note  # registered twice: called once
    assert stats.listening
    stats.add(Event.REPLAYED)
    assert seen == [Event.REPLAYED]
    assert stats.off_event(note) is True
    assert stats.off_event(note) is False
    assert not stats.listening
    stats.add(Event.REPLAYED)
    assert seen == [Event.REPLAYED]
    assert stats[Event.REPLAYED] == 2


def test_on_event_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError, match="on_event takes a callable, got int"):
        Stats().on_event(3)  # type: ignore[arg-type]


def test_registration_from_many_threads_loses_none() -> None:
    stats = Stats()
    callbacks: list[Callable[[StatsEvent], None]] = [(lambda event, i=i: None) for i in range(200)]
    threads = [
        threading.Thread(target=lambda part=part: [stats.on_event(c) for c in part])
        for part in (callbacks[i::4] for i in range(4))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stats._callbacks) == 200


def test_a_raising_callback_is_logged_once_at_warning_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()

    @idempotent_function(store=store, data="order")
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        return {"paid": order["card"]}

    after: list[Event] = []

    def broken(event: StatsEvent) -> None:
        raise RuntimeError("metrics backend down")

    charge.stats.on_event(broken)  # type: ignore[attr-defined]
    charge.stats.on_event(lambda event: after.append(event.event))  # type: ignore[attr-defined]
    with caplog.at_level(logging.DEBUG, logger="onceonly"):
        assert charge({"card": SECRET}) == {"paid": SECRET}
        assert charge({"card": SECRET}) == {"paid": SECRET}
    assert after == [Event.EXECUTED, Event.REPLAYED]  # the callbacks after it still run
    failures = [r for r in caplog.records if "on_event callback" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING", "DEBUG"]
    assert failures[0].getMessage() == (
        "onceonly: an on_event callback "
        "(test_a_raising_callback_is_logged_once_at_warning_and_the_call_goes_on.<locals>.broken)"
        " raised on executed; the call goes on"
    )
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is RuntimeError
    _no_secret_in(caplog.records, SECRET)


def test_a_callback_that_raises_keyboard_interrupt_is_not_swallowed() -> None:
    stats = Stats()

    def interrupt(event: StatsEvent) -> None:
        raise KeyboardInterrupt

    stats.on_event(interrupt)
    with pytest.raises(KeyboardInterrupt):
        stats.add(Event.EXECUTED)


# -- events from each path --------------------------------------------------------------


def test_a_sync_function_tells_each_event_with_its_name_key_digest_store_and_duration() -> None:
    @idempotent_function(store=MemoryStore(), data="order")
    def charge(order: dict[str, Any]) -> int:
        return 1

    seen = _events(charge.stats)  # type: ignore[attr-defined]
    charge({"id": 1})
    charge({"id": 1})
    key = charge.key_for({"id": 1})  # type: ignore[attr-defined]
    executed, replayed = seen
    assert executed.event is Event.EXECUTED
    assert replayed.event is Event.REPLAYED
    for event in seen:
        assert event.function == charge.guard.name  # type: ignore[attr-defined]
        assert event.key_digest == key[-KEY_DIGEST_CHARS:]
        assert event.store == "MemoryStore"
    assert executed.duration_ms is not None
    assert executed.duration_ms >= 0
    assert replayed.duration_ms is None


def test_a_failing_function_tells_released_with_its_duration() -> None:
    @idempotent_function(store=MemoryStore(), data="order")
    def charge(order: dict[str, Any]) -> int:
        raise ValueError("declined")

    seen = _events(charge.stats)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="declined"):
        charge({"id": 1})
    (released,) = seen
    assert released.event is Event.RELEASED
    assert released.duration_ms is not None


def test_no_key_in_the_payload_tells_unprotected_without_a_key() -> None:
    config = IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True)

    @idempotent_function(store=MemoryStore(), data="order", config=config)
    def charge(order: dict[str, Any]) -> int:
        return 1

    seen = _events(charge.stats)  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="no idempotency key"):
        charge({"other": 1})
    assert [(e.event, e.key_digest, e.store) for e in seen] == [
        (Event.UNPROTECTED, None, "MemoryStore")
    ]


def test_an_async_function_tells_its_events() -> None:
    @idempotent_function(store=AsyncMemoryStore(), data="order")
    async def charge(order: dict[str, Any]) -> int:
        return 1

    seen = _events(charge.stats)  # type: ignore[attr-defined]

    async def twice() -> None:
        await charge({"id": 1})
        await charge({"id": 1})

    asyncio.run(twice())
    assert [(e.event, e.store) for e in seen] == [
        (Event.EXECUTED, "AsyncMemoryStore"),
        (Event.REPLAYED, "AsyncMemoryStore"),
    ]
    assert seen[0].duration_ms is not None


def _handle(record: dict[str, Any]) -> dict[str, Any]:
    if record["body"] == "bad":
        raise ValueError(f"cannot handle {record['secret']}")
    return {"secret": record["secret"]}


BATCH_CONFIG = IdempotencyConfig(event_key_jmespath="messageId")
RECORDS = [
    {"messageId": "m1", "body": "ok", "secret": SECRET},
    {"messageId": "m2", "body": "bad", "secret": SECRET},
    {"messageId": "m1", "body": "ok", "secret": SECRET},
]


def test_a_batch_counts_into_the_stats_given_and_tells_its_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = Stats()
    seen = _events(stats)
    store = MemoryStore()
    with caplog.at_level(logging.DEBUG, logger="onceonly"):
        result = process_batch(RECORDS, _handle, store=store, config=BATCH_CONFIG, stats=stats)
    assert [i.status for i in result.items] == [
        ItemStatus.RUN,
        ItemStatus.FAILED,
        ItemStatus.REPLAYED,
    ]
    assert repr(stats) == "Stats(executed=1, released=1)"
    assert [e.event for e in seen] == [Event.EXECUTED, Event.RELEASED]
    assert {e.function for e in seen} == {"_handle"}
    assert all(e.store == "MemoryStore" and e.duration_ms is not None for e in seen)
    # One WARNING for the failed record: its place and its exception's type, not its text.
    failed = [r for r in caplog.records if "of the batch failed" in r.getMessage()]
    assert [r.getMessage().split(": ", 2)[2] for r in failed] == [
        "record 1 of the batch failed (ValueError)"
    ]
    assert failed[0].levelname == "WARNING"
    assert failed[0].onceonly_outcome == "failed"  # type: ignore[attr-defined]
    assert failed[0].onceonly_key_digest == result.items[1].key[-KEY_DIGEST_CHARS:]  # type: ignore[attr-defined,index]
    _no_secret_in(caplog.records, SECRET)
    # The same Stats goes on counting across batches.
    process_batch(RECORDS[:1], _handle, store=store, config=BATCH_CONFIG, stats=stats)
    assert stats[Event.REPLAYED] == 1


def test_each_failed_record_of_a_batch_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    records = [{"messageId": f"m{i}", "body": "bad", "secret": SECRET} for i in range(3)]
    records.append(dict(records[0]))  # a repeat of a failed key fails too: its own line
    with caplog.at_level(logging.WARNING, logger="onceonly"):
        result = process_batch(records, _handle, store=MemoryStore(), config=BATCH_CONFIG)
    assert [i.status for i in result.items] == [ItemStatus.FAILED] * 4
    failed = [r.getMessage() for r in caplog.records if "of the batch failed" in r.getMessage()]
    assert [m.rsplit(": ", 1)[1] for m in failed] == [
        f"record {i} of the batch failed (ValueError)" for i in range(4)
    ]


def test_a_batch_without_failures_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="onceonly"):
        process_batch(RECORDS[:1], _handle, store=MemoryStore(), config=BATCH_CONFIG)
    assert caplog.records == []


async def _async_handle(record: dict[str, Any]) -> dict[str, Any]:
    return _handle(record)


def test_an_async_batch_counts_into_the_stats_given() -> None:
    stats = Stats()
    seen = _events(stats)
    result = asyncio.run(
        process_batch_async(
            RECORDS, _async_handle, store=AsyncMemoryStore(), config=BATCH_CONFIG, stats=stats
        )
    )
    assert len(result.items) == 3
    assert repr(stats) == "Stats(executed=1, released=1)"
    assert [(e.event, e.store) for e in seen] == [
        (Event.EXECUTED, "AsyncMemoryStore"),
        (Event.RELEASED, "AsyncMemoryStore"),
    ]


@pytest.mark.parametrize("bad", [{}, "stats", Stats])
def test_a_batch_refuses_stats_that_are_not_a_stats(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="stats must be a onceonly Stats"):
        process_batch(RECORDS, _handle, store=MemoryStore(), config=BATCH_CONFIG, stats=bad)


def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    status = "503 Service Unavailable" if environ["PATH_INFO"] == "/down" else "201 Created"
    start_response(status, [("Content-Type", "application/json")])
    return [b'{"echo": ' + body + b"}"]


def test_the_wsgi_middleware_tells_its_events_and_logs_no_raw_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = Stats()
    seen = _events(stats)
    http = Client(WsgiMiddleware(_wsgi_app, MemoryStore(), stats=stats))
    headers = {"Idempotency-Key": f'"{RAW_HTTP_KEY}"', "Content-Type": "application/json"}
    body = f'{{"card": "{SECRET}"}}'
    with caplog.at_level(logging.DEBUG, logger="onceonly"):
        assert http.post("/pay", data=body, headers=headers).status_code == 201
        assert http.post("/pay", data=body, headers=headers).status_code == 201
        other = {**headers, "Idempotency-Key": f'"{RAW_HTTP_KEY}-2"'}
        assert http.post("/down", data=body, headers=other).status_code == 503
        assert http.post("/pay", data="{}", headers=headers).status_code == 422
        malformed = {"Idempotency-Key": '"bad\\x"'}  # a bad escape in a quoted key
        assert http.post("/pay", data=body, headers=malformed).status_code == 400
    assert [e.event for e in seen] == [
        Event.EXECUTED,
        Event.REPLAYED,
        Event.RELEASED,
        Event.NOT_STORED,
        Event.KEY_REUSE,
        Event.BAD_KEY,
    ]
    assert {e.function for e in seen} == {"wsgi"}
    assert {e.store for e in seen} == {"MemoryStore"}
    assert seen[-1].key_digest is None
    assert all(e.key_digest is not None and RAW_HTTP_KEY not in e.key_digest for e in seen[:-1])
    (unstored,) = [r for r in caplog.records if "response not stored" in r.getMessage()]
    assert unstored.onceonly_outcome == "not_stored"  # type: ignore[attr-defined]
    assert unstored.onceonly_key_digest == seen[3].key_digest  # type: ignore[attr-defined]
    _no_secret_in(caplog.records, SECRET, RAW_HTTP_KEY)


def test_the_asgi_middleware_tells_its_events() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    stats = Stats()
    seen = _events(stats)

    async def twice() -> list[int]:
        middleware = AsgiMiddleware(app, AsyncMemoryStore(), stats=stats)
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = {"Idempotency-Key": f'"{RAW_HTTP_KEY}"'}
            return [
                (await http.post("/pay", content=b"{}", headers=headers)).status_code for _ in "ab"
            ]

    assert asyncio.run(twice()) == [201, 201]
    assert [(e.event, e.function, e.store) for e in seen] == [
        (Event.EXECUTED, "asgi", "AsyncMemoryStore"),
        (Event.REPLAYED, "asgi", "AsyncMemoryStore"),
    ]


# -- log records' extra fields -------------------------------------------------------------


class _LostStore(MemoryStore):
    """A store whose completions find the lease lost (another owner took it)."""

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        return False


def test_a_warning_of_a_call_carries_the_extra_fields_and_no_payload_or_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @idempotent_function(store=_LostStore(), data="order")
    def charge(order: dict[str, Any]) -> str:
        return f"charged {order['card']}"

    with caplog.at_level(logging.DEBUG, logger="onceonly"):
        assert charge({"card": SECRET}) == f"charged {SECRET}"
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.name == "onceonly"
    assert set(record.__dict__) >= EXTRA_FIELDS
    key = charge.key_for({"card": SECRET})  # type: ignore[attr-defined]
    assert record.onceonly_function == charge.guard.name  # type: ignore[attr-defined]
    assert record.onceonly_key_digest == key[-KEY_DIGEST_CHARS:]  # type: ignore[attr-defined]
    assert record.onceonly_outcome == "lease_lost"  # type: ignore[attr-defined]
    assert record.onceonly_store == "_LostStore"  # type: ignore[attr-defined]
    assert record.onceonly_duration_ms is None  # type: ignore[attr-defined]
    _no_secret_in(caplog.records, SECRET)


def test_key_digest_and_log_extra() -> None:
    key = "orders.charge:" + "0123456789abcdef" * 4
    assert key_digest(key) == "0123456789abcdef"
    assert key_digest(None) is None
    assert log_extra("f", key, "executed", "RedisStore", 2.5) == {
        "onceonly_function": "f",
        "onceonly_key_digest": "0123456789abcdef",
        "onceonly_outcome": "executed",
        "onceonly_store": "RedisStore",
        "onceonly_duration_ms": 2.5,
    }


def test_every_log_call_of_the_library_passes_the_extra_fields() -> None:
    """A record without ``extra=`` would lack the fields a JSON formatter writes."""
    import ast
    from pathlib import Path

    import onceonly

    levels = {"debug", "info", "warning", "error", "exception", "log"}
    missing = []
    calls = 0
    for path in sorted(Path(onceonly.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
                and node.func.attr in levels
            ):
                calls += 1
                if not any(keyword.arg == "extra" for keyword in node.keywords):
                    missing.append(f"{path.name}:{node.lineno}")
    assert calls >= 30, "the library's log calls were not found"
    assert missing == []
