"""A consumer process stopped by SIGTERM in the middle of a batch: run by test_shutdown.py.

Usage: python shutdown_worker.py KIND ADDRESS STREAM GROUP FLAVOUR
KIND: standalone | cluster | sentinel. ADDRESS: a node's port, or the
sentinels' host:port,... (``streams_support.worker_address``). FLAVOUR:
sync | async. The handler of the third entry prints READY and waits until
the consumer is stopping (the test sends SIGTERM when it reads READY), then
returns its effects. run() must then return; the worker prints the
results' ids and whether SIGTERM's handler is the default again, as JSON,
and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

from streams_support import ScoreHandler, worker_client

from onceonly.streams import AsyncStreamConsumer, Effects, StreamConsumer, StreamEntry


def main() -> None:
    kind, address, stream, group, flavour = sys.argv[1:]
    score = ScoreHandler(stream.replace(":events", ":user:"), stream.replace(":events", ":lb"))
    consumer: Any = None

    def handler(entry: StreamEntry) -> Effects:
        effects = score(entry)
        if len(score.calls) == 3:
            print("READY", flush=True)
            deadline = time.monotonic() + 60
            while not consumer.stopping and time.monotonic() < deadline:
                time.sleep(0.01)
        return effects

    options: dict[str, Any] = {
        "stream": stream,
        "group": group,
        "handler": handler,
        "consumer": "worker",
        "block_ms": 100,
        "batch_size": 10,
    }
    if flavour == "sync":
        consumer = StreamConsumer(worker_client(kind, address), **options)
        consumer.run()
    else:
        aclient = worker_client(kind, address, asyncio=True)
        consumer = AsyncStreamConsumer(aclient, concurrency=1, **options)
        asyncio.run(consumer.run())
    restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print(json.dumps({"handled": score.calls, "restored": restored}), flush=True)


if __name__ == "__main__":
    main()
