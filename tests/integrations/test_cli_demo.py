"""``onceonly demo``: progress, a Redis store left clean (also on Ctrl-C), takeovers on Redis."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from test_cli_errors import SRC

import redis_harness as harness
from onceonly.cli import main
from onceonly.demo import Progress, _sigint_deferred, run_demo
from testkit import RedisFarm


class Ticks:
    """A clock the test moves by hand, in seconds."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_without_a_terminal_prints_a_line_every_few_seconds() -> None:
    out, clock = io.StringIO(), Ticks()
    progress = Progress(out, tty=False, every=5.0, clock=clock)
    progress.start("with onceonly", total=300)
    progress.update(10, crashes=0)
    assert out.getvalue() == ""  # nothing before the first interval
    clock.now += 5.5
    progress.update(120, crashes=2)
    clock.now += 1.0
    progress.update(150, crashes=2)  # within the interval: nothing more
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines == ["  with onceonly: 120/300 deliveries done, 2 workers killed, 5 s"]
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_is_one_rewritten_line() -> None:
    out, clock = io.StringIO(), Ticks()
    progress = Progress(out, tty=True, every=5.0, clock=clock)
    progress.start("without onceonly", total=200)
    progress.update(50, crashes=1)
    clock.now += 0.5
    progress.update(200, crashes=1)
    progress.finish()
    text = out.getvalue()
    assert text.count("\n") == 0  # the line is wiped at the end, for the table to follow
    frames = [f for f in text.split("\r") if f.strip()]
    assert "25%" in frames[0]
    assert "50/200" in frames[0]
    assert "100%" in frames[-1]
    assert text.endswith("\r")


def _scan(client: object) -> set[bytes]:
    return set(client.scan_iter(count=1000))  # type: ignore[attr-defined]


def test_redis_demo_uses_its_own_prefix_and_leaves_nothing(
    redis_farm: RedisFarm, capsys: pytest.CaptureFixture[str]
) -> None:
    server = redis_farm.standalone(harness.engines_or_fail()[0])
    client = server.client()
    before = _scan(client)
    url = f"redis://127.0.0.1:{server.port}"
    code = main(["demo", "--orders", "15", "--workers", "2", "--crash-rate", "0.2", "--store", url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert _scan(client) - before == set()
    # Redis lets an orphaned claim expire by itself: no takeover is counted, and the table says so.
    row = next(line for line in out.splitlines() if line.startswith("takeovers after a crash"))
    assert row.split()[-1] == "n/a*"
    assert "* " in out.split(row, 1)[1]
    assert "expire" in out.split(row, 1)[1]


def test_sqlite_demo_counts_takeovers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--orders", "15", "--workers", "2", "--store", str(tmp_path / "s.db")])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("takeovers after a crash"))
    assert row.split()[-1].isdigit()
    assert "n/a" not in out


class InterruptAt(Progress):
    """Raises KeyboardInterrupt, as Ctrl-C would, once the protected run is under way."""

    def __init__(self, after: int) -> None:
        super().__init__(io.StringIO(), tty=False)
        self.after = after

    def update(self, done: int, *, crashes: int) -> None:
        if self.label == "with onceonly" and done >= self.after:
            raise KeyboardInterrupt
        super().update(done, crashes=crashes)


def test_interrupted_redis_demo_deletes_its_keys_and_stops_its_workers(
    redis_farm: RedisFarm,
) -> None:
    server = redis_farm.standalone(harness.engines_or_fail()[0])
    client = server.client()
    before = _scan(client)
    url = f"redis://127.0.0.1:{server.port}"
    written: list[set[bytes]] = []

    class Watch(InterruptAt):
        def update(self, done: int, *, crashes: int) -> None:
            if self.label == "with onceonly" and done >= self.after:
                written.append(_scan(client) - before)
            super().update(done, crashes=crashes)

    with pytest.raises(KeyboardInterrupt):
        run_demo(orders=40, workers=2, store_url=url, progress=Watch(after=5))
    assert written[0], "the protected run had written records when it was interrupted"
    assert _scan(client) - before == set()
    assert multiprocessing.active_children() == []


def test_ctrl_c_stops_the_demo_with_one_line(redis_farm: RedisFarm, tmp_path: Path) -> None:
    server = redis_farm.standalone(harness.engines_or_fail()[0])
    client = server.client()
    before = _scan(client)
    url = f"redis://127.0.0.1:{server.port}"
    # Its own session, so that the signal reaches the demo's whole process group,
    # workers included, as Ctrl-C in a terminal does, and nothing else.
    demo = subprocess.Popen(
        [sys.executable, "-m", "onceonly", "demo", "--orders", "3000", "--store", url],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        # A progress line: the workers are running.
        for line in demo.stdout:
            if "deliveries done" in line:
                break
        else:
            pytest.fail("the demo ended without a progress line")
        os.killpg(demo.pid, signal.SIGINT)
        _, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    assert "Traceback" not in err, err[-3000:]
    assert err.splitlines() == ["onceonly: interrupted"]
    assert demo.returncode == 130
    assert _scan(client) - before == set()


def _report_sigint(conn: Connection) -> None:
    conn.send(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_workers_start_with_ctrl_c_ignored_and_ours_is_kept() -> None:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    # A Ctrl-C while the worker starts: the worker ignores it from birth (before any
    # of our code runs in it), and the broker still gets it, once the worker is started.
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the signal lands inside
        with _sigint_deferred():
            # To this thread: a signal sent to the whole process may be taken by
            # another thread of the test run (moto's server, say), which does
            # not block it. The demo's own process has no other thread.
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            process = context.Process(target=_report_sigint, args=(child,))
            process.start()
        pytest.fail("the Ctrl-C was lost")
    assert parent.recv() is True
    process.join()
