"""Server faults: the store's server killed (SIGKILL, SIGTERM) and restarted, or frozen (SIGSTOP).

Workers deliver every key twice while the fault lands; the fault lands once
a seeded share of the deliveries has concluded (read from the ledgers, not
guessed from a clock). A killed server is started again in the same folder
on the same port, so it reloads its append-only file; a frozen one is let go
on (SIGCONT) after :data:`FREEZE_TIMEOUTS` client timeouts. The heal phase
then plays the redelivery, and the check phase reads what each key replays.

Besides the :class:`~faultlab.ledger.Tally`, each run notes what the ledgers
tell about acknowledgement (a ``got`` event's ``ack``): an own result the
store acknowledged and later replayed differently is an acknowledged outcome
lost; an own result the store did not acknowledge (the server was down at
completion) keeps its claim until the lease ends, and its key may run again.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from faultlab.driver import Fleet, check, concluded, heal, make_keys, start_load
from faultlab.lab import Lab
from faultlab.ledger import Tally, read_events, tally
from faultlab.scenarios import Params, run_id, scenario, wait_for

DELIVERIES = 2  # each key twice: the second delivery replays, or meets the fault
WORK_MS = 1  # each body's work: enough for faults to land inside bodies as well
FREEZE_TIMEOUTS = 3  # a frozen server stays stopped this many client timeouts
RESTART_DELAY_S = (0.05, 0.5)  # a killed server comes back after a seeded delay in this range
FAULT_AT = (0.2, 0.6)  # the fault lands once this (seeded) share of deliveries has concluded

RESTARTABLE = frozenset(
    {
        "onceonly/redis-aof-everysec",
        "onceonly/redis-aof-always",
        "onceonly/redis-wait1",
        "powertools/redis-aof-everysec",
        "powertools/redis-aof-always",
    }
)
FREEZABLE = RESTARTABLE | {"onceonly/dynamodb", "powertools/dynamodb", "onceonly/sqlite"}

NOT_RESTARTABLE = (
    "standalone Redis only: SQLite has no server (the kill storm covers the process); "
    "moto keeps DynamoDB in memory, so its restart says nothing about DynamoDB; "
    "Sentinel and cluster: the failover scenarios cover a lost primary"
)
NOT_FREEZABLE = "Sentinel and cluster: a primary that stops answering is the failover scenarios'"


# -- what the ledgers tell about acknowledgement ----------------------------------------


def acknowledgement(
    events: Iterable[Mapping[str, Any]], final: Mapping[str, str | None]
) -> dict[str, int]:
    """Count own results by whether the store acknowledged them, and what became of them.

    Returns:
        ``acked``: own results the store acknowledged; ``acked_lost``: of
        those, the ones the key does not replay at the end (an acknowledged
        write the server lost); ``unacked``: own results handed back although
        the store did not acknowledge them; ``store_errors_after_body``: calls
        that raised a store error after their own body completed (Powertools
        raises when it cannot save the result, so its ``failed_closed`` counts
        these too although the body ran).
    """
    out = {"acked": 0, "acked_lost": 0, "unacked": 0, "store_errors_after_body": 0}
    last: dict[str, Mapping[str, Any]] = {}  # each worker's previous event (one thread each)
    for ev in events:
        kind = ev["e"]
        if kind == "got" and ev["own"]:
            if ev.get("ack"):
                out["acked"] += 1
                out["acked_lost"] += ev["n"] != final.get(ev["k"])
            else:
                out["unacked"] += 1
        elif kind == "err" and ev["kind"] == "store":
            before = last.get(ev["src"])
            if before is not None and before["e"] == "done" and before["k"] == ev["k"]:
                out["store_errors_after_body"] += 1
        last[ev["src"]] = ev
    return out


def heal_wait_s(events: Iterable[Mapping[str, Any]]) -> float:
    """The longest a key waited in the heal phase, from its first try to its result.

    The Tally's ``stuck_s`` counts from the start of the heal phase, so on a
    slow store it includes the heal's own pass over the keys before; this
    counts each key from its own first try (0 for a key that ran or replayed
    at once).
    """
    first: dict[str, int] = {}
    longest = 0
    for ev in events:
        if ev["src"] != "heal" or ev["e"] not in ("got", "err"):
            continue
        started = first.setdefault(ev["k"], ev["t"] - int(ev["ms"]))
        if ev["e"] == "got":
            longest = max(longest, ev["t"] - started)
    return round(longest / 1000, 3)


def conclude(lab: Lab, folder: Path, keys: list[str], cap_s: float) -> Tally:
    """Heal, check and count (as :func:`faultlab.driver.finish`), noting acknowledgement too."""
    _, stuck = heal(lab.target, folder, keys, cap_s=cap_s)
    final = check(lab.target, folder, keys)
    events = read_events(folder)
    out = tally(events, keys, final, stuck)
    out.notes.update(acknowledgement(events, final), heal_wait_s=heal_wait_s(events))
    return out


def heal_cap(lab: Lab, p: Params) -> float:
    """The heal phase's cap: at least a lease (an orphaned claim's) plus time to recover."""
    return max(p.heal_cap_s, lab.target.lease_ms / 1000 + 10 * lab.target.socket_timeout_s)


# -- the load and the moment the fault lands -----------------------------------------------


def load(lab: Lab, p: Params, folder: Path) -> tuple[Fleet, list[str]]:
    keys = make_keys(run_id(), p.keys)
    shape = {"deliveries": DELIVERIES, "workers": p.workers, "seed": p.seed, "work_ms": WORK_MS}
    return start_load(lab.target, folder, keys, **shape), keys


def await_share(fleet: Fleet, folder: Path, total: int, share: float) -> int:
    """Wait until ``share`` of ``total`` deliveries have concluded (or the fleet is done)."""
    goal = int(total * share)
    wait_for(
        lambda: not fleet.alive() or concluded(folder) >= goal,
        f"{goal} deliveries before the fault",
        timeout_s=120,
    )
    return concluded(folder)


# -- killed and restarted -------------------------------------------------------------------


def _restart(lab: Lab, p: Params, sig: int) -> Tally:
    """Workers deliver; the server gets ``sig`` mid-run and is started again after a delay."""
    server = lab.server
    if server is None:
        raise RuntimeError(f"{lab.target.name} has no server to restart")
    rng = random.Random(p.seed)
    share = rng.uniform(*FAULT_AT)
    delay = rng.uniform(*RESTART_DELAY_S)
    folder = lab.folder / "ledger"
    fleet, keys = load(lab, p, folder)
    try:
        at = await_share(fleet, folder, len(keys) * DELIVERIES, share)
        down = time.monotonic()
        server.kill(sig)  # waits for the process to exit
        time.sleep(delay)  # the fault's shape (seeded), not a wait for an event
        server.start()  # same folder and port: reloads the AOF; returns once it serves
        down_s = time.monotonic() - down
        fleet.wait(300)
    finally:
        fleet.terminate()
    out = conclude(lab, folder, keys, heal_cap(lab, p))
    out.notes.update(
        fault_after_deliveries=at,
        down_ms=round(down_s * 1000),
        restarted_within_budget=int(down_s < lab.target.socket_timeout_s),
    )
    return out


@scenario(
    "server-sigkill",
    "The server SIGKILLed mid-run and restarted from its AOF (1 000 keys x 2 deliveries)",
    applies=RESTARTABLE.__contains__,
    not_applicable=NOT_RESTARTABLE,
)
def server_sigkill(lab: Lab, p: Params) -> Tally:
    return _restart(lab, p, signal.SIGKILL)


@scenario(
    "server-sigterm",
    "The server shut down (SIGTERM, which flushes the AOF) mid-run and restarted",
    applies=RESTARTABLE.__contains__,
    not_applicable=NOT_RESTARTABLE,
)
def server_sigterm(lab: Lab, p: Params) -> Tally:
    return _restart(lab, p, signal.SIGTERM)


# -- frozen ---------------------------------------------------------------------------------


class _Freeze:
    """Stop the store from answering, then let it go on.

    A server process gets SIGSTOP / SIGCONT. SQLite has no server: another
    connection holds the file's write lock (``BEGIN EXCLUSIVE``) instead.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._lock: sqlite3.Connection | None = None
        self._pid: int | None = None

    def __enter__(self) -> _Freeze:
        if self.lab.target.store == "sqlite":
            self._lock = sqlite3.connect(self.lab.target.address, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")
        else:
            self._pid = self.lab.pid()
            os.kill(self._pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
        if self._pid is not None:
            os.kill(self._pid, signal.SIGCONT)


@scenario(
    "server-frozen",
    "The store frozen (SIGSTOP; SQLite: its write lock held) for 3 client timeouts, then let go",
    applies=FREEZABLE.__contains__,
    not_applicable=NOT_FREEZABLE,
)
def server_frozen(lab: Lab, p: Params) -> Tally:
    """Workers deliver; the store stops answering for a while; calls fail (or wait) meanwhile."""
    rng = random.Random(p.seed)
    share = rng.uniform(*FAULT_AT)
    freeze_s = FREEZE_TIMEOUTS * lab.target.socket_timeout_s
    folder = lab.folder / "ledger"
    fleet, keys = load(lab, p, folder)
    try:
        at = await_share(fleet, folder, len(keys) * DELIVERIES, share)
        with _Freeze(lab):
            time.sleep(freeze_s)  # the fault's length, not a wait for an event
            during = concluded(folder) - at
        fleet.wait(300)
    finally:
        fleet.terminate()
    out = conclude(lab, folder, keys, heal_cap(lab, p))
    out.notes.update(fault_after_deliveries=at, freeze_s=freeze_s, concluded_frozen=during)
    slowest = [
        ev["ms"] for ev in read_events(folder) if ev["e"] == "got" and ev["src"].startswith("w")
    ]
    if slowest:
        out.notes["slowest_result_ms"] = round(max(slowest), 1)
    return out
