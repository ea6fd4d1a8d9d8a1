"""A consumer process that kills itself (SIGKILL) at a chosen step: run by test_crashes.py.

Usage: python crash_worker.py KIND ADDRESS STREAM GROUP CONSUMER STEP
KIND: standalone | cluster | sentinel. ADDRESS: a node's port, or the
sentinels' host:port,... (``streams_support.worker_address``). STEP:
"handled" (the handler has built its effects; nothing has been sent) or
"acked" (run_once has returned: the batch was committed, every entry
acknowledged). Either way the process dies by SIGKILL, with no cleanup, as
in a crash or an OOM kill.
"""

from __future__ import annotations

import os
import signal
import sys

from streams_support import ScoreHandler, worker_client

from onceonly.streams import Effects, StreamConsumer, StreamEntry


def main() -> None:
    kind, address, stream, group, consumer, step = sys.argv[1:]
    client = worker_client(kind, address)
    prefix = stream.replace(":events", ":user:")
    board = stream.replace(":events", ":leaderboard")
    score = ScoreHandler(prefix, board)

    def handler(entry: StreamEntry) -> Effects:
        effects = score(entry)
        if step == "handled":
            os.kill(os.getpid(), signal.SIGKILL)
        return effects

    StreamConsumer(
        client, stream=stream, group=group, handler=handler, consumer=consumer, block_ms=0
    ).run_once()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
