"""moto's DynamoDB server in a process of its own: ``python -m faultlab.moto_process``.

It prints its URL on the first line and serves until killed, so a scenario
can kill it, stop it (SIGSTOP) and let it go on. Requests are applied one at
a time, as :class:`dynamodb_harness.MotoServer` does, for DynamoDB's
per-item atomicity.
"""

from __future__ import annotations

import sys
import threading

from dynamodb_harness import MotoServer


def main() -> int:
    server = MotoServer()
    print(server.url, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
