"""Clock skew: two hosts whose clocks disagree, the same key delivered to both.

Host A (a correct clock) claims each key and works on it for 0.8 of the
lease; while it works (0.55 of the lease after its body started), host B,
whose clock runs :data:`SKEW_MS` ahead, receives the same key. On B's clock A's
lease may already have ended: whether B takes the key over depends on who
judges the lease.

- onceonly on Redis: the server (its ``TIME`` in the scripts); the client's
  clock plays no part (the store takes no clock), so B is told "in progress".
- onceonly on SQLite: the host's clock, no allowance: B takes over. A's late
  completion is fenced by its token and does not overwrite B's.
- onceonly on DynamoDB: the host's clock, less ``clock_skew_ms`` (default
  1 000 ms). B arrives when less than ``SKEW_MS - clock_skew_ms`` of A's lease
  is left on A's clock, so the default allowance is too small for a 2 s skew
  and ``clock-skew-allowance-3s`` (3 000 ms) covers it.
- Powertools (DynamoDB, Redis): the client compares the in-progress expiry
  with its own ``datetime.now``: B takes over.

The keys of a round run at once (one thread per key in each host's worker);
B's worker is started with the round and held at a gate until its moment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from faultlab.driver import Fleet, finish, make_keys
from faultlab.lab import Lab
from faultlab.ledger import Tally, read_events
from faultlab.scenarios import Params, run_id, scenario, wait_for
from faultlab.targets import Target

SKEW_MS = 2_000
LEASE_MS = 2_000
WORK_SHARE = 0.8  # of the lease: A's body
ARRIVAL_SHARE = 0.55  # of the lease after A's body started: B's delivery
ROUND_KEYS = 8  # keys run at once (a thread each, in each host's worker)
HOST_A, HOST_B = "w0.", "w1."  # the workers' ledger names

TARGETS = frozenset(
    {
        "onceonly/sqlite",
        "onceonly/dynamodb",
        "onceonly/redis-aof-everysec",
        "powertools/dynamodb",
        "powertools/redis-aof-everysec",
    }
)
NOT_APPLICABLE = (
    "onceonly's other Redis targets judge leases on the server, as "
    "onceonly/redis-aof-everysec shows; powertools/redis-aof-always differs from "
    "powertools/redis-aof-everysec only in fsync, which plays no part here"
)


def run_skew(lab: Lab, p: Params, *, allowance_ms: int | None = None) -> Tally:
    """Deliver ``p.late_keys`` keys to host A, then to host B (clock ``SKEW_MS`` ahead).

    Args:
        allowance_ms: onceonly's DynamoDB ``clock_skew_ms`` on both hosts (None: default).

    Returns:
        The run's figures; notes say how many keys B took over, how many
        times B was told "in progress", and whose outcome was kept.
    """
    target = lab.target
    if allowance_ms is not None:
        target = target.with_(clock_skew_ms=allowance_ms)
    host_b = target.with_(clock_offset_ms=SKEW_MS)
    folder = lab.folder / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    keys = make_keys(run_id(), p.late_keys)
    work = {"work_ms": int(target.lease_ms * WORK_SHARE)}
    arrivals: list[int] = []
    for start in range(0, len(keys), ROUND_KEYS):
        batch = keys[start : start + ROUND_KEYS]
        arrivals += _round(target, host_b, folder, batch, start, work)
    out = finish(target, folder, keys, heal_cap_s=p.heal_cap_s)
    out.notes.update(_notes(folder, arrivals))
    return out


def _round(
    target: Target,
    host_b: Target,
    folder: Path,
    batch: list[str],
    start: int,
    work: dict[str, int],
) -> list[int]:
    """One round: A takes every key of ``batch``; B gets each while A works.

    Returns:
        Per key, how long after A's body started B was let go (ms).
    """
    gate = folder / f"gate{start}"
    shards = [
        [(key, start + i, work) for i, key in enumerate(batch)],
        [(key, 100_000 + start + i, work) for i, key in enumerate(batch)],
    ]
    fleet = Fleet(
        target, folder, shards, threads=len(batch), targets=[target, host_b], gates=[None, gate]
    )
    fleet.start()
    try:
        runs: dict[str, int] = {}

        def all_started() -> bool:
            for ev in read_events(folder):
                if ev["e"] == "run" and ev["k"] in batch and ev["src"].startswith(HOST_A):
                    runs.setdefault(ev["k"], ev["t"])
            return len(runs) == len(batch)

        wait_for(all_started, "host A to start every key", 60)
        # B comes ARRIVAL_SHARE of the lease after the last of A's bodies started.
        at_ms = max(runs.values()) + int(target.lease_ms * ARRIVAL_SHARE)
        time.sleep(max(0.0, at_ms / 1000 - time.time()))
        Fleet.open_gate(gate)
        fleet.wait(60)
    finally:
        fleet.terminate()
    return [at_ms - t for t in runs.values()]


def _notes(folder: Path, arrivals: list[int]) -> dict[str, Any]:
    """Keys B took over, B's "in progress" answers, and whose outcome each taken key kept."""
    events = read_events(folder)
    ran: dict[str, dict[str, str]] = {}  # key -> host -> nonce of its body
    in_progress = 0
    final: dict[str, str] = {}
    for ev in events:
        if ev["e"] == "run":
            for host, prefix in (("A", HOST_A), ("B", HOST_B)):
                if ev["src"].startswith(prefix):
                    ran.setdefault(ev["k"], {})[host] = ev["n"]
        elif ev["e"] == "err" and ev["src"].startswith(HOST_B) and ev["kind"] == "in_progress":
            in_progress += 1
        elif ev["e"] == "got" and ev["ph"] == "check":
            final[ev["k"]] = ev["n"]
    taken = [k for k, hosts in ran.items() if "A" in hosts and "B" in hosts]
    return {
        "skew": f"+{SKEW_MS} ms",  # a label: the matrix adds numbers up over runs
        "taken_over_by_skewed_host": len(taken),
        "skewed_host_told_in_progress": in_progress,
        "taken_keys_keeping_a_outcome": sum(1 for k in taken if final.get(k) == ran[k]["A"]),
        "taken_keys_keeping_b_outcome": sum(1 for k in taken if final.get(k) == ran[k]["B"]),
        # per run: the earliest and latest, joined over runs by the matrix
        "b_arrival_ms_after_a_started": [f"{min(arrivals)}-{max(arrivals)}"] if arrivals else [],
    }


def _dynamodb_only(target: str) -> bool:
    return target == "onceonly/dynamodb"


@scenario(
    "clock-skew",
    f"Host B's clock {SKEW_MS / 1000:g} s ahead gets a key host A is working on",
    applies=TARGETS.__contains__,
    not_applicable=NOT_APPLICABLE,
    lease_ms=LEASE_MS,
)
def clock_skew(lab: Lab, p: Params) -> Tally:
    return run_skew(lab, p)


@scenario(
    "clock-skew-allowance-3s",
    "The same, onceonly's DynamoDB clock_skew_ms=3000 (over the skew)",
    applies=_dynamodb_only,
    not_applicable="clock_skew_ms is onceonly's DynamoDB store's setting",
    lease_ms=LEASE_MS,
)
def clock_skew_allowance(lab: Lab, p: Params) -> Tally:
    return run_skew(lab, p, allowance_ms=3_000)
