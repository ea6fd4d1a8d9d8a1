"""The WSGI middleware on every sync store (Werkzeug's test client, in process).

Runs, replays, 409 / 422, what is stored (2xx-4xx) and what is not (5xx, an
exception), leases (a takeover, a stale completion fenced off), retention,
the wait policy, the counters. The store's clock is the test's manual clock.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from wsgi_support import JSON, client, in_thread, key, problem_of

from onceonly.http import ProblemType
from onceonly.metrics import Event
from testkit import ManualClock


def test_a_first_run_then_a_replay_with_only_the_replayable_headers(http_store: Any) -> None:
    c, shop, mw = client(http_store)
    first = c.post("/payments", data=b'{"amount": 10}', headers=key())
    assert first.status_code == 201
    assert first.headers["Set-Cookie"] == "session=s1; Path=/"  # the first answer is the app's own
    assert first.headers["X-Internal"] == "never replayed"
    assert "Idempotency-Stored" not in first.headers
    again = c.post("/payments", data=b'{"amount": 10}', headers=key())
    assert again.status_code == 201
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == "/payments/1"  # a replayed 201 keeps its Location
    assert again.headers["Content-Type"] == "application/json"
    assert again.headers["Content-Length"] == str(len(first.data))
    assert "Set-Cookie" not in again.headers
    assert "X-Internal" not in again.headers
    assert shop.runs("/payments") == 1
    assert shop.bodies == [b'{"amount": 10}']  # the app read the body the middleware read
    assert mw.stats[Event.EXECUTED] == 1
    assert mw.stats[Event.REPLAYED] == 1


def test_a_bare_token_is_the_same_key_as_the_string(http_store: Any) -> None:
    c, shop, _ = client(http_store)
    c.post("/payments", data=b"{}", headers=key("abc"))
    again = c.post("/payments", data=b"{}", headers={"Idempotency-Key": "abc", **JSON})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert shop.runs("/payments") == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [("/payments", b'{"amount": 11}'), ("/payments?x=1", b'{"amount": 10}'), ("/other", b"{}")],
    ids=["body", "query", "path"],
)
def test_the_same_key_on_another_request_is_422(http_store: Any, path: str, body: bytes) -> None:
    c, shop, mw = client(http_store)
    c.post("/payments", data=b'{"amount": 10}', headers=key())
    reused = c.post(path, data=body, headers=key())
    assert reused.status_code == 422
    assert problem_of(reused)["type"] == ProblemType.KEY_REUSED.uri
    assert shop.runs("/payments") == 1
    assert len(shop.calls) == 1
    assert mw.stats[Event.KEY_REUSE] == 1


def test_a_duplicate_of_a_running_request_is_409_and_another_payload_is_422(
    http_store: Any,
) -> None:
    c, shop, mw = client(http_store, lease_seconds=30)
    held, out = in_thread(
        lambda: c.post("/payments", data=b'{"a": 1}', headers=key(**{"X-Hold": "1"}))
    )
    try:
        assert shop.entered.wait(10)
        duplicate = c.post("/payments", data=b'{"a": 1}', headers=key())
        assert duplicate.status_code == 409
        assert problem_of(duplicate)["type"] == ProblemType.IN_PROGRESS.uri
        # Seconds, rounded up, from the holder's remaining lease (the store's clock stands still).
        assert duplicate.headers["Retry-After"] == "30"
        mismatch = c.post("/payments", data=b'{"a": 2}', headers=key())
        assert mismatch.status_code == 422  # 422 wins over 409
    finally:
        shop.hold.set()
        held.join()
    assert out[0].status_code == 201
    replay = c.post("/payments", data=b'{"a": 1}', headers=key())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.data == out[0].data
    assert shop.runs("/payments") == 1
    assert mw.stats[Event.IN_PROGRESS] == 1


def test_with_the_wait_policy_a_duplicate_waits_for_the_replay(http_store: Any) -> None:
    c, shop, mw = client(http_store, on_in_progress="wait", wait_timeout_seconds=30)
    held, first = in_thread(lambda: c.post("/payments", data=b"{}", headers=key(**{"X-Hold": "1"})))
    assert shop.entered.wait(10)
    waiting, second = in_thread(lambda: c.post("/payments", data=b"{}", headers=key()))
    try:
        # Let the holder finish only once the duplicate has found it running.
        for _ in range(10_000):
            if mw.stats[Event.WAITED]:
                break
            shop.hold.wait(0.005)
        assert mw.stats[Event.WAITED] >= 1
    finally:
        shop.hold.set()
        held.join()
        waiting.join()
    assert second[0].status_code == 201
    assert second[0].headers["Idempotent-Replayed"] == "true"
    assert second[0].data == first[0].data
    assert shop.runs("/payments") == 1


@pytest.mark.parametrize("code", [200, 204, 302, 400, 404, 409])
def test_2xx_3xx_and_4xx_are_stored_and_replayed(http_store: Any, code: int) -> None:
    c, shop, _ = client(http_store)
    first = c.post(f"/status/{code}", headers=key())
    assert first.status_code == code
    again = c.post(f"/status/{code}", headers=key())
    assert again.status_code == code
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert shop.runs(f"/status/{code}") == 1


@pytest.mark.parametrize("code", [500, 502, 503])
def test_a_5xx_is_delivered_unstored_and_the_retry_runs(http_store: Any, code: int) -> None:
    c, _, mw = client(http_store)
    first = c.post(f"/status/{code}", headers=key())
    assert first.status_code == code
    assert first.data == f"status {code} #1".encode()
    assert first.headers["Idempotency-Stored"] == "false"
    retry = c.post(f"/status/{code}", headers=key())
    assert retry.data == f"status {code} #2".encode()
    assert "Idempotent-Replayed" not in retry.headers
    assert mw.stats[Event.NOT_STORED] == 2
    assert mw.stats[Event.RELEASED] == 2


def test_store_server_errors_stores_and_replays_a_5xx(http_store: Any) -> None:
    c, shop, _ = client(http_store, store_server_errors=True)
    first = c.post("/status/503", headers=key())
    assert "Idempotency-Stored" not in first.headers
    again = c.post("/status/503", headers=key())
    assert again.status_code == 503
    assert again.headers["Idempotent-Replayed"] == "true"
    assert shop.runs("/status/503") == 1


def test_an_app_exception_releases_the_claim_and_propagates(http_store: Any) -> None:
    c, shop, mw = client(http_store)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the app failed"):
            c.post("/boom", headers=key())
    assert shop.runs("/boom") == 2  # released each time: the retry ran
    assert mw.stats[Event.RELEASED] == 2


def test_an_error_page_with_exc_info_is_a_5xx_and_not_stored(http_store: Any) -> None:
    c, shop, _ = client(http_store)
    first = c.post("/oops", headers=key())
    assert first.status_code == 500
    assert first.data == b"error page"
    assert first.headers["Idempotency-Stored"] == "false"
    c.post("/oops", headers=key())
    assert shop.runs("/oops") == 2


def test_an_orphan_is_taken_over_after_its_lease_and_the_stale_completion_is_fenced(
    http_store: Any, clock: ManualClock
) -> None:
    c, shop, mw = client(http_store, lease_seconds=5)
    stale, out = in_thread(lambda: c.post("/payments", data=b"{}", headers=key(**{"X-Hold": "1"})))
    try:
        assert shop.entered.wait(10)
        assert c.post("/payments", data=b"{}", headers=key()).status_code == 409
        clock.advance(5_001)  # the holder looks dead: its lease is over
        taken = c.post("/payments", data=b"{}", headers=key())
        assert taken.status_code == 201
        assert json.loads(taken.data)["payment"] == 2
    finally:
        shop.hold.set()
        stale.join()
    # The stale run still answers its client, but it is not stored over the new owner's.
    assert json.loads(out[0].data)["payment"] == 1
    assert out[0].headers["Idempotency-Stored"] == "false"
    replay = c.post("/payments", data=b"{}", headers=key())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert json.loads(replay.data)["payment"] == 2
    assert mw.stats[Event.TAKEOVER] == 1
    assert mw.stats[Event.LEASE_LOST] == 1


def test_after_retention_the_key_is_new_and_the_header_says_how_long(
    http_store: Any, clock: ManualClock
) -> None:
    c, shop, _ = client(http_store, expires_after_seconds=60, retention_header="Idempotency-TTL")
    first = c.post("/payments", data=b"{}", headers=key())
    assert first.headers["Idempotency-TTL"] == "60"
    clock.advance(59_000)
    replay = c.post("/payments", data=b"{}", headers=key())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Idempotency-TTL"] == "60"
    clock.advance(1_001)
    fresh = c.post("/payments", data=b"{}", headers=key())
    assert "Idempotent-Replayed" not in fresh.headers
    assert shop.runs("/payments") == 2


def test_the_same_key_from_two_principals_runs_twice_and_never_replays_across(
    http_store: Any,
) -> None:
    c, shop, _ = client(http_store)
    for user in ("ann", "bob"):
        answer = c.post(
            "/payments", data=b"{}", headers=key(), environ_overrides={"REMOTE_USER": user}
        )
        assert "Idempotent-Replayed" not in answer.headers
    for token in ("Bearer a", "Bearer b"):
        answer = c.post("/payments", data=b"{}", headers=key(Authorization=token))
        assert "Idempotent-Replayed" not in answer.headers
    again = c.post("/payments", data=b"{}", headers=key(), environ_overrides={"REMOTE_USER": "ann"})
    assert json.loads(again.data)["payment"] == 1
    assert shop.runs("/payments") == 4


def test_a_response_over_the_limit_is_delivered_whole_unstored_and_released(
    http_store: Any,
) -> None:
    c, shop, mw = client(http_store, max_response_bytes=10_000)
    # buffered: the test client reads each body and closes it, as a server does.
    first = c.post("/big?size=25000", headers=key(), buffered=True)
    assert first.status_code == 200
    assert first.data == b"\x01" * 25_000
    assert first.headers["Idempotency-Stored"] == "false"
    at_limit = c.post("/big?size=10000", headers=key("k-2"), buffered=True)
    assert "Idempotency-Stored" not in at_limit.headers
    retry = c.post("/big?size=25000", headers=key(), buffered=True)
    assert retry.data == b"\x03" * 25_000  # ran again: the claim was released
    replay = c.post("/big?size=10000", headers=key("k-2"), buffered=True)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert shop.closed == 3  # every app iterable that ran was closed once
    assert mw.stats[Event.NOT_STORED] == 2


def test_store_down_at_completion_delivers_and_warns(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A real SQLite failure: another connection holds the write lock when the
    # response is to be stored (the app takes it before it answers).
    import sqlite3

    from onceonly.stores import SQLiteStore

    store = SQLiteStore(tmp_path / "down.db", busy_timeout_ms=50)
    locker = sqlite3.connect(tmp_path / "down.db", isolation_level=None)
    c, _, mw = client(store)
    inner = mw.app

    def locking(environ: dict[str, Any], start_response: Any) -> Any:
        body = inner(environ, start_response)
        locker.execute("BEGIN EXCLUSIVE")
        return body

    mw.app = locking
    try:
        with caplog.at_level(logging.WARNING, "onceonly"):
            answer = c.post("/payments", data=b"{}", headers=key())
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        store.close()
    assert answer.status_code == 201
    assert answer.headers["Idempotency-Stored"] == "false"
    assert "could not store its outcome" in caplog.text
    assert mw.stats[Event.STORE_ERROR] == 1
