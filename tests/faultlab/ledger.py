"""An append-only ledger of what workers did, and the figures counted from it.

Each event is one JSON line written with one ``os.write`` on a file opened
with ``O_APPEND``: once the call returns, the line is in the kernel's page
cache, so a worker killed with SIGKILL right after loses nothing it recorded.

Events (``e``):
    run   the function body started (``n``: the nonce this execution returns)
    done  the body completed and is about to return its result
    got   a caller got a result (``own``: this call's own body made it;
          ``ack``, on own results: the store acknowledged storing it; ``ms``: how long
          the call took)
    err   a call raised (``kind``: in_progress, store, failed, other; ``ms``:
          how long the call took)
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def now_ms() -> int:
    """Wall-clock milliseconds (shared by every process on this host)."""
    return time.time_ns() // 1_000_000


class Ledger:
    """One process's ledger file, appended to event by event."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        line = {"e": event, "t": now_ms(), "src": self.source, **fields}
        os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Every event of every ledger in ``folder``, oldest first."""
    events: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # never torn (one write per line); be safe anyway
                continue
    events.sort(key=lambda ev: ev["t"])
    return events


@dataclass
class Tally:
    """The figures of one run of one scenario on one target.

    Attributes:
        keys: Keys in the run.
        calls: Calls made (deliveries, the heal phase and the check phase).
        executions: Function bodies that ran to completion.
        duplicates: Keys whose body ran to completion more than once.
        lost_outcomes: Completed bodies whose result was never stored: no
            replay ever got it and it is not the final one (the work was done,
            its result lost, and the key ran again).
        stale_replays: Calls that did not run the body and got a result other
            than the one finally stored.
        failed_closed: Calls that raised a store error without running the body.
        in_progress: Calls answered "in progress" (retried later).
        stuck_s: After the fault, the longest a retry of a key could not run.
        time_to_error_ms: The longest a call took to raise a store error.
        unresolved: Keys that neither ran nor replayed by the end of the heal phase.
        notes: What else the scenario saw (e.g. claims lost in a failover).
    """

    keys: int = 0
    calls: int = 0
    executions: int = 0
    duplicates: int = 0
    lost_outcomes: int = 0
    stale_replays: int = 0
    failed_closed: int = 0
    in_progress: int = 0
    stuck_s: float = 0.0
    time_to_error_ms: float | None = None
    unresolved: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tally(
    events: Iterable[Mapping[str, Any]],
    keys: Iterable[str],
    final: Mapping[str, str | None],
    stuck_s: float,
) -> Tally:
    """Count a run's figures from its events and the results finally stored.

    Args:
        events: Every ledger event of the run (workers, heal and check phases).
        keys: The run's keys.
        final: Per key, the nonce the store replays at the end (None: nothing
            could be read, the key is unresolved).
        stuck_s: The heal phase's longest wait (see :class:`Tally`).
    """
    keys = list(keys)
    done: dict[str, list[str]] = defaultdict(list)
    replayed: set[str] = set()  # every result some replay got: stored at that time
    out = Tally(keys=len(keys), stuck_s=round(stuck_s, 3))
    error_ms: list[float] = []
    for ev in events:
        kind = ev["e"]
        if kind == "done":
            done[ev["k"]].append(ev["n"])
        elif kind == "got":
            out.calls += 1
            stored = final.get(ev["k"])
            if not ev["own"]:
                replayed.add(ev["n"])
                if stored is not None and ev["n"] != stored:
                    out.stale_replays += 1
        elif kind == "err":
            out.calls += 1
            if ev["kind"] == "store":
                out.failed_closed += 1
                error_ms.append(float(ev["ms"]))
            elif ev["kind"] == "in_progress":
                out.in_progress += 1
    for key in keys:
        runs = done.get(key, [])
        out.executions += len(runs)
        if len(runs) > 1:
            out.duplicates += 1
        stored = final.get(key)
        if stored is None:
            out.unresolved += 1
        if stored is not None:
            out.lost_outcomes += sum(1 for n in runs if n != stored and n not in replayed)
    if error_ms:
        out.time_to_error_ms = round(max(error_ms), 1)
        out.notes["median_time_to_error_ms"] = round(statistics.median(error_ms), 1)
    return out


def combine(total: Tally, one: Tally) -> Tally:
    """Sum two runs' figures (counts add up; times keep the worst; lists of notes join)."""
    for f in fields(Tally):
        a, b = getattr(total, f.name), getattr(one, f.name)
        if f.name in ("stuck_s", "time_to_error_ms"):
            values = [v for v in (a, b) if v is not None]
            setattr(total, f.name, max(values) if values else None)
        elif f.name == "notes":
            for k, v in b.items():
                if isinstance(v, (int, float)) and isinstance(a.get(k, 0), (int, float)):
                    a[k] = a.get(k, 0) + v
                elif isinstance(v, list) and isinstance(a.get(k, []), list):
                    a[k] = a.get(k, []) + v  # one entry per run (e.g. a duration)
                else:
                    a[k] = v
        else:
            setattr(total, f.name, a + b)
    return total
