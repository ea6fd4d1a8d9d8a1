"""``onceonly inspect`` and ``purge``: keys from a function and a payload, results, prefixes."""

from __future__ import annotations

import importlib
import json
import textwrap
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_cli_errors import assert_one_error_line, run_cli

import redis_harness as harness
from onceonly.cli import main
from onceonly.records import encode_outcome, new_token
from onceonly.stores import SQLiteStore
from onceonly.stores.redis import RedisStore
from testkit import RedisFarm

SHOP = """
import os

from onceonly import IdempotencyConfig, idempotent, idempotent_function
from onceonly.stores import SQLiteStore

store = SQLiteStore(os.environ.get("SHOP_DB", "shop.db"))


@idempotent_function(store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id"))
def charge(customer, order):
    return {"charged": order["cents"], "customer": customer}


@idempotent(store=store, config=IdempotencyConfig(event_key_jmespath="detail.id"))
def handler(event, context):
    return [0, "", None]


@idempotent_function(store=store, key=lambda order: order["id"])
def by_callable(order):
    return 1


def plain(order):
    return 2
"""


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A user's module (unique name) in ``tmp_path``, imported; the CLI runs from there."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SHOP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["inspect", *args]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


def test_inspect_by_function_and_payload(shop: Any, capsys: pytest.CaptureFixture[str]) -> None:
    order = {"id": "o-1", "cents": 500}
    assert shop.charge("ann", order) == {"charged": 500, "customer": "ann"}
    key = shop.charge.key_for("ann", order)
    fn = f"{shop.__name__}:charge"
    # The payload is the decorator's data= argument, here the second parameter.
    shown = _inspect(capsys, "--store", "shop.db", "--function", fn, "--payload", json.dumps(order))
    assert shown["key"] == key
    assert shown["status"] == "COMPLETED"
    assert shown["result"] == {"charged": 500, "customer": "ann"}
    assert "result_error" not in shown
    # The deadline as a date and time (retention: an hour by default), and the time left.
    deadline = datetime.fromisoformat(shown["deadline"])
    assert deadline.timestamp() * 1000 == pytest.approx(shown["deadline_ms"], abs=1000)
    assert shown["time_left"].startswith(("59m", "1h"))
    # The key given directly shows the same record (the time left may have moved on).
    again = _inspect(capsys, "--store", "shop.db", key)
    assert {**again, "time_left": None} == {**shown, "time_left": None}


def test_inspect_by_handler_event_keeps_falsy_results(
    shop: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    event = {"detail": {"id": "e-1"}}
    shop.handler(event, None)
    fn = f"{shop.__name__}:handler"
    shown = _inspect(capsys, "--store", "shop.db", "--function", fn, "--payload", json.dumps(event))
    assert shown["key"] == shop.handler.key_for(event)
    assert shown["result"] == [0, "", None]


def test_purge_by_function_and_payload(shop: Any, capsys: pytest.CaptureFixture[str]) -> None:
    order = {"id": "o-2", "cents": 7}
    shop.charge("bo", order)
    fn = f"{shop.__name__}:charge"
    assert (
        main(["purge", "--store", "shop.db", "--function", fn, "--payload", json.dumps(order)]) == 0
    )
    assert "deleted" in capsys.readouterr().out
    assert shop.store.get(shop.charge.key_for("bo", order)) is None


def test_function_errors_are_one_line(shop: Any, tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "shop.db")
    name = shop.__name__
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    cases = [
        (f"{name}:plain", '{"id": 1}', "not decorated"),
        (f"{name}:missing", '{"id": 1}', "has no attribute"),
        ("no_such_module_here:f", '{"id": 1}', "cannot import"),
        ("broken:f", '{"id": 1}', "cannot import"),
        (f"{name}", '{"id": 1}', "module:function"),
        (f"{name}:charge", "{not json", "--payload is not valid JSON"),
        (f"{name}:charge", '{"cents": 1}', "no idempotency key"),
        (f"{name}:by_callable", '{"id": "x"}', "key="),
    ]
    for fn, payload, needle in cases:
        done = run_cli(
            "inspect", "--store", "shop.db", "--function", fn, "--payload", payload, cwd=tmp_path
        )
        assert_one_error_line(done, needle)
    # The user's module is found from the current folder, as ``python -m`` would.
    done = run_cli(
        "inspect", "--store", "shop.db", "--function", f"{name}:charge", "--payload", '{"id": 3}',
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("no live record under ")


def test_inspect_needs_a_key_or_a_function(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "s.db")
    for args in (
        ["inspect", "--store", "s.db"],
        ["inspect", "--store", "s.db", "k", "--function", "m:f", "--payload", "{}"],
        ["inspect", "--store", "s.db", "--function", "m:f"],
        ["inspect", "--store", "s.db", "k", "--payload", "{}"],
    ):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert "onceonly" in done.stderr


def test_inspect_says_when_it_cannot_decode_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    token = new_token()
    store.claim("k:bad", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    store.complete("k:bad", token=token, outcome=b"?not an envelope", ttl_ms=60_000)
    shown = _inspect(capsys, "--store", str(tmp_path / "s.db"), "k:bad")
    assert shown["status"] == "COMPLETED"
    assert shown["result"] is None
    assert "unknown envelope tag" in shown["result_error"]
    # A claim in progress has no result yet, and says so without an error.
    store.claim("k:run", token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    shown = _inspect(capsys, "--store", str(tmp_path / "s.db"), "k:run")
    assert shown["status"] == "IN_PROGRESS"
    assert shown["result"] is None
    assert "result_error" not in shown


def _completed(store: Any, key: str, value: Any) -> None:
    token = new_token()
    store.claim(key, token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    store.complete(key, token=token, outcome=encode_outcome(value), ttl_ms=60_000)


def test_prefix_on_a_standalone_redis(
    redis_farm: RedisFarm, capsys: pytest.CaptureFixture[str]
) -> None:
    server = redis_farm.standalone(harness.engines_or_fail()[0])
    prefix = f"app-{uuid.uuid4().hex[:8]}"
    _completed(RedisStore(server.client(), prefix=prefix), "k:1", {"n": 1})
    url = f"redis://127.0.0.1:{server.port}"
    shown = _inspect(capsys, "--store", url, "--prefix", prefix, "k:1")
    assert shown["result"] == {"n": 1}
    assert main(["inspect", "--store", url, "k:1"]) == 1  # under the default prefix: nothing
    capsys.readouterr()
    assert main(["purge", "--store", url, "--prefix", prefix, "--key", "k:1"]) == 0
    assert capsys.readouterr().out.strip() == "deleted"
    assert server.client().keys(f"{prefix}:*") == []


def test_cluster_flag_builds_a_cluster_client(
    redis_farm: RedisFarm, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = redis_farm.cluster(harness.engines_or_fail()[0])
    url = f"redis://127.0.0.1:{cluster.nodes[0].port}"
    prefix = f"app-{uuid.uuid4().hex[:8]}"
    keys = [f"k:{i}" for i in range(8)]  # spread over the shards: some live elsewhere
    store = RedisStore.from_url(url, cluster=True, prefix=prefix)
    for key in keys:
        _completed(store, key, key)
    for key in keys:
        shown = _inspect(capsys, "--store", url, "--cluster", "--prefix", prefix, key)
        assert shown["result"] == key
    for key in keys:
        assert main(["purge", "--store", url, "--cluster", "--prefix", prefix, "--key", key]) == 0
        assert store.get(key) is None


def test_inspect_shows_a_decimal_result_as_its_exact_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # boto3's DynamoDB numbers come back as Decimal; JSON output shows their digits.
    store = SQLiteStore(tmp_path / "s.db")
    _completed(store, "k:dec", {"total": Decimal("12.50"), "items": [Decimal("1E+3")]})
    shown = _inspect(capsys, "--store", str(tmp_path / "s.db"), "k:dec")
    assert shown["result"] == {"total": "12.50", "items": ["1E+3"]}
    assert "result_error" not in shown
