"""A worker process: ``python -m faultlab.worker JOB.json``.

The job names the target, the ledger file and the deliveries to make, in
order: ``[key, delivery id, payload fields]``. Each delivery is one call; what
it gave goes to the ledger (a delivery answered "in progress" or with a store
error is not retried here: the driver's heal phase plays the redelivery).
``mode``: ``sync`` (default; with ``threads`` > 1 the deliveries are shared
among that many threads), ``async`` (onceonly's asyncio decorator, many
deliveries at once) or ``batch`` (``process_batch``, ten records a batch).
With a ``gate`` (a path) the worker builds its function, then waits for that
file to exist before its first delivery (so a delivery can be timed without
the process start in the way).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from faultlab.ledger import Ledger
from faultlab.targets import Caller, Target

GATE_TIMEOUT_S = 120.0


def main(job_path: str) -> int:
    job: dict[str, Any] = json.loads(Path(job_path).read_text())
    target = Target(**job["target"])
    ledger = Ledger(Path(job["ledger"]), job["worker"])
    caller = Caller(target, ledger)
    deliveries = job["deliveries"]
    mode = job.get("mode", "sync")
    gate = job.get("gate")
    if gate:
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gate {gate} was not opened in {GATE_TIMEOUT_S} s")
            time.sleep(0.005)

    def deliver(item: list[Any]) -> None:
        key, delivery, payload = item
        caller.call(key, phase="load", delivery=delivery, **payload)

    threads = int(job.get("threads", 1))
    if mode == "async":
        from faultlab.modes import run_async

        run_async(caller, deliveries)
    elif mode == "batch":
        from faultlab.modes import run_batch

        run_batch(caller, deliveries)
    elif threads <= 1:
        for item in deliveries:
            deliver(item)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(deliver, deliveries))
    ledger.write("exit")
    ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
