"""A function slower than its lease, and a worker paused past it, through the fault lab.

The lab's workers are real processes; the late scenarios of
``faultlab.scenarios`` run here at a small size. What holds by design is
asserted: with ``heartbeat`` a function that runs 1.6 leases keeps its claim
(the redelivery meanwhile is told "in progress" and the key runs once);
without it the lease ends and the key runs twice, and nothing replays a
result other than the stored one. (A worker paused past its lease is
``test_fault_guarantees.py``'s.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

import redis_harness as harness
from faultlab.catalog import SCENARIOS, Params
from faultlab.lab import provision
from faultlab.ledger import Tally

TARGETS = ["onceonly/sqlite", "onceonly/redis-aof-everysec", "onceonly/dynamodb"]
PARAMS = Params(late_keys=2, heal_cap_s=20.0)


def run(scenario: str, target: str, folder: Path) -> Tally:
    spec = SCENARIOS[scenario]
    engine = harness.engines_or_fail()[0]
    with provision(target, folder, engine, lease_ms=spec.lease_ms) as lab:
        return spec.run(lab, PARAMS)


@pytest.mark.parametrize("target", TARGETS)
def test_with_heartbeat_a_function_slower_than_its_lease_runs_once(
    target: str, tmp_path: Path
) -> None:
    out = run("slow-function-heartbeat", target, tmp_path)
    assert out.keys == PARAMS.late_keys
    assert out.executions == PARAMS.late_keys
    assert (out.duplicates, out.lost_outcomes, out.stale_replays, out.unresolved) == (0, 0, 0, 0)
    # Both redeliveries of each key came while the first run held it.
    assert out.in_progress >= 2 * PARAMS.late_keys


@pytest.mark.parametrize("target", TARGETS)
def test_without_heartbeat_the_lease_ends_the_key_runs_twice_and_no_replay_is_stale(
    target: str, tmp_path: Path
) -> None:
    out = run("slow-function", target, tmp_path)
    # The late owner completes after its lease: its result is refused (on
    # DynamoDB the clock allowance still held the claim for the redeliveries,
    # which were told "in progress"; the key runs again in the heal phase).
    assert out.duplicates == PARAMS.late_keys
    assert out.lost_outcomes == PARAMS.late_keys
    assert (out.stale_replays, out.unresolved) == (0, 0)
