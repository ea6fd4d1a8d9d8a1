"""The scenarios: each runs one fault against one lab and returns the run's :class:`Tally`.

Every scenario is bounded (a fixed number of keys, deliveries and faults) and
reproducible from its seed (which keys, which worker, when a fault lands).
``SCENARIOS`` maps each name to what it does and the targets it applies to;
the other modules of this package add theirs to it.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faultlab.driver import Fleet, Prober, finish, make_keys, spread
from faultlab.lab import Lab
from faultlab.ledger import Ledger, Tally, read_events
from faultlab.targets import ONCEONLY, Caller


@dataclass(frozen=True)
class Params:
    """How big a run is.

    Attributes:
        seed: Seeds every random choice of the run.
        keys: Keys per run (the SIGKILL storm delivers each ``deliveries`` times).
        deliveries: Deliveries per key.
        workers: Worker processes.
        kills: SIGKILLs in the storm.
        late_keys: Keys of the paused / slow worker scenarios (one at a time).
        heal_cap_s: The longest the heal phase retries a key.
        soak_keys: Keys of each round of the soak (each delivered three times).
        soak_minutes: How long the soak injects faults.
    """

    seed: int = 1
    keys: int = 1_000
    deliveries: int = 4
    workers: int = 4
    kills: int = 20
    late_keys: int = 8
    heal_cap_s: float = 30.0
    soak_keys: int = 5_000
    soak_minutes: float = 5.0


@dataclass(frozen=True)
class Scenario:
    """A named fault, the targets it applies to, and why it does not apply to the others."""

    name: str
    title: str
    run: Callable[[Lab, Params], Tally]
    applies: Callable[[str], bool]
    not_applicable: str = ""
    lease_ms: int = 2_000


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    title: str,
    *,
    applies: Callable[[str], bool] = lambda target: True,
    not_applicable: str = "",
    lease_ms: int = 2_000,
) -> Callable[[Callable[[Lab, Params], Tally]], Callable[[Lab, Params], Tally]]:
    """Register a scenario function under ``name``."""

    def register(run: Callable[[Lab, Params], Tally]) -> Callable[[Lab, Params], Tally]:
        SCENARIOS[name] = Scenario(name, title, run, applies, not_applicable, lease_ms)
        return run

    return register


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def started(folder: Path, key: str, source_prefix: str) -> bool:
    """Whether a body of ``key`` started in a worker whose name starts with ``source_prefix``."""
    return any(
        ev["e"] == "run" and ev["k"] == key and ev["src"].startswith(source_prefix)
        for ev in read_events(folder)
    )


# -- SIGKILL storm -------------------------------------------------------------------


@scenario("kill-storm", "Workers SIGKILLed at random points (1 000 keys x 4 deliveries)")
def kill_storm(lab: Lab, p: Params) -> Tally:
    """Four workers deliver every key four times while one of them is SIGKILLed now and then.

    A killed worker is started again on the deliveries it had not concluded
    (the in-flight one is delivered again, as a queue would).
    """
    rng = random.Random(p.seed)
    folder = lab.folder / "ledger"
    keys = make_keys(run_id(), p.keys)
    shards = spread(
        keys,
        deliveries=p.deliveries,
        workers=p.workers,
        seed=p.seed,
        payload=lambda key, n: {"work_ms": 1},
    )
    fleet = Fleet(lab.target, folder, shards).start()
    prober = Prober(lab.target, folder, p.heal_cap_s)
    try:
        while fleet.kills < p.kills and fleet.alive():
            time.sleep(rng.uniform(0.2, 0.6))
            # Only a worker already delivering: one still importing would die
            # without a call to interrupt.
            busy = fleet.busy()
            if busy:
                hit = fleet.kill(rng.choice(busy))
                if hit is not None:
                    prober.probe(hit, time.monotonic())
        fleet.wait(300)
    finally:
        fleet.terminate()
    stuck = prober.join()
    out = finish(lab.target, folder, keys, heal_cap_s=p.heal_cap_s, stuck_s=stuck)
    out.notes.update(kills=fleet.kills, kills_mid_call=prober.probes)
    return out


# -- a worker paused past its lease, a function slower than its lease -----------------


def _late(lab: Lab, p: Params, *, pause: bool) -> Tally:
    """One worker runs each key late; meanwhile, after the lease, a redelivery comes.

    ``pause``: the worker's process stops itself in the body (SIGSTOP) and is
    let go on (SIGCONT) once the redelivery has taken the key over and a
    further delivery has replayed it. Otherwise the body simply takes 1.6
    leases, and the redelivery comes when the lease alone would have ended.
    """
    folder = lab.folder / "ledger"
    folder.mkdir(parents=True, exist_ok=True)
    keys = make_keys(run_id(), p.late_keys)
    lease_s = lab.target.lease_ms / 1000
    payload = {"pause": True} if pause else {"work_ms": int(lab.target.lease_ms * 1.6)}
    shards = [[(key, n, payload) for n, key in enumerate(keys)]]
    here = Caller(lab.target, Ledger(folder / "redelivery.jsonl", "redelivery"))
    fleet = Fleet(lab.target, folder, shards).start()
    try:
        for n, key in enumerate(keys):
            wait_for(lambda key=key: started(folder, key, "w0."), f"the body of {key}")
            if pause:
                wait_for(lambda: fleet.stopped(0), "the worker to stop")
            time.sleep(lease_s + 0.3)
            here.call(key, phase="load", delivery=10_000 + n)  # the redelivery
            here.call(key, phase="load", delivery=20_000 + n)  # and one more
            if pause:
                fleet.signal(0, signal.SIGCONT)
        fleet.wait(120)
    finally:
        fleet.terminate()
    return finish(lab.target, folder, keys, heal_cap_s=p.heal_cap_s)


def _heartbeat_runs(target: str) -> bool:
    return target.startswith(ONCEONLY)


@scenario(
    "paused-worker",
    "A worker paused (SIGSTOP) past its lease, then let go on (SIGCONT)",
    lease_ms=1_000,
)
def paused_worker(lab: Lab, p: Params) -> Tally:
    return _late(lab, p, pause=True)


@scenario(
    "paused-worker-heartbeat",
    "The same, with onceonly's heartbeat on",
    applies=_heartbeat_runs,
    not_applicable="Powertools has no heartbeat",
    lease_ms=1_000,
)
def paused_worker_heartbeat(lab: Lab, p: Params) -> Tally:
    return _late(lab.with_heartbeat(), p, pause=True)


@scenario("slow-function", "A function that runs 1.6 leases", lease_ms=1_000)
def slow_function(lab: Lab, p: Params) -> Tally:
    return _late(lab, p, pause=False)


@scenario(
    "slow-function-heartbeat",
    "The same, with onceonly's heartbeat on",
    applies=_heartbeat_runs,
    not_applicable="Powertools has no heartbeat",
    lease_ms=1_000,
)
def slow_function_heartbeat(lab: Lab, p: Params) -> Tally:
    return _late(lab.with_heartbeat(), p, pause=False)
