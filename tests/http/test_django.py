"""Django: the settings-driven middleware and @idempotency, on a test project, Django's client.

``djangoproject`` (beside this file) has the settings, urls and views; its
MIDDLEWARE puts onceonly's after CSRF and a header-driven stand-in for
authentication. Each test gives the middleware its store through
``override_settings(ONCEONLY_HTTP=...)`` and uses a fresh ``Client`` (which
builds the middleware chain again). The store-dependent behaviours run on
every sync store.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceonly.errors import IdempotencyConfigError
from onceonly.http import ProblemType
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import ManualClock

KEY = {"Idempotency-Key": '"k-1"'}
JSON = "application/json"


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    import djangoproject

    djangoproject.setup()


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[str]]:
    from djangoproject import views

    views.reset()
    yield views.CALLS
    views.HOLD.set()  # a held view never outlives its test


def client_on(store: Any, *, csrf: bool = False, **options: Any) -> Any:
    """A Django test client whose middleware runs on ``store`` with ``options``."""
    from django.test import Client, override_settings

    override = override_settings(ONCEONLY_HTTP={"store": store, **options})
    override.enable()
    client = Client(enforce_csrf_checks=csrf)
    client.get("/payments")  # builds the middleware chain now, with these settings
    override.disable()
    return client


def problem_type(response: Any) -> str:
    assert response["Content-Type"] == "application/problem+json"
    return str(response.json()["type"])


def test_a_first_run_then_a_replay_of_the_view_s_response(
    http_store: Any, calls: list[str]
) -> None:
    client = client_on(http_store)
    first = client.post("/payments", b'{"amount": 10}', content_type=JSON, headers=KEY)
    assert first.status_code == 201
    assert first.json() == {"payment": 2, "got": {"amount": 10}}  # the view read the body
    assert first.cookies["session"].value == "s2"
    again = client.post("/payments", b'{"amount": 10}', content_type=JSON, headers=KEY)
    assert again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == "/payments/2"
    assert again["Content-Type"] == JSON
    assert again["Content-Length"] == str(len(first.content))
    assert "X-Internal" not in again
    assert "session" not in again.cookies
    form = client.post("/payments", {"amount": "7"}, headers={"Idempotency-Key": "f"})
    assert form.json()["got"] == {"amount": "7"}  # POST parsed from the bytes read first
    assert calls == ["payments", "payments", "payments"]  # the GET, then two runs


def test_the_same_key_with_another_body_is_422_also_while_the_first_runs(
    http_store: Any, calls: list[str]
) -> None:
    from djangoproject import views

    client = client_on(http_store, lease_seconds=20)
    out: list[Any] = []
    held = threading.Thread(
        target=lambda: out.append(
            client.post("/payments", b"{}", content_type=JSON, headers={**KEY, "X-Hold": "1"})
        )
    )
    held.start()
    try:
        assert views.ENTERED.wait(10)
        duplicate = client.post("/payments", b"{}", content_type=JSON, headers=KEY)
        assert duplicate.status_code == 409
        assert problem_type(duplicate) == ProblemType.IN_PROGRESS.uri
        assert duplicate["Retry-After"] == "20"
        other = client.post("/payments", b'{"a": 1}', content_type=JSON, headers=KEY)
        assert other.status_code == 422
    finally:
        views.HOLD.set()
        held.join()
    assert out[0].status_code == 201
    after = client.post("/payments", b'{"a": 1}', content_type=JSON, headers=KEY)
    assert problem_type(after) == ProblemType.KEY_REUSED.uri
    assert calls.count("payments") == 2  # the GET, and the one run


def test_required_exempt_and_per_view_options(http_store: Any, clock: ManualClock) -> None:
    from djangoproject import views

    client = client_on(http_store)
    for path in ("/required", "/classy"):
        missing = client.post(path)
        assert missing.status_code == 400
        assert problem_type(missing) == ProblemType.KEY_MISSING.uri
        client.post(path, headers={"Idempotency-Key": path})
        assert client.post(path, headers={"Idempotency-Key": path})["Idempotent-Replayed"] == "true"
    for _ in range(2):
        assert "Idempotent-Replayed" not in client.post("/exempt", headers=KEY)
    client.put("/put-too", headers={"Idempotency-Key": "p"})
    assert client.put("/put-too", headers={"Idempotency-Key": "p"})["Idempotent-Replayed"] == "true"
    client.post("/short", headers={"Idempotency-Key": "s"})
    clock.advance(61_000)  # past the view's 60 s retention
    assert "Idempotent-Replayed" not in client.post("/short", headers={"Idempotency-Key": "s"})
    assert views.CALLS[1:] == ["required", "classy", "exempt", "exempt", "put", "short", "short"]


@pytest.mark.parametrize("code", [200, 302, 404, 409])
def test_2xx_3xx_4xx_are_stored(http_store: Any, code: int, calls: list[str]) -> None:
    client = client_on(http_store)
    first = client.post(f"/status/{code}", headers=KEY)
    again = client.post(f"/status/{code}", headers=KEY)
    assert again.status_code == code
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert calls.count("status") == 1


def test_a_5xx_and_a_failing_view_are_not_stored(http_store: Any, calls: list[str]) -> None:
    client = client_on(http_store)
    for n in (1, 2):
        answer = client.post("/status/503", headers=KEY)
        assert answer.content == f"status 503 #{n + 1}".encode()
        assert answer["Idempotency-Stored"] == "false"
    with pytest.raises(RuntimeError, match="the view failed"):  # the test client re-raises
        client.post("/boom", headers={"Idempotency-Key": "b"})
    client.raise_request_exception = False
    answer = client.post("/boom", headers={"Idempotency-Key": "b"})
    assert answer.status_code == 500  # Django's error page; the claim was released
    assert answer["Idempotency-Stored"] == "false"
    assert calls[1:] == ["status", "status", "boom", "boom"]


def test_streaming_and_file_responses_go_out_unstored(http_store: Any, calls: list[str]) -> None:
    client = client_on(http_store)
    for _ in range(2):
        answer = client.post("/stream", headers=KEY)
        assert answer["Idempotency-Stored"] == "false"
        n = len(calls)
        assert b"".join(answer.streaming_content) == b"part0-%d;part1-%d;part2-%d;" % (n, n, n)
        answer = client.post("/file", headers={"Idempotency-Key": "f"})
        assert answer["Idempotency-Stored"] == "false"
        assert b"".join(answer.streaming_content).startswith(b"file-")
        answer.close()
    assert calls[1:] == ["stream", "file", "stream", "file"]


def test_an_answer_before_the_view_is_not_stored(http_store: Any, calls: list[str]) -> None:
    # CSRF refuses the request in its process_view: the view is never reached.
    guarded = client_on(http_store, csrf=True)
    refused = guarded.post("/guarded", headers=KEY)
    assert refused.status_code == 403
    assert refused["Idempotency-Stored"] == "false"
    passed = client_on(http_store).post("/guarded", headers=KEY)  # the retry, CSRF fixed
    assert passed.status_code == 200
    assert "Idempotent-Replayed" not in passed
    assert calls[-1] == "guarded"


def _multipart(boundary: str, token: str = "") -> tuple[bytes, str]:
    fields = [("name", "report")]
    if token:
        fields.append(("csrfmiddlewaretoken", token))
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="r.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    )
    return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_files_parse_after_the_body_was_read_and_a_new_boundary_replays(
    http_store: Any, calls: list[str]
) -> None:
    # CSRF checks the form's token (parsing FILES in its process_view) before the view.
    client = client_on(http_store, csrf=True)
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    answers = []
    for boundary in ("first-boundary", "second-boundary"):
        body, content_type = _multipart(boundary, secret)
        answers.append(client.post("/upload", body, content_type=content_type, headers=KEY))
    assert answers[0].status_code == 201
    assert answers[0].json()["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert answers[0].json()["name"] == "report"
    assert answers[1]["Idempotent-Replayed"] == "true"
    assert calls[1:] == ["upload"]


def test_the_principal_is_the_authenticated_user(http_store: Any, calls: list[str]) -> None:
    client = client_on(http_store)
    for user in ("7", "8", "7"):
        client.post("/payments", b"{}", content_type=JSON, headers={**KEY, "X-Test-User": user})
    anonymous = client.post("/payments", b"{}", content_type=JSON, headers=KEY)
    assert "Idempotent-Replayed" not in anonymous
    assert calls.count("payments") == 4  # the GET, users 7 and 8, the anonymous one


def principal_from_tenant(request: Any) -> str | None:
    """A ``principal`` setting for the tests: the tenant header, whoever the user is."""
    return request.headers.get("X-Tenant")


def test_a_principal_setting_by_dotted_path(calls: list[str]) -> None:
    client = client_on(MemoryStore(), principal="test_django.principal_from_tenant")
    for tenant, user in (("t1", "7"), ("t1", "8"), ("t2", "7")):
        headers = {**KEY, "X-Tenant": tenant, "X-Test-User": user}
        client.post("/payments", b"{}", content_type=JSON, headers=headers)
    assert calls.count("payments") == 3  # the GET, t1 once (whoever the user), t2 once


def scope_everyone(request: Any) -> str:
    """A ``scope`` setting for the tests: one scope for every caller."""
    return "everyone"


def test_a_scope_setting_by_dotted_path(calls: list[str]) -> None:
    client = client_on(MemoryStore(), scope="test_django.scope_everyone")
    for user in ("7", "8"):
        client.post("/payments", b"{}", content_type=JSON, headers={**KEY, "X-Test-User": user})
    assert calls.count("payments") == 2  # the GET, then user 8 got user 7's replay


def test_a_response_over_the_limit_is_delivered_unstored(http_store: Any) -> None:
    client = client_on(http_store, max_response_bytes=20)
    for n in (2, 3):
        answer = client.post("/payments", b"{}", content_type=JSON, headers=KEY)
        assert answer.json()["payment"] == n  # ran again: released
        assert answer["Idempotency-Stored"] == "false"


def test_bodies_over_the_limits_are_413_and_claim_nothing(calls: list[str]) -> None:
    from django.test import override_settings

    client = client_on(MemoryStore(), max_body_bytes=100)
    too_big = client.post("/payments", b"x" * 101, content_type=JSON, headers=KEY)
    assert too_big.status_code == 413
    assert problem_type(too_big) == ProblemType.BODY_TOO_LARGE.uri
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=50):
        over_django = client.post("/payments", b"{}" + b" " * 60, content_type=JSON, headers=KEY)
    assert over_django.status_code == 413
    ok = client.post("/payments", b"{}", content_type=JSON, headers=KEY)
    assert ok.status_code == 201  # nothing was claimed before
    assert calls.count("payments") == 2


def test_a_path_no_view_answers_passes_through(calls: list[str]) -> None:
    client = client_on(MemoryStore(), required=True)
    assert client.post("/nowhere").status_code == 404
    assert client.post("/payments", b"{}", content_type=JSON).status_code == 400


class StoreFactory:
    """A store factory by dotted path; counts its calls."""

    made = 0

    def __call__(self) -> MemoryStore:
        StoreFactory.made += 1
        return MemoryStore()


make_store = StoreFactory()
shared_store = MemoryStore()


def test_settings_store_as_an_object_a_path_a_factory_or_a_class(calls: list[str]) -> None:
    for store in (
        shared_store,
        "test_django.shared_store",
        "test_django.make_store",
        "onceonly.stores.MemoryStore",
    ):
        client = client_on(store)
        client.post("/payments", b"{}", content_type=JSON, headers=KEY)
        assert (
            client.post("/payments", b"{}", content_type=JSON, headers=KEY)["Idempotent-Replayed"]
            == "true"
        )
    assert StoreFactory.made == 1
    # The object and its path are one store: the second client replayed the first's run.
    assert calls.count("payments") == 4 + 3


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (None, "needs settings.ONCEONLY_HTTP"),
        ({"lease_seconds": 3}, "needs settings.ONCEONLY_HTTP"),
        ({"store": "test_django.nothing_here"}, "cannot import 'test_django.nothing_here'"),
        ({"store": AsyncMemoryStore()}, "needs a sync store"),
        ({"store": MemoryStore(), "leese": 3}, "unknown Idempotency-Key options: leese"),
        ({"store": MemoryStore(), "principal": 7}, "must be callable"),
    ],
    ids=["missing", "no-store", "bad-path", "async-store", "unknown-option", "bad-principal"],
)
def test_bad_settings_fail_when_django_builds_the_middleware(setting: Any, message: str) -> None:
    from django.test import Client, override_settings

    with override_settings(ONCEONLY_HTTP=setting), pytest.raises(IdempotencyConfigError) as err:
        Client().get("/payments")
    assert message in str(err.value)


def test_without_django_the_error_names_the_extra() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys; sys.modules['django'] = None\n"
        f"sys.path.insert(0, {str(src)!r})\n"
        "from onceonly.http.django import IdempotencyMiddleware\n"
        "try:\n"
        "    IdempotencyMiddleware(lambda request: None)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "IdempotencyConfigError onceonly.http.django needs Django: pip install 'onceonly[django]'"
    )


def test_a_file_upload_through_the_test_client_builder(http_store: Any) -> None:
    client = client_on(http_store)
    first = client.post("/upload", {"name": "n", "doc": io.BytesIO(b"abc")}, headers=KEY)
    again = client.post("/upload", {"name": "n", "doc": io.BytesIO(b"abc")}, headers=KEY)
    assert first.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
