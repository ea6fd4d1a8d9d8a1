"""examples/payments_api runs as its README says, and charges each payment once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import redis_harness as harness
from testkit import RedisFarm

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "payments_api" / "run.py"


def run_example(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(RUN), "--payments", "16", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def counts(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines()[2:]:
        name, without, ours = line.rsplit(maxsplit=2)
        rows[name.strip()] = (without, ours)
    return rows


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_example_charges_each_payment_once_on_sqlite(framework: str) -> None:
    rows = counts(run_example("--framework", framework))
    assert rows["each payment charged once"] == ("NO", "yes")
    assert rows["charges made"][1] == "16"
    assert int(rows["charges made"][0]) > 16  # the retries charged again without it
    assert int(rows["replayed answers"][1]) >= 1


def test_the_example_on_redis(redis_farm: RedisFarm) -> None:
    server = redis_farm.standalone(harness.engines_or_fail()[0])
    url = f"redis://{server.client_host()}:{server.port}/0"
    rows = counts(run_example("--framework", "fastapi", "--store", url))
    assert rows["each payment charged once"] == ("NO", "yes")
    assert rows["charges made"][1] == "16"
