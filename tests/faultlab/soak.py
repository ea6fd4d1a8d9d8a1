"""The soak: minutes of mixed sync, asyncio and batch load with faults at random (not run in CI).

Six workers (two in each mode) deliver every key three times while, at
random moments, a worker is SIGKILLed (and started again on what it had not
concluded) or paused for less than a third of the lease and let go on. By
design neither fault makes a replay stale or leaves a key unresolved; a key
runs twice only when a worker died between its body and its completion, so
the duplicates are printed beside the kills.
"""

from __future__ import annotations

import random
import signal
import time

from faultlab.driver import Fleet, finish, make_keys, spread
from faultlab.lab import Lab
from faultlab.ledger import Tally
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
    rng = random.Random(p.seed)
    folder = lab.folder / "ledger"
    keys = make_keys(run_id(), p.soak_keys)
    shards = spread(
        keys,
        deliveries=3,
        workers=len(SOAK_MODES),
        seed=p.seed,
        payload=lambda key, n: {"work_ms": rng.choice((0, 1, 5))},
    )
    fleet = Fleet(lab.target, folder, shards, modes=SOAK_MODES).start()
    pause_s = lab.target.lease_ms / 1000 / 3
    ends = time.monotonic() + p.soak_minutes * 60
    pauses = 0
    try:
        while fleet.alive() and time.monotonic() < ends:
            time.sleep(rng.uniform(0.5, 3.0))
            busy = fleet.busy()
            if not busy:
                continue
            index = rng.choice(busy)
            if rng.random() < 0.5:
                fleet.kill(index)
            else:
                fleet.signal(index, signal.SIGSTOP)
                time.sleep(rng.uniform(0.05, pause_s))
                fleet.signal(index, signal.SIGCONT)
                pauses += 1
        # What is still running when the time is up finishes its deliveries.
        fleet.wait(p.soak_minutes * 60 + 600)
    finally:
        fleet.terminate()
    out = finish(lab.target, folder, keys, heal_cap_s=p.heal_cap_s)
    out.notes.update(kills=fleet.kills, pauses=pauses)
    return out
