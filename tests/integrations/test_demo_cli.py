"""The demo and the command line, run for real (worker processes, SIGKILL, SQLite files)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from onceonly.cli import main
from onceonly.demo import render, run_demo
from onceonly.records import Status, encode_outcome, new_token
from onceonly.stores import SQLiteStore
from onceonly.stores.url import store_from_url


def test_demo_charges_each_order_once_with_onceonly_and_more_without(tmp_path: Path) -> None:
    plain, guarded = run_demo(orders=80, workers=3, crash_rate=0.05, folder=str(tmp_path))
    # Without onceonly every delivery that did not crash charged.
    assert plain.charges == plain.deliveries - plain.crashes
    assert plain.charges > plain.orders
    assert plain.exact is False
    # With onceonly: exactly one charge per order, whatever was redelivered.
    assert guarded.charges == 80
    assert guarded.charged_orders == 80
    assert guarded.exact is True
    assert guarded.deliveries == plain.deliveries + guarded.in_progress + guarded.crashes - (
        plain.crashes
    )
    # Every execution either charged or was killed; every kill was taken over.
    assert guarded.executions == guarded.charges + guarded.crashes
    assert guarded.takeovers == guarded.crashes
    table = render(plain, guarded)
    assert "charges == orders (80)" in table
    assert table.splitlines()[-2].split()[-2:] == ["NO", "yes"]


def test_cli_demo_exit_code_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite3"
    code = main(["demo", "--orders", "20", "--workers", "2", "--store", str(store)])
    out = capsys.readouterr().out
    assert code == 0
    assert "with onceonly" in out
    # The run's records are deleted at the end: a second run starts afresh.
    assert len(SQLiteStore(store)) == 0
    assert main(["demo", "--orders", "20", "--workers", "2", "--store", str(store)]) == 0
    assert "charges == orders (20)" in capsys.readouterr().out


def test_cli_inspect_and_purge(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path)
    token = new_token()
    store.claim("k:1", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint="ab")
    store.complete("k:1", token=token, outcome=encode_outcome([1, 2]), ttl_ms=60_000)
    assert main(["inspect", "--store", str(path), "k:1"]) == 0
    out = capsys.readouterr().out
    assert '"status": "COMPLETED"' in out
    assert '"fingerprint": "ab"' in out
    assert main(["inspect", "--store", f"sqlite://{path}", "k:missing"]) == 1
    assert main(["purge", "--store", str(path), "--key", "k:1"]) == 0
    assert store.get("k:1") is None
    assert main(["purge", "--store", str(path), "--expired"]) == 0
    assert "deleted 0 expired records" in capsys.readouterr().out


def test_cli_reports_store_errors_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-folder" / "s.sqlite3"
    assert main(["inspect", "--store", str(missing), "k"]) == 2
    assert "SQLite store" in capsys.readouterr().err
    assert main(["inspect", "--store", "ftp://x", "k"]) == 2
    assert "unknown store URL scheme" in capsys.readouterr().err


def test_record_status_names_are_stable() -> None:
    # inspect prints these names; scripts may parse them.
    assert [s.name for s in Status] == ["IN_PROGRESS", "COMPLETED"]


def test_cli_reaches_dynamodb_by_url(
    capsys: pytest.CaptureFixture[str], moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fake credentials and no instance-metadata lookups: everything stays on loopback.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    table = f"cli-{uuid.uuid4().hex[:8]}"
    url = f"dynamodb://{table}?region=us-east-1&endpoint_url={moto_server.url}"
    assert main(["dynamodb", "create-table", table, "--region", "us-east-1",
                 "--endpoint-url", moto_server.url]) == 0  # fmt: skip
    store = store_from_url(url)
    token = new_token()
    store.claim("k:1", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    store.complete("k:1", token=token, outcome=encode_outcome("ok"), ttl_ms=60_000)
    capsys.readouterr()
    assert main(["inspect", "--store", url, "k:1"]) == 0
    assert '"status": "COMPLETED"' in capsys.readouterr().out
    assert main(["purge", "--store", url, "--key", "k:1"]) == 0
    assert store.get("k:1") is None
    assert main(["inspect", "--store", f"dynamodb://{table}?bogus=1", "k"]) == 2
    assert "dynamodb://TABLE" in capsys.readouterr().err
