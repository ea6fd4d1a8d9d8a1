"""The soak: minutes of mixed sync, asyncio and batch load with faults at random (not run in CI).

In rounds of ``soak_keys`` keys, six workers (two in each mode) deliver every
key three times while, at random moments, a worker is SIGKILLed (and started
again on what it had not concluded) or paused for less than a third of the
lease and let go on. By design neither fault makes a replay stale or leaves a
key unresolved; a key runs twice only when a worker died between its body and
its completion (a batch completes its records together, so a batch worker
killed mid-batch can lose several), so the duplicates are printed beside the
kills.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

from faultlab.driver import Fleet, finish, make_keys, spread
from faultlab.lab import Lab
from faultlab.ledger import Tally, combine, read_events
from faultlab.scenarios import Params, run_id, scenario
from faultlab.targets import ONCEONLY

SOAK_MODES = ["sync", "async", "batch"] * 2


def _ours(target: str) -> bool:
    return target.startswith(ONCEONLY)


@scenario(
    "soak",
    "Minutes of mixed sync / asyncio / batch load, workers killed and paused at random",
    applies=_ours,
    not_applicable="the asyncio and batch modes are onceonly's",
)
def soak(lab: Lab, p: Params) -> Tally:
    """Rounds of ``p.soak_keys`` keys until ``p.soak_minutes`` have passed; the rounds' sum."""
    rng = random.Random(p.seed)
    ends = time.monotonic() + p.soak_minutes * 60
    total = Tally()
    rounds = 0
    while rounds == 0 or time.monotonic() < ends:
        total = combine(total, _round(lab, p, rng, lab.folder / f"round{rounds}", ends))
        rounds += 1
    total.notes["rounds"] = rounds
    return total


def _round(lab: Lab, p: Params, rng: random.Random, folder: Path, ends: float) -> Tally:
    """Six workers (two per mode) deliver each key three times; faults until they are done."""
    keys = make_keys(run_id(), p.soak_keys)
    shards = spread(
        keys,
        deliveries=3,
        workers=len(SOAK_MODES),
        seed=rng.randrange(1 << 30),
        payload=lambda key, n: {"work_ms": rng.choice((0, 1, 5))},
    )
    fleet = Fleet(lab.target, folder, shards, modes=SOAK_MODES).start()
    pause_s = lab.target.lease_ms / 1000 / 3
    pauses = 0
    try:
        while fleet.alive():
            time.sleep(rng.uniform(0.5, 3.0))
            busy = fleet.busy()
            if not busy or time.monotonic() > ends:
                continue
            index = rng.choice(busy)
            if rng.random() < 0.5:
                fleet.kill(index)
            else:
                fleet.signal(index, signal.SIGSTOP)
                time.sleep(rng.uniform(0.05, pause_s))
                fleet.signal(index, signal.SIGCONT)
                pauses += 1
        fleet.wait(600)
    finally:
        fleet.terminate()
    out = finish(lab.target, folder, keys, heal_cap_s=p.heal_cap_s)
    out.notes.update(
        kills=fleet.kills, pauses=pauses, dup_after_a_kill=_after_a_kill(read_events(folder))
    )
    return out


def _after_a_kill(events: list[dict[str, Any]]) -> int:
    """Duplicated keys whose earlier run was in a worker process that was killed.

    A worker that ends normally writes ``exit``; one without it was killed.
    A key that ran twice for any other reason (a pause past the lease, say)
    is not counted here.
    """
    exited = {ev["src"] for ev in events if ev["e"] == "exit"}
    done: dict[str, list[str]] = {}
    for ev in events:
        if ev["e"] == "done":
            done.setdefault(ev["k"], []).append(ev["src"])
    return sum(
        1
        for sources in done.values()
        if len(sources) > 1 and sources[0].startswith("w") and sources[0] not in exited
    )
