"""The command line's error paths: one ``onceonly: <message>`` line on stderr, exit 2, no traceback.

Each case runs the real command in a child process (``python -m onceonly``),
so that what a user sees is what is checked: exit code, stdout, stderr.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import onceonly
from onceonly.cli import _parser, main
from onceonly.errors import IdempotencyConfigError
from onceonly.stores.dynamodb import DynamoDBStore

SRC = str(Path(onceonly.__file__).resolve().parents[1])


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m onceonly ARGS`` from this tree, in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "onceonly", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, exactly one stderr line starting ``onceonly: ``, no traceback; return the line."""
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("onceonly: "), lines
    assert done.returncode == 2, (done.returncode, done.stderr)
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections into its backlog and never replies."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


# -- the store URL -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "purge"])
@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("bogus://x", "unknown store URL scheme"),
        ("redis://127.0.0.1:notaport", "port"),
        ("redis://127.0.0.1:99999", "port"),
    ],
)
def test_bad_store_url_is_one_line(command: str, url: str, needle: str, tmp_path: Path) -> None:
    target = ["k"] if command == "inspect" else ["--key", "k"]
    done = run_cli(command, "--store", url, *target, cwd=tmp_path)
    assert_one_error_line(done, needle)


@pytest.mark.parametrize("command", ["inspect", "purge"])
def test_missing_sqlite_path_is_an_error_and_creates_nothing(command: str, tmp_path: Path) -> None:
    target = ["k"] if command == "inspect" else ["--key", "k"]
    for store in ("typo.db", f"sqlite://{tmp_path / 'typo2.db'}"):
        done = run_cli(command, "--store", store, *target, cwd=tmp_path)
        assert_one_error_line(done, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_purge_expired_on_a_missing_path_is_an_error(tmp_path: Path) -> None:
    done = run_cli("purge", "--store", "typo.db", "--expired", cwd=tmp_path)
    assert_one_error_line(done, "does not exist")
    assert not (tmp_path / "typo.db").exists()


def test_empty_key_is_one_line(tmp_path: Path) -> None:
    from onceonly.stores import SQLiteStore

    SQLiteStore(tmp_path / "s.db")
    assert_one_error_line(run_cli("inspect", "--store", "s.db", "", cwd=tmp_path), "KEY")
    assert_one_error_line(run_cli("purge", "--store", "s.db", "--key", "", cwd=tmp_path), "--key")


def test_unreachable_redis_is_one_line(tmp_path: Path, closed_port: int, silent_port: int) -> None:
    refused = run_cli("inspect", "--store", f"redis://127.0.0.1:{closed_port}", "k", cwd=tmp_path)
    assert_one_error_line(refused, "cannot reach Redis")
    silent = run_cli(
        "purge", "--store", f"redis://127.0.0.1:{silent_port}", "--key", "k", cwd=tmp_path
    )
    assert_one_error_line(silent, "cannot reach Redis")


def test_prefix_and_cluster_are_for_redis_urls_only(tmp_path: Path) -> None:
    from onceonly.stores import SQLiteStore

    SQLiteStore(tmp_path / "s.db")
    done = run_cli("inspect", "--store", "s.db", "--prefix", "app", "k", cwd=tmp_path)
    assert_one_error_line(done, "--prefix")
    done = run_cli("purge", "--store", "s.db", "--cluster", "--key", "k", cwd=tmp_path)
    assert_one_error_line(done, "--cluster")


# -- the demo ----------------------------------------------------------------------


def test_demo_with_a_bad_store_stops_at_once(tmp_path: Path, closed_port: int) -> None:
    for store, needle in [
        ("bogus://x", "unknown store URL scheme"),
        (str(tmp_path / "no-such-folder" / "s.db"), "SQLite store"),
        (f"redis://127.0.0.1:{closed_port}", "cannot reach Redis"),
        ("redis://127.0.0.1:notaport", "port"),
    ]:
        done = run_cli("demo", "--orders", "3", "--workers", "2", "--store", store, cwd=tmp_path)
        assert_one_error_line(done, needle)
        # Checked before anything ran: no table, no worker started.
        assert "charges made" not in done.stdout


# -- polish ------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"onceonly {onceonly.__version__}"
    assert done.stderr == ""


def test_python_dash_m_onceonly_help(tmp_path: Path) -> None:
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: onceonly")
    for command in ("demo", "doctor", "inspect", "purge", "dynamodb"):
        assert command in done.stdout
    assert done.stderr == ""


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_and_argument_has_help_text() -> None:
    missing = [
        f"{parser.prog} {action.dest}"
        for parser in _parsers(_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


# -- DynamoDB without a region -----------------------------------------------------


@pytest.fixture
def no_aws_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No region anywhere boto3 looks (environment, config file, profile)."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("no_aws_region")
def test_no_region_names_what_boto3_reads() -> None:
    with pytest.raises(IdempotencyConfigError) as caught:
        DynamoDBStore("orders")
    message = str(caught.value)
    # boto3 reads AWS_DEFAULT_REGION and the profile's region; it ignores AWS_REGION.
    assert "region_name=" in message
    assert "AWS_DEFAULT_REGION" in message
    assert "profile" in message
    assert "AWS_REGION" not in message.replace("AWS_DEFAULT_REGION", "")


@pytest.mark.usefixtures("no_aws_region")
def test_cli_no_region_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dynamodb", "create-table", "orders"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("onceonly: ")
    assert "--region" in line
    assert "AWS_DEFAULT_REGION" in line
    assert "region_name" not in line
    assert main(["inspect", "--store", "dynamodb://orders", "k"]) == 2
    line = capsys.readouterr().err.strip()
    assert "?region=" in line
    assert "region_name" not in line
