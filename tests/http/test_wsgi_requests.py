"""The WSGI middleware: coverage, keys, request bodies, streams, a store that is down, options.

Pure-adapter behaviours on the memory store (the store-dependent ones are in
test_wsgi.py, on every store); the store-down ones on a real failing store.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from typing import Any

import pytest
import redis
import redis.backoff
import redis.retry
from werkzeug.test import EnvironBuilder, run_wsgi_app
from wsgi_support import JSON, Shop, client, key, problem_of

from onceonly.errors import IdempotencyConfigError
from onceonly.http import HttpConfig, ProblemType
from onceonly.http.wsgi import IdempotencyMiddleware
from onceonly.metrics import Event
from onceonly.stores import AsyncMemoryStore, MemoryStore
from onceonly.stores.redis import RedisStore
from redis_harness import free_port


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
def test_safe_and_uncovered_methods_pass_through_even_with_a_key(method: str) -> None:
    c, shop, mw = client(MemoryStore())
    for _ in range(2):
        answer = c.open("/payments", method=method, headers=key())
        assert "Idempotent-Replayed" not in answer.headers
        assert "Idempotency-Stored" not in answer.headers
    assert shop.runs("/payments") == 2
    assert mw.stats[Event.EXECUTED] == 0


def test_methods_may_add_put_and_delete() -> None:
    c, shop, _ = client(MemoryStore(), methods={"PUT", "DELETE"})
    c.put("/payments", data=b"{}", headers=key())
    assert c.put("/payments", data=b"{}", headers=key()).headers["Idempotent-Replayed"] == "true"
    c.post("/payments", data=b"{}", headers=key())  # POST is no longer covered
    assert shop.runs("/payments") == 2


@pytest.mark.parametrize(
    "value",
    ['""', "", '"' + "x" * 256 + '"', '"a\\nb"', '"a", "b"', "a b\x01"],
    ids=["empty", "empty-bare", "too-long", "bad-escape", "two-keys", "control"],
)
def test_a_bad_key_is_400_problem_json_and_the_app_does_not_run(value: str) -> None:
    c, shop, mw = client(MemoryStore())
    answer = c.post("/payments", data=b"{}", headers={"Idempotency-Key": value, **JSON})
    assert answer.status_code == 400
    assert problem_of(answer)["type"] == ProblemType.KEY_INVALID.uri
    assert shop.calls == []
    assert mw.stats[Event.BAD_KEY] == 1


def test_two_key_fields_are_400() -> None:
    c, shop, _ = client(MemoryStore())
    headers = [("Idempotency-Key", '"a"'), ("Idempotency-Key", '"b"')]
    assert c.post("/payments", data=b"{}", headers=headers).status_code == 400
    assert shop.calls == []


def test_a_required_key_missing_is_400_and_a_key_missing_otherwise_passes() -> None:
    c, shop, _ = client(MemoryStore(), required=True)
    answer = c.post("/payments", data=b"{}", headers=JSON)
    assert answer.status_code == 400
    body = problem_of(answer)
    assert body["type"] == ProblemType.KEY_MISSING.uri
    assert set(body) == {"type", "title", "status", "detail"}
    assert shop.calls == []
    c, shop, _ = client(MemoryStore())
    c.post("/payments", data=b"{}", headers=JSON)
    c.post("/payments", data=b"{}", headers=JSON)
    assert shop.runs("/payments") == 2


def test_a_declared_body_over_the_limit_is_413_before_any_read_and_claims_nothing() -> None:
    c, shop, _ = client(MemoryStore(), max_body_bytes=100)
    too_big = c.post("/payments", data=b"x" * 101, headers=key())
    assert too_big.status_code == 413
    assert problem_of(too_big)["type"] == ProblemType.BODY_TOO_LARGE.uri
    assert shop.calls == []
    # No claim was made: the same key with another body is a first run, not a 422.
    assert c.post("/payments", data=b"x" * 100, headers=key()).status_code == 201


def _chunked(body: bytes, *, key_value: str = '"k-1"') -> dict[str, Any]:
    """An environ as a server gives it for a chunked body: no length, ``wsgi.input_terminated``."""
    environ = EnvironBuilder(
        "/payments",
        method="POST",
        headers={"Idempotency-Key": key_value, "Transfer-Encoding": "chunked", **JSON},
        input_stream=io.BytesIO(body),
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    return environ


def test_a_chunked_body_is_read_to_its_end_and_restored_for_the_app() -> None:
    shop = Shop()
    mw = IdempotencyMiddleware(shop, store=MemoryStore(), max_body_bytes=200_000)
    body = b'{"pad": "' + b"p" * 150_000 + b'"}'
    _, status, _ = run_wsgi_app(mw, _chunked(body), buffered=True)
    assert status.startswith("201")
    assert shop.bodies == [body]
    _, _, headers = run_wsgi_app(mw, _chunked(body), buffered=True)
    assert headers["Idempotent-Replayed"] == "true"


def test_a_chunked_body_over_the_limit_is_413_and_claims_nothing() -> None:
    shop = Shop()
    mw = IdempotencyMiddleware(shop, store=MemoryStore(), max_body_bytes=100_000)
    _, status, _ = run_wsgi_app(mw, _chunked(b"x" * 100_001), buffered=True)
    assert status.startswith("413")
    assert shop.calls == []
    _, status, _ = run_wsgi_app(mw, _chunked(b"{}"), buffered=True)
    assert status.startswith("201")


def test_a_body_cut_short_claims_nothing_and_calls_nothing() -> None:
    # The client went away mid-body: fewer bytes than its Content-Length.
    shop = Shop()
    mw = IdempotencyMiddleware(shop, store=MemoryStore())
    environ = EnvironBuilder("/payments", method="POST", headers=key(), data=b"{}").get_environ()
    environ["CONTENT_LENGTH"] = "50"
    app_iter, status, _ = run_wsgi_app(mw, environ, buffered=True)
    assert status.startswith("400")
    assert json.loads(b"".join(app_iter))["type"] == "about:blank"
    assert shop.calls == []
    environ = EnvironBuilder("/payments", method="POST", headers=key(), data=b"{}").get_environ()
    _, status, _ = run_wsgi_app(mw, environ, buffered=True)
    assert status.startswith("201")  # no claim was left behind


def test_form_and_multipart_bodies_reach_the_app_and_a_new_boundary_still_replays() -> None:
    c, shop, _ = client(MemoryStore())
    form = c.post("/payments", data={"amount": "10"}, headers={"Idempotency-Key": "f"})
    assert json.loads(form.data)["got"] == "amount=10"

    def multipart(boundary: str) -> tuple[bytes, str]:
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="amount"\r\n\r\n10\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="a.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
        ).encode()
        return body, f"multipart/form-data; boundary={boundary}"

    for boundary in ("b-one", "b-two"):
        body, content_type = multipart(boundary)
        c.post(
            "/payments",
            data=body,
            headers={"Idempotency-Key": "m", "Content-Type": content_type},
        )
    assert shop.runs("/payments") == 2  # the form, and the first multipart
    assert shop.bodies[1] == multipart("b-one")[0]


def test_a_server_sent_event_stream_goes_out_live_unstored_and_released() -> None:
    c, shop, mw = client(MemoryStore())
    live = c.post("/sse", headers=key())
    assert live.headers["Idempotency-Stored"] == "false"
    events = iter(live.response)
    # The first event arrives while the app still holds back the second.
    assert next(events) == b"data: first 1\n\n"
    duplicate = c.post("/sse", headers=key())  # released already: it runs
    assert duplicate.headers["Idempotency-Stored"] == "false"
    assert next(iter(duplicate.response)) == b"data: first 2\n\n"
    shop.stream_gate.set()
    assert list(events) == [b"data: second\n\n"]
    live.close()
    duplicate.close()
    assert shop.closed == 2
    assert mw.stats[Event.NOT_STORED] == 2


def test_a_declared_content_length_over_the_limit_passes_live() -> None:
    pulled: list[str] = []

    def declared(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5000")])

        def body() -> Any:
            pulled.append("first")
            yield b"a" * 2500
            yield b"b" * 2500

        return body()

    mw = IdempotencyMiddleware(declared, store=MemoryStore(), max_response_bytes=1000)
    started: list[Any] = []
    environ = EnvironBuilder("/payments", method="POST", headers=key()).get_environ()
    body = mw(environ, lambda status, headers, exc_info=None: started.append(headers))
    assert ("idempotency-stored", "false") in started[0]
    assert pulled == []  # the headers went out before any of the body was pulled
    assert b"".join(body) == b"a" * 2500 + b"b" * 2500


def test_the_legacy_write_callable_is_stored_with_the_iterable() -> None:
    c, _, _ = client(MemoryStore())
    first = c.post("/legacy", headers=key())
    assert first.status_code == 201
    assert first.data == b"written-1;iterated"
    again = c.post("/legacy", headers=key())
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_gzip_response_replays_gzip_to_a_client_that_accepts_it_else_decoded() -> None:
    c, shop, _ = client(MemoryStore())
    first = c.post("/gzip", headers=key(**{"Accept-Encoding": "gzip"}))
    assert first.headers["Content-Encoding"] == "gzip"
    gzipped = c.post("/gzip", headers=key(**{"Accept-Encoding": "gzip, br"}))
    assert gzipped.headers["Content-Encoding"] == "gzip"
    assert gzipped.data == first.data
    plain = c.post("/gzip", headers=key())
    assert "Content-Encoding" not in plain.headers
    assert plain.data == gzip.decompress(first.data)
    assert plain.headers["Content-Length"] == str(len(plain.data))
    assert shop.runs("/gzip") == 1


def test_principal_and_scope_callables() -> None:
    seen: list[Any] = []

    def principal(environ: dict[str, Any]) -> str | None:
        return environ.get("HTTP_X_TENANT")

    c, shop, _ = client(MemoryStore(), principal=principal)
    for tenant in ("t1", "t2", "t1"):
        c.post("/payments", data=b"{}", headers=key(**{"X-Tenant": tenant}))
    assert shop.runs("/payments") == 2

    def scope(environ: dict[str, Any]) -> str:
        seen.append(environ["PATH_INFO"])
        return "everyone"

    c, shop, _ = client(MemoryStore(), scope=scope)
    for user in ("ann", "bob"):
        c.post("/payments", data=b"{}", headers=key(), environ_overrides={"REMOTE_USER": user})
    assert shop.runs("/payments") == 1  # one scope for all: bob got ann's replay
    assert seen == ["/payments", "/payments"]


def test_a_principal_that_is_not_a_str_is_refused() -> None:
    c, shop, _ = client(MemoryStore(), principal=lambda environ: 7)
    with pytest.raises(IdempotencyConfigError, match="str or None, got int"):
        c.post("/payments", data=b"{}", headers=key())
    assert shop.calls == []


def _down_store() -> RedisStore:
    """A Redis store on a loopback port where nothing listens: every call fails."""
    client = redis.Redis(
        host="127.0.0.1",
        port=free_port(),
        socket_connect_timeout=1,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    return RedisStore(client, prefix="down")


def test_store_down_at_the_claim_is_503_with_retry_after() -> None:
    c, shop, mw = client(_down_store())
    answer = c.post("/payments", data=b"{}", headers=key())
    assert answer.status_code == 503
    assert problem_of(answer)["type"] == ProblemType.STORE_UNAVAILABLE.uri
    assert answer.headers["Retry-After"] == "1"
    assert shop.calls == []
    assert mw.stats[Event.STORE_ERROR] == 1


def test_store_down_with_on_store_error_run_passes_through_unstored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c, shop, mw = client(_down_store(), on_store_error="run")
    with caplog.at_level(logging.WARNING, "onceonly"):
        answer = c.post("/payments", data=b"{}", headers=key())
    assert answer.status_code == 201
    assert answer.headers["Idempotency-Stored"] == "false"
    assert answer.headers["Set-Cookie"] == "session=s1; Path=/"
    assert shop.runs("/payments") == 1
    assert "running without idempotency" in caplog.text
    assert "k-1" not in caplog.text  # never the raw key
    assert mw.stats[Event.UNPROTECTED] == 1


def test_options_are_checked_when_the_middleware_is_built() -> None:
    shop = Shop()
    with pytest.raises(IdempotencyConfigError, match="not both"):
        IdempotencyMiddleware(shop, store=MemoryStore(), config=HttpConfig(), required=True)
    with pytest.raises(IdempotencyConfigError, match="unknown Idempotency-Key options: leese"):
        IdempotencyMiddleware(shop, store=MemoryStore(), leese=3)
    with pytest.raises(IdempotencyConfigError, match="needs a sync store"):
        IdempotencyMiddleware(shop, store=AsyncMemoryStore())
    with pytest.raises(IdempotencyConfigError, match="needs store="):
        IdempotencyMiddleware(shop)
    config = HttpConfig(required=True)
    assert IdempotencyMiddleware(shop, store=MemoryStore(), config=config).config is config
