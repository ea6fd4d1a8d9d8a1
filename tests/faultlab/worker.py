"""A worker process: ``python -m faultlab.worker JOB.json``.

The job names the target, the ledger file and the deliveries to make, in
order: ``[key, delivery id, payload fields]``. Each delivery is one call; what
it gave goes to the ledger (a delivery answered "in progress" or with a store
error is not retried here: the driver's heal phase plays the redelivery).
``mode``: ``sync`` (default; with ``threads`` > 1 the deliveries are shared
among that many threads), ``async`` (onceonly's asyncio decorator, many
deliveries at once) or ``batch`` (``process_batch``, ten records a batch).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from faultlab.ledger import Ledger
from faultlab.targets import Caller, Target


def main(job_path: str) -> int:
    job: dict[str, Any] = json.loads(Path(job_path).read_text())
    target = Target(**job["target"])
    ledger = Ledger(Path(job["ledger"]), job["worker"])
    caller = Caller(target, ledger)
    deliveries = job["deliveries"]
    mode = job.get("mode", "sync")

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
