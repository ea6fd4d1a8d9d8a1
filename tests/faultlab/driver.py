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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultlab.ledger import Ledger, Tally, read_events, tally
from faultlab.targets import Caller, Target

TESTS = Path(__file__).resolve().parent.parent

Delivery = tuple[str, int, dict[str, Any]]


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

    def kill(self, index: int) -> None:
        """SIGKILL the worker, then start it again on what it had not concluded."""
        proc = self.procs[index]
        if proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self.kills += 1
        rest = self.remaining(index)
        if rest:
            self._spawn(index, rest)

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


def heal(
    target: Target, folder: Path, keys: list[str], *, cap_s: float, poll_s: float = 0.05
) -> tuple[dict[str, str], float]:
    """Retry every key until it runs or replays (at most ``cap_s``).

    Returns:
        The nonce each key gave, and the longest any key waited (``cap_s``
        when some key was still stuck at the end).
    """
    ledger = Ledger(folder / "heal.jsonl", "heal")
    caller = Caller(target, ledger)
    pending = list(keys)
    got: dict[str, str] = {}
    waited = 0.0
    started = time.monotonic()
    while pending:
        still = []
        for key in pending:
            outcome = caller.call(key, phase="heal")
            if outcome.nonce is None:
                still.append(key)
            else:
                got[key] = outcome.nonce
                waited = max(waited, time.monotonic() - started)
        pending = still
        if pending:
            if time.monotonic() - started >= cap_s:
                waited = cap_s
                break
            time.sleep(poll_s)
    ledger.close()
    return got, waited


def check(target: Target, folder: Path, keys: list[str]) -> dict[str, str | None]:
    """Call every key once more: what each replays is the result finally stored."""
    ledger = Ledger(folder / "check.jsonl", "check")
    caller = Caller(target, ledger)
    final: dict[str, str | None] = {}
    for key in keys:
        final[key] = caller.call(key, phase="check").nonce
    ledger.close()
    return final


def finish(target: Target, folder: Path, keys: list[str], *, heal_cap_s: float) -> Tally:
    """Heal, check and count a run whose load phase is over."""
    _, stuck = heal(target, folder, keys, cap_s=heal_cap_s)
    final = check(target, folder, keys)
    return tally(read_events(folder), keys, final, stuck)
