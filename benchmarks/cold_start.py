"""Cold start: the wall time of importing onceonly beside Powertools' idempotency utility.

Run: .venv/bin/python benchmarks/cold_start.py [--runs 20] [--importtime]
(``bash scripts/bench cold_start`` installs Powertools first).

Each command runs in a fresh interpreter (``python -c ...``, the same flags and
environment for all), ``--runs`` times, interleaved: every run starts each
command once, in a rotated order, so drift hits them alike; the first run of
each, not counted, writes its bytecode cache (``__pycache__``) even where
PYTHONDONTWRITEBYTECODE is set, as ``pip install`` does. Prints the median
wall time of each, the goal row as the issue poses it (the wall time of the
whole command, interpreter start included: ``import onceonly,
onceonly.stores.redis`` / Powertools' idempotency + Redis imports, goal <=
0.3) and the same ratio net of a bare ``python -c pass``. redis-py's own
import is a row of its own: Powertools' Redis layer imports it, onceonly's
Redis store only when a store is built.

``--importtime`` also prints the modules that cost most under ``-X importtime``
for onceonly's command (cumulative microseconds as Python reports them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

GOAL = 0.3
OURS = "import onceonly, onceonly.stores.redis"
THEIRS = (
    "import aws_lambda_powertools.utilities.idempotency, "
    "aws_lambda_powertools.utilities.idempotency.persistence.redis"
)
# A handler module as a Lambda loads it: the store built (so redis-py is
# imported; nothing connects until the first call) and one function decorated.
OURS_HANDLER = """
from onceonly import IdempotencyConfig, idempotent_function
from onceonly.stores.redis import RedisStore
store = RedisStore.from_url("redis://127.0.0.1:9")
@idempotent_function(store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id"))
def handle(order): return order
"""
THEIRS_HANDLER = """
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer
layer = CachePersistenceLayer(host="127.0.0.1", port=9)
@idempotent_function(data_keyword_argument="order", persistence_store=layer,
                     config=IdempotencyConfig(event_key_jmespath="id"))
def handle(order): return order
"""
PASS, IMPORT, IMPORT_PT, HANDLER, HANDLER_PT, REDIS = (
    "python -c pass (the interpreter alone)",
    f"onceonly: {OURS}",
    "Powertools: idempotency + persistence.redis",
    "onceonly handler module: RedisStore.from_url + idempotent_function",
    "Powertools handler module: CachePersistenceLayer + idempotent_function",
    "redis-py alone: import redis",
)
COMMANDS = {
    PASS: "pass",
    IMPORT: OURS,
    IMPORT_PT: THEIRS,
    HANDLER: OURS_HANDLER,
    HANDLER_PT: THEIRS_HANDLER,
    REDIS: "import redis",
}


# Bytecode caching on for every command, as after `pip install` (which compiles
# site-packages): with PYTHONDONTWRITEBYTECODE=1 set, onceonly from a source
# checkout would be compiled from source on every start and Powertools not.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(code: str) -> float:
    start = time.perf_counter()
    # Output dropped: Powertools' CachePersistenceLayer warns that its base is deprecated.
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    return time.perf_counter() - start


def importtime(code: str, top: int) -> list[tuple[int, str]]:
    """The ``top`` modules with the largest cumulative import time under ``-X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    )
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    names = list(COMMANDS)
    for name in names:  # warm the file cache and the .pyc files of every command
        wall(COMMANDS[name])
    samples: dict[str, list[float]] = {name: [] for name in names}
    for run in range(args.runs):
        shift = run % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(wall(COMMANDS[name]))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[names[0]]
    width = max(map(len, names))
    print(f"{args.runs} interleaved runs each, fresh interpreters, {sys.executable}")
    print(f"| {'command':{width}} | median s | net of `pass`, s |")
    print(f"|{'-' * (width + 2)}|---------:|----------------:|")
    for name in names:
        print(f"| {name:{width}} | {medians[name]:8.3f} | {medians[name] - base:15.3f} |")
    raw = medians[IMPORT] / medians[IMPORT_PT]
    net = (medians[IMPORT] - base) / (medians[IMPORT_PT] - base)
    print(
        f"goal row (wall time of the command): onceonly / Powertools = {raw:.2f}, "
        f"goal <= {GOAL:g}: {'met' if raw <= GOAL else 'NOT met'}; "
        f"net of the interpreter's own start: {net:.2f}"
    )
    handler = medians[HANDLER] / medians[HANDLER_PT]
    handler_net = (medians[HANDLER] - base) / (medians[HANDLER_PT] - base)
    print(
        f"handler modules (both import redis-py): onceonly / Powertools = {handler:.2f}, "
        f"net {handler_net:.2f}; redis-py's own import is "
        f"{(medians[REDIS] - base) / (medians[HANDLER] - base):.0%} of onceonly's net"
    )
    if args.importtime:
        print(f"\nlargest cumulative import times (us) for: {OURS}")
        for micros, module in importtime(OURS, 15):
            print(f"{micros:9d}  {module}")


if __name__ == "__main__":
    main()
