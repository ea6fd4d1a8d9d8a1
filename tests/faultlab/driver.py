"""Drive a run: worker processes over a plan of deliveries, then heal and check.

A run's life:

1. **load**: :class:`Fleet` starts one worker process per shard of the plan;
   the scenario injects its fault meanwhile (kills, pauses, server restarts).
2. **heal**: once the fleet is done, this process retries every key until it
   runs or replays (the redelivery a queue would make), and notes how long
   the slowest key could not (the stuck time).
3. **check**: every key is called once more; what it replays is the result
   finally stored, which the ledger's figures are counted against.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultlab.ledger import Ledger, Tally, read_events, tally
from faultlab.targets import Caller, Target

TESTS = Path(__file__).resolve().parent.parent

Delivery = tuple[str, int, dict[str, Any]]


def concluded(folder: Path) -> int:
    """Deliveries the workers have concluded (a result or an error) so far."""
    return sum(
        1 for ev in read_events(folder) if ev["e"] in ("got", "err") and ev["src"].startswith("w")
    )


def make_keys(run_id: str, count: int) -> list[str]:
    return [f"{run_id}:{i:05d}" for i in range(count)]


def spread(
    keys: list[str],
    *,
    deliveries: int,
    workers: int,
    seed: int,
    payload: Callable[[str, int], dict[str, Any]] | None = None,
) -> list[list[Delivery]]:
    """Deliver each key ``deliveries`` times, to different workers where it can, in random order.

    Args:
        payload: ``payload(key, n)`` gives the n-th delivery's extra fields.
    """
    rng = random.Random(seed)
    shards: list[list[Delivery]] = [[] for _ in range(workers)]
    delivery_id = 0
    for key in keys:
        first = rng.randrange(workers)
        for n in range(deliveries):
            fields = payload(key, n) if payload is not None else {}
            shards[(first + n) % workers].append((key, delivery_id, fields))
            delivery_id += 1
    for shard in shards:
        rng.shuffle(shard)
    return shards


def start_load(
    target: Target, folder: Path, keys: list[str], *, deliveries: int, workers: int, seed: int,
    work_ms: int,
) -> Fleet:  # fmt: skip
    """Start workers delivering every key ``deliveries`` times, each body working ``work_ms``."""
    shards = spread(
        keys,
        deliveries=deliveries,
        workers=workers,
        seed=seed,
        payload=lambda key, n: {"work_ms": work_ms},
    )
    return Fleet(target, folder, shards).start()


@dataclass
class Fleet:
    """Worker processes, one per shard; each can be killed, paused and restarted.

    Attributes:
        targets: Optional, one target per shard (e.g. a host whose clock is
            skewed); ``target`` for every shard when None.
        gates: Optional, one path (or None) per shard: that worker makes no
            delivery until the driver creates the file (see :meth:`open_gate`).
    """

    target: Target
    folder: Path
    shards: list[list[Delivery]]
    threads: int = 1
    modes: list[str] | None = None  # per shard: sync (default), async or batch
    targets: list[Target] | None = None
    gates: list[Path | None] | None = None
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    incarnations: dict[int, int] = field(default_factory=dict)
    kills: int = 0

    def start(self) -> Fleet:
        self.folder.mkdir(parents=True, exist_ok=True)
        for index in range(len(self.shards)):
            self._spawn(index, self.shards[index])
        return self

    def _spawn(self, index: int, deliveries: list[Delivery]) -> None:
        n = self.incarnations.get(index, -1) + 1
        self.incarnations[index] = n
        name = f"w{index}.{n}"
        target = self.targets[index] if self.targets is not None else self.target
        gate = self.gates[index] if self.gates is not None else None
        job = {
            "target": target.as_dict(),
            "gate": None if gate is None else str(gate),
            "worker": name,
            "ledger": str(self.folder / f"{name}.jsonl"),
            "deliveries": [list(item) for item in deliveries],
            "threads": self.threads,
            "mode": "sync" if self.modes is None else self.modes[index],
        }
        job_path = self.folder / f"{name}.job.json"
        job_path.write_text(json.dumps(job))
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), path]))}
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "faultlab.worker", str(job_path)],
            env=env,
            stdout=log,
            stderr=log,
        )
        log.close()

    @staticmethod
    def open_gate(gate: Path) -> None:
        """Let the workers waiting on ``gate`` start their deliveries."""
        gate.touch()

    def remaining(self, index: int) -> list[Delivery]:
        """The shard's deliveries that no incarnation of the worker concluded."""
        concluded: set[int] = set()
        for ev in read_events(self.folder):
            if ev["src"].startswith(f"w{index}.") and ev["e"] in ("got", "err"):
                concluded.add(ev["d"])
        return [item for item in self.shards[index] if item[1] not in concluded]

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def signal(self, index: int, sig: int) -> None:
        proc = self.procs[index]
        if proc.poll() is None:
            proc.send_signal(sig)

    def kill(self, index: int) -> str | None:
        """SIGKILL the worker, then start it again on what it had not concluded.

        Returns:
            The key the worker was delivering when it died (None: it had
            finished, or had not started its first delivery).
        """
        proc = self.procs[index]
        if proc.poll() is not None:
            return None
        delivering = index in self.busy()
        proc.kill()
        proc.wait()
        self.kills += 1
        rest = self.remaining(index)
        if rest:
            self._spawn(index, rest)
        # A sync worker delivers in order: the first delivery it had not
        # concluded is the one it was on (or about to begin).
        return rest[0][0] if rest and delivering else None

    def busy(self) -> list[int]:
        """The live workers already delivering (their current process wrote to its ledger)."""
        out = []
        for index in self.alive():
            ledger = self.folder / f"w{index}.{self.incarnations[index]}.jsonl"
            if ledger.exists() and ledger.stat().st_size > 0:
                out.append(index)
        return out

    def stopped(self, index: int) -> bool:
        """Whether the worker is stopped (it sent itself SIGSTOP)."""
        try:
            stat = Path(f"/proc/{self.procs[index].pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            left = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                self.terminate()
                raise RuntimeError(f"workers still running after {timeout_s} s") from None
        failed = [i for i, p in self.procs.items() if p.returncode not in (0, -9)]
        if failed:
            logs = [(self.folder / f"w{i}.{self.incarnations[i]}.log").read_text() for i in failed]
            raise RuntimeError(f"workers {failed} failed: {logs[0][-2000:]}")

    def terminate(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def affected_first(folder: Path, keys: list[str]) -> list[str]:
    """``keys``, those the load phase left unsettled first (an error, or no result at all).

    The heal phase retries them first, so that the stuck time it measures is
    counted from the end of the fault, not from wherever the key fell in line.
    """
    settled: set[str] = set()
    troubled: set[str] = set()
    for ev in read_events(folder):
        if ev["e"] == "got":
            settled.add(ev["k"])
        elif ev["e"] == "err":
            troubled.add(ev["k"])
    first = [k for k in keys if k in troubled or k not in settled]
    return first + [k for k in keys if k not in set(first)]


def heal(
    target: Target, folder: Path, keys: list[str], *, cap_s: float, poll_s: float = 0.05
) -> tuple[dict[str, str], float]:
    """Retry every key until it runs or replays (at most ``cap_s``).

    Returns:
        The nonce each key gave, and the stuck time: the longest any key kept
        failing, from its first failed retry here to its first success
        (``cap_s`` when some key was still stuck at the end).
    """
    ledger = Ledger(folder / "heal.jsonl", "heal")
    caller = Caller(target, ledger)
    pending = affected_first(folder, keys)
    got: dict[str, str] = {}
    first_failure: dict[str, float] = {}
    stuck = 0.0
    started = time.monotonic()
    while pending:
        still = []
        for key in pending:
            outcome = caller.call(key, phase="heal")
            now = time.monotonic()
            if outcome.nonce is None:
                first_failure.setdefault(key, now)
                still.append(key)
            else:
                got[key] = outcome.nonce
                if key in first_failure:
                    stuck = max(stuck, now - first_failure[key])
        pending = still
        if pending:
            if time.monotonic() - started >= cap_s:
                stuck = cap_s
                break
            time.sleep(poll_s)
    ledger.close()
    return got, stuck


def check(target: Target, folder: Path, keys: list[str]) -> dict[str, str | None]:
    """Call every key once more: what each replays is the result finally stored."""
    ledger = Ledger(folder / "check.jsonl", "check")
    caller = Caller(target, ledger)
    final: dict[str, str | None] = {}
    for key in keys:
        final[key] = caller.call(key, phase="check").nonce
    ledger.close()
    return final


def finish(
    target: Target, folder: Path, keys: list[str], *, heal_cap_s: float, stuck_s: float = 0.0
) -> Tally:
    """Heal, check and count a run whose load phase is over.

    Args:
        stuck_s: The stuck time measured during the load phase (a
            :class:`Prober`'s), kept when longer than the heal phase's.
    """
    _, healed = heal(target, folder, keys, cap_s=heal_cap_s)
    final = check(target, folder, keys)
    return tally(read_events(folder), keys, final, max(stuck_s, healed))


class Prober:
    """Right after a fault, retry the key it hit until it runs or replays; time how long.

    Each probe runs on a thread of its own in this process (a redelivery that
    comes at once), so the load phase goes on meanwhile.
    """

    def __init__(self, target: Target, folder: Path, cap_s: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._caller = Caller(target, Ledger(folder / "probe.jsonl", "probe"))
        self._cap_s = cap_s
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stuck_s = 0.0
        self.probes = 0

    def probe(self, key: str, since: float) -> None:
        """Retry ``key`` from now on; ``since`` (``time.monotonic()``) is when the fault hit."""

        def run() -> None:
            while True:
                outcome = self._caller.call(key, phase="probe")
                waited = time.monotonic() - since
                if outcome.nonce is not None or waited >= self._cap_s:
                    with self._lock:
                        self.stuck_s = max(self.stuck_s, min(waited, self._cap_s))
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.probes += 1
        self._threads.append(thread)

    def join(self) -> float:
        """Wait for every probe; the longest any key could not run (seconds)."""
        for thread in self._threads:
            thread.join(self._cap_s + 60)
        return round(self.stuck_s, 3)
