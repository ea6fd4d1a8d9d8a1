"""The I/O-free core of the HTTP middlewares: keys, scopes, fingerprints, responses, problems."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from onceonly.errors import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigError,
    IdempotencyKeyReuseError,
    IdempotencyStoreError,
)
from onceonly.http import HttpConfig, ProblemType
from onceonly.http.core import (
    Covered,
    Gate,
    NotStored,
    Pass,
    RequestHead,
    Response,
    ResponseSerializer,
    parse_key,
)
from onceonly.http.problems import Problem
from onceonly.records import decode_outcome, encode_outcome
from onceonly.stores import MemoryStore


def head(
    method: str = "POST",
    key: str | None = '"k-1"',
    *more: tuple[str, str],
    path: str = "/payments",
    query: bytes = b"",
    principal: str | None = None,
) -> RequestHead:
    headers = [("content-type", "application/json"), *more]
    if key is not None:
        headers.append(("idempotency-key", key))
    return RequestHead(method, path, query, headers, principal)


def gate(**options: Any) -> Gate:
    return Gate(HttpConfig(**options), MemoryStore())


# -- the key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['"abc"'], "abc"),
        (["abc"], "abc"),
        ([' "abc" '], "abc"),
        (['"a\\"b\\\\c"'], 'a"b\\c'),
        (['"8e03978e-40d5-43e8-bc93-6894a57f9324"'], "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (['"' + "x" * 255 + '"'], "x" * 255),
    ],
)
def test_keys_as_strings_and_bare_tokens(values: list[str], expected: str) -> None:
    assert parse_key(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        ['""'],
        [""],
        ['"' + "x" * 256 + '"'],
        ['"a\x01b"'],
        ["a\tb"],
        ['"abc'],
        ['"a\\nb"'],
        ['"a", "b"'],
        ["a, b"],
        ['"a"', '"b"'],
        ['"é"'],
    ],
    ids=[
        "empty",
        "empty-bare",
        "too-long",
        "control",
        "tab",
        "unclosed",
        "bad-escape",
        "two-strings",
        "two-tokens",
        "two-fields",
        "non-ascii",
    ],
)
def test_bad_keys_are_400(values: list[str]) -> None:
    assert parse_key(values) is ProblemType.KEY_INVALID


def test_safe_methods_and_uncovered_methods_pass_with_a_key() -> None:
    g = gate()
    for method in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"):
        assert g.check(head(method)) == Pass("method")
    assert gate(methods={"POST", "PUT"}).check(head("PUT")) == Covered("k-1", "")
    with pytest.raises(IdempotencyConfigError, match="GET is safe"):
        HttpConfig(methods={"POST", "GET"})


def test_a_missing_key_passes_unless_required() -> None:
    assert gate().check(head(key=None)) == Pass("no key")
    answer = gate(required=True).check(head(key=None))
    assert isinstance(answer, Problem)
    assert answer.status == 400
    body = json.loads(answer.body)
    assert body["type"] == ProblemType.KEY_MISSING.uri
    assert ("content-type", "application/problem+json") in answer.headers


def test_scope_principal_then_authorization_then_global() -> None:
    g = gate()
    assert g.check(head(principal="alice")) == Covered("k-1", "user:alice")
    by_token = g.check(head("POST", '"k-1"', ("authorization", "Bearer t1")))
    other = g.check(head("POST", '"k-1"', ("authorization", "Bearer t2")))
    assert isinstance(by_token, Covered)
    assert isinstance(other, Covered)
    assert by_token.scope.startswith("auth:")
    assert by_token.scope != other.scope
    assert "t1" not in by_token.scope  # a hash, never the credential
    custom = gate(scope=lambda request: f"tenant-{request}")
    assert custom.check(head()._replace(request=7)) == Covered("k-1", "custom:tenant-7")


def test_the_stored_key_hashes_scope_and_key_and_never_holds_the_raw_key() -> None:
    g = gate()
    a = g.invocation(head(), Covered("secret-key", "user:alice"), b"{}")
    b = g.invocation(head(), Covered("secret-key", "user:bob"), b"{}")
    assert a.key != b.key
    assert a.key.startswith("http:")
    assert "secret-key" not in a.key


# -- fingerprints -----------------------------------------------------------------------


def fp(g: Gate, body: bytes, h: RequestHead | None = None) -> str | None:
    return g.invocation(h or head(), Covered("k", ""), body).fingerprint


def test_fingerprint_covers_method_path_query_and_body() -> None:
    g = gate()
    base = fp(g, b'{"a":1}')
    assert fp(g, b'{"a":1}') == base
    assert fp(g, b'{"a":2}') != base
    assert fp(g, b'{"a":1}', head(path="/refunds")) != base
    assert fp(g, b'{"a":1}', head(query=b"x=1")) != base
    assert fp(g, b'{"a":1}', head("PATCH")) != base
    # Length prefixes: moving bytes between parts changes the fingerprint.
    assert fp(g, b"", head(path="/ab", query=b"")) != fp(g, b"", head(path="/a", query=b"b"))


def test_canonical_json_and_excluded_fields() -> None:
    raw = gate()
    assert fp(raw, b'{"a": 1, "b": 2}') != fp(raw, b'{"b":2,"a":1}')
    canon = gate(canonical_json=True)
    assert fp(canon, b'{"a": 1, "b": 2}') == fp(canon, b'{"b":2,"a":1}')
    assert fp(canon, b'{"a": 1}') != fp(canon, b'{"a": 2}')
    assert fp(canon, b"not json") == fp(canon, b"not json")
    excluding = gate(exclude_fields={"sent_at"})
    assert fp(excluding, b'{"a":1,"sent_at":"10:00"}') == fp(
        excluding, b'{"sent_at":"10:01","a":1}'
    )


def test_fingerprint_headers() -> None:
    g = gate(fingerprint_headers={"API-Version"})
    v1 = head("POST", '"k"', ("api-version", "1"))
    v2 = head("POST", '"k"', ("api-version", "2"))
    assert fp(g, b"{}", v1) != fp(g, b"{}", v2)
    assert fp(gate(), b"{}", v1) == fp(gate(), b"{}", v2)


def multipart(boundary: str, content: bytes) -> tuple[RequestHead, bytes]:
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="note"\r\n\r\n'
            "hello\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    h = RequestHead(
        "POST",
        "/upload",
        b"",
        [("content-type", f"multipart/form-data; boundary={boundary}")],
    )
    return h, body


def test_multipart_bodies_are_fingerprinted_by_their_parts_not_the_boundary() -> None:
    g = gate()
    h1, b1 = multipart("AaB03x", b"\x00\x01payload")
    h2, b2 = multipart("zzz-other-boundary", b"\x00\x01payload")
    h3, b3 = multipart("AaB03x", b"\x00\x01changed")
    assert fp(g, b1, h1) == fp(g, b2, h2)
    assert fp(g, b1, h1) != fp(g, b3, h3)


# -- responses --------------------------------------------------------------------------


def test_responses_round_trip_binary_safe_through_the_outcome_envelope() -> None:
    serializer = ResponseSerializer()
    body = bytes(range(256))
    response = Response(201, (("location", "/p/1"), ("content-type", "image/png")), body)
    stored = encode_outcome(serializer.to_json(response))
    replayed = serializer.from_json(decode_outcome(stored))
    assert replayed == Response(201, response.headers, body, replayed=True)
    with pytest.raises(CorruptRecordError):
        serializer.from_json({"s": "201", "h": [], "b": ""})


def test_only_replayable_headers_are_stored() -> None:
    g = gate()
    captured = g.captured(
        201,
        [
            ("content-type", "application/json"),
            ("location", "/p/1"),
            ("set-cookie", "session=abc"),
            ("date", "Wed, 02 Dec 2026 05:00:00 GMT"),
            ("server", "uvicorn"),
            ("content-length", "2"),
            ("x-request-id", "r-1"),
        ],
        b"{}",
    )
    assert captured.headers == (("content-type", "application/json"), ("location", "/p/1"))
    extra = gate(replayed_headers={"content-type", "x-request-id", "set-cookie"})
    kept = extra.captured(200, [("x-request-id", "r"), ("set-cookie", "s=1")], b"")
    assert kept.headers == (("x-request-id", "r"),)  # Set-Cookie never, whatever the option


def test_server_errors_and_large_bodies_are_not_stored() -> None:
    with pytest.raises(NotStored, match="status 503"):
        gate().captured(503, [], b"")
    for retry_status in (408, 425, 429):  # "send it again": never replayed
        with pytest.raises(NotStored, match=f"status {retry_status}"):
            gate(store_server_errors=True).captured(retry_status, [], b"")
    assert gate().captured(409, [], b"").status == 409  # other 4xx are stored
    assert gate(store_server_errors=True).captured(503, [], b"x").status == 503
    with pytest.raises(NotStored, match="too large"):
        gate(max_response_bytes=3).captured(200, [], b"1234")


def test_a_replay_recomputes_length_marks_itself_and_decodes_gzip_for_clients_without_it() -> None:
    g = gate(retention_header="Idempotency-Retention")
    body = gzip.compress(b"hello world")
    stored = Response(200, (("content-encoding", "gzip"), ("content-type", "text/plain")), body)
    headers, out = g.replay_headers(stored, head("POST", '"k"', ("accept-encoding", "gzip, br")))
    assert out == body
    assert ("content-length", str(len(body))) in headers
    assert ("idempotent-replayed", "true") in headers
    assert ("idempotency-retention", "86400") in headers
    headers, out = g.replay_headers(stored, head("POST", '"k"', ("accept-encoding", "gzip;q=0")))
    assert out == b"hello world"
    assert all(name != "content-encoding" for name, _ in headers)
    assert ("content-length", "11") in headers


def test_errors_become_problems() -> None:
    g = gate()
    reused = g.problem_for(IdempotencyKeyReuseError("x"))
    busy = g.problem_for(IdempotencyAlreadyInProgressError("x", key="k", retry_after_ms=1_200))
    down = g.problem_for(IdempotencyStoreError("x"))
    corrupt = g.problem_for(CorruptRecordError("x"))
    assert reused is not None
    assert reused.status == 422
    assert busy is not None
    assert busy.status == 409
    assert ("retry-after", "2") in busy.headers
    assert down is not None
    assert down.status == 503
    assert ("retry-after", "1") in down.headers
    assert corrupt is not None
    assert corrupt.status == 500
    assert g.problem_for(ValueError("app")) is None
    for answer in (reused, busy, down, corrupt):
        assert json.loads(answer.body)["status"] == answer.status


def test_a_declared_body_over_the_limit_is_413_before_any_claim() -> None:
    g = gate(max_body_bytes=10)
    big = head("POST", '"k"', ("content-length", "11"))
    answer = g.declared_too_large(big)
    assert answer is not None
    assert answer.status == 413
    assert g.declared_too_large(head("POST", '"k"', ("content-length", "10"))) is None


def test_config_is_checked_when_built() -> None:
    for bad in (
        {"methods": "POST"},
        {"header": "Idem Key"},
        {"max_body_bytes": -1},
        {"lease_seconds": 0},
        {"on_in_progress": "later"},
        {"scope": "tenant"},
        {"exclude_fields": "a"},
        {"key_prefix": ""},
    ):
        with pytest.raises(IdempotencyConfigError):
            HttpConfig(**bad)
    config = HttpConfig()
    assert config.replace(required=True).required is True
    assert config.required is False


# -- the engine's flow, driven as an adapter drives it ------------------------------------


def test_the_flow_stores_a_first_response_and_replays_it() -> None:
    from onceonly import _sync

    g = gate()
    runs: list[int] = []

    def app() -> Response:
        runs.append(1)
        return g.captured(201, [("location", "/p/1")], b'{"id":1}')

    def once() -> tuple[Any, bool]:
        inv = g.invocation(head(), Covered("k", ""), b"{}")
        steps, note = g.flow(inv)
        return _sync.drive(steps, g.store, inv, app), note.stored

    first, stored = once()
    assert (first.replayed, stored) == (False, True)
    again, stored_again = once()
    assert again == Response(201, (("location", "/p/1"),), b'{"id":1}', replayed=True)
    assert stored_again is False  # nothing written by a replay
    assert runs == [1]


def test_a_response_not_stored_releases_the_claim() -> None:
    from onceonly import _sync

    g = gate()
    inv = g.invocation(head(), Covered("k", ""), b"{}")
    steps, note = g.flow(inv)
    with pytest.raises(NotStored):
        _sync.drive(steps, g.store, inv, lambda: g.captured(500, [], b"boom"))
    assert note.stored is False
    assert g.store.get(inv.key) is None  # released: the retry runs
