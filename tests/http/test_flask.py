"""Flask: FlaskIdempotency, per-view options with @idempotency, the principal callable.

In process, with Flask's test client (which calls ``app.wsgi_app``, where
the middleware sits). The store-dependent ones run on every sync store.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import pytest
from flask.views import MethodView

from onceonly.errors import IdempotencyConfigError
from onceonly.http import HttpConfig, ProblemType
from onceonly.http.flask import FlaskIdempotency, FlaskMiddleware, idempotency
from onceonly.metrics import Event
from onceonly.stores import AsyncMemoryStore, MemoryStore
from testkit import ManualClock

KEY = {"Idempotency-Key": '"k-1"'}


class Shop:
    """A Flask app with views of every kind; ``calls`` names each view run."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.teardowns = 0
        self.entered = threading.Event()
        self.hold = threading.Event()
        app = self.app = flask.Flask("shop")
        app.secret_key = "tests-only"

        def note(name: str) -> int:
            self.calls.append(name)
            if flask.request.headers.get("X-Hold"):
                self.entered.set()
                assert self.hold.wait(30)
            return len(self.calls)

        @app.post("/open")
        def open_view() -> Any:
            return {"n": note("open")}, 201

        @app.post("/required")
        @idempotency(required=True)
        def required() -> Any:
            return {"n": note("required")}, 201

        @idempotency(exempt=True)  # above the route: the mark is on the same function
        @app.post("/exempt")
        def exempt() -> Any:
            return {"n": note("exempt")}

        @app.post("/short")
        @idempotency(expires_after_seconds=60, lease_seconds=7)
        def short() -> Any:
            return {"n": note("short")}

        @app.route("/put", methods=["PUT"])
        @idempotency(methods={"PUT"})
        def put() -> Any:
            return {"n": note("put")}

        def logged(view: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return view(*args, **kwargs)

            return wrapper

        @app.post("/wrapped")
        @logged
        @idempotency(required=True)
        def wrapped() -> Any:
            return {"n": note("wrapped")}

        @idempotency(required=True)
        class Things(MethodView):
            def post(self) -> Any:
                return {"n": note("things")}, 201

        app.add_url_rule("/things", view_func=Things.as_view("things"))

        shop_bp = flask.Blueprint("bp", __name__, url_prefix="/bp")

        @shop_bp.post("/orders")
        @idempotency(required=True)
        def orders() -> Any:
            return {"n": note("orders")}, 201

        app.register_blueprint(shop_bp)

        @app.route("/get-only")
        def get_only() -> Any:
            return {"n": note("get-only")}

        @app.post("/boom")
        def boom() -> Any:
            note("boom")
            raise RuntimeError("the view failed")

        @app.post("/login/<user>")
        @idempotency(exempt=True)
        def login(user: str) -> Any:
            flask.session["user"] = user
            return {"user": user}

        @app.after_request
        def cache_control(response: flask.Response) -> flask.Response:
            response.headers["Cache-Control"] = "no-store"  # replayed: after_request ran first
            return response

        @app.teardown_request
        def count_teardown(exc: BaseException | None) -> None:
            self.teardowns += 1


def shop_with(store: Any, **options: Any) -> tuple[Shop, Any, FlaskIdempotency]:
    shop = Shop()
    idem = FlaskIdempotency(shop.app, store=store, **options)
    return shop, shop.app.test_client(), idem


def test_a_view_marked_required_needs_a_key_and_the_others_do_not(http_store: Any) -> None:
    shop, client, idem = shop_with(http_store)
    for path in ("/required", "/things", "/bp/orders", "/wrapped"):
        missing = client.post(path)
        assert missing.status_code == 400, path
        assert missing.json["type"] == ProblemType.KEY_MISSING.uri
    assert shop.calls == []
    assert client.post("/open").status_code == 201
    for path in ("/required", "/things", "/bp/orders", "/wrapped"):
        client.post(path, headers={"Idempotency-Key": path})
        again = client.post(path, headers={"Idempotency-Key": path})
        assert again.headers["Idempotent-Replayed"] == "true", path
    assert shop.calls == ["open", "required", "things", "orders", "wrapped"]
    assert idem.stats[Event.BAD_KEY] == 4
    assert idem.stats[Event.EXECUTED] == 4  # the per-view gates count on the same counters
    assert idem.stats[Event.REPLAYED] == 4


def test_a_replay_carries_what_after_request_added_and_not_the_cookie(http_store: Any) -> None:
    shop, client, _ = shop_with(http_store)
    client.post("/login/ann")
    first = client.post("/open", headers=KEY)
    assert first.headers["Cache-Control"] == "no-store"
    again = client.post("/open", headers=KEY)
    assert again.headers["Cache-Control"] == "no-store"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Set-Cookie" not in again.headers
    assert again.json == first.json
    assert shop.calls == ["open"]


def test_per_view_options_replace_the_middleware_s(http_store: Any, clock: ManualClock) -> None:
    shop, client, _ = shop_with(http_store, expires_after_seconds=3600)
    client.post("/short", headers=KEY)
    client.post("/open", headers={"Idempotency-Key": "k-2"})
    clock.advance(61_000)  # past /short's retention, not past the middleware's
    assert "Idempotent-Replayed" not in client.post("/short", headers=KEY).headers
    again = client.post("/open", headers={"Idempotency-Key": "k-2"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert shop.calls == ["short", "open", "short"]


def test_a_per_view_lease_is_the_retry_after_of_a_duplicate() -> None:
    shop, client, _ = shop_with(MemoryStore())
    held = threading.Thread(target=lambda: client.post("/short", headers={**KEY, "X-Hold": "1"}))
    held.start()
    try:
        assert shop.entered.wait(10)
        duplicate = shop.app.test_client().post("/short", headers=KEY)
        assert duplicate.status_code == 409
        assert duplicate.headers["Retry-After"] == "7"
    finally:
        shop.hold.set()
        held.join()


def test_an_exempt_view_and_methods_a_view_adds() -> None:
    shop, client, _ = shop_with(MemoryStore())
    for _ in range(2):
        answer = client.post("/exempt", headers=KEY)
        assert "Idempotent-Replayed" not in answer.headers
    client.put("/put", headers={"Idempotency-Key": "k-2"})
    replay = client.put("/put", headers={"Idempotency-Key": "k-2"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert shop.calls == ["exempt", "exempt", "put"]


def test_a_request_no_view_answers_passes_through_unclaimed() -> None:
    shop, client, _ = shop_with(MemoryStore(), required=True)
    # 404 and 405: Flask answers, nothing is claimed or stored, no key is asked for.
    assert client.post("/nowhere").status_code == 404
    assert client.post("/get-only", headers=KEY).status_code == 405
    second = client.post("/get-only", headers=KEY)
    assert second.status_code == 405
    assert "Idempotent-Replayed" not in second.headers
    assert shop.calls == []


def test_a_view_failure_is_a_500_that_is_not_stored(http_store: Any) -> None:
    shop, client, idem = shop_with(http_store)
    for _ in range(2):
        answer = client.post("/boom", headers=KEY)
        assert answer.status_code == 500
        assert answer.headers["Idempotency-Stored"] == "false"
    assert shop.calls == ["boom", "boom"]
    shop.app.testing = True  # Flask now lets the exception out: released, re-raised
    with pytest.raises(RuntimeError, match="the view failed"):
        client.post("/boom", headers=KEY)
    assert shop.calls == ["boom", "boom", "boom"]
    assert idem.stats[Event.RELEASED] == 3


def test_the_principal_runs_in_a_request_context_of_its_own() -> None:
    seen: list[Any] = []

    def principal() -> str | None:
        seen.append(("g", dict(flask.g)))
        user = flask.session.get("user")
        return None if user is None else str(user)

    shop, _, _ = shop_with(MemoryStore(), principal=principal)
    ann, bob = shop.app.test_client(), shop.app.test_client()
    ann.post("/login/ann")
    bob.post("/login/bob")
    first = ann.post("/open", headers=KEY)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in bob.post("/open", headers=KEY).headers  # another scope
    assert ann.post("/open", headers=KEY).headers["Idempotent-Replayed"] == "true"
    assert shop.calls == ["open", "open"]
    assert seen == [("g", {})] * 3  # before_request has not run: g is empty
    assert shop.teardowns == 4  # two logins and two runs: none for the principal's context


def test_without_a_principal_remote_user_or_authorization_scope_the_key() -> None:
    shop, client, _ = shop_with(MemoryStore())
    client.post("/open", headers=KEY, environ_overrides={"REMOTE_USER": "ann"})
    client.post("/open", headers=KEY, environ_overrides={"REMOTE_USER": "bob"})
    client.post("/open", headers={**KEY, "Authorization": "Bearer x"})
    client.post("/open", headers={**KEY, "Authorization": "Bearer x"})
    assert shop.calls == ["open", "open", "open"]


def test_a_principal_that_is_not_a_str_is_refused() -> None:
    shop, client, _ = shop_with(MemoryStore(), principal=lambda: 42)
    with pytest.raises(IdempotencyConfigError, match="str or None, got int"):
        client.post("/open", headers=KEY)
    assert shop.calls == []


def test_init_app_later_and_the_extension_on_the_app() -> None:
    idem = FlaskIdempotency(store=MemoryStore(), config=HttpConfig(required=True))
    shop = Shop()
    middleware = idem.init_app(shop.app)
    assert isinstance(middleware, FlaskMiddleware)
    assert shop.app.wsgi_app is middleware
    assert shop.app.extensions["onceonly"] is idem
    assert shop.app.test_client().post("/open").status_code == 400


def test_bad_options_fail_when_given() -> None:
    with pytest.raises(IdempotencyConfigError, match="unknown Idempotency-Key options: lease"):
        idempotency(lease=3)
    with pytest.raises(IdempotencyConfigError, match="exempt view takes no other options"):
        idempotency(exempt=True, required=True)
    with pytest.raises(IdempotencyConfigError, match="lease_seconds"):
        idempotency(lease_seconds=-1)
    with pytest.raises(IdempotencyConfigError, match="needs a sync store"):
        FlaskIdempotency(flask.Flask("x"), store=AsyncMemoryStore())
    with pytest.raises(IdempotencyConfigError, match="needs a Flask app"):
        FlaskIdempotency(store=MemoryStore()).init_app(object())  # type: ignore[arg-type]
    with pytest.raises(IdempotencyConfigError, match="not both"):
        FlaskIdempotency(store=MemoryStore(), config=HttpConfig(), required=True)


def test_without_flask_the_error_names_the_extra() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys; sys.modules['flask'] = None\n"
        f"sys.path.insert(0, {str(src)!r})\n"
        "from onceonly.http.flask import FlaskIdempotency\n"
        "from onceonly.stores import MemoryStore\n"
        "try:\n"
        "    FlaskIdempotency(store=MemoryStore())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "IdempotencyConfigError onceonly.http.flask needs Flask: pip install 'onceonly[flask]'"
    )


def test_a_bad_key_through_flask_is_a_problem() -> None:
    shop, client, _ = shop_with(MemoryStore())
    answer = client.post("/open", headers={"Idempotency-Key": '""'})
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert json.loads(answer.data)["type"] == ProblemType.KEY_INVALID.uri
    assert shop.calls == []
