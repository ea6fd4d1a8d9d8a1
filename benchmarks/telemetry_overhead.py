"""What OpenTelemetry costs an idempotent call, and what its absence costs.

Run: .venv/bin/python benchmarks/telemetry_overhead.py [--rounds 5] [--n 20000]
(``bash scripts/bench telemetry_overhead`` installs the OpenTelemetry API and SDK).

onceonly traces its calls once the program has imported ``opentelemetry.trace``,
so each mode runs in a fresh interpreter (the import is for the whole process):

- ``absent``: OpenTelemetry never imported (the extra not installed, or unused);
- ``api only``: ``opentelemetry.trace`` imported, no SDK: spans are no-ops;
- ``sdk``: the SDK's tracer provider with a batch span processor whose exporter
  drops what it gets, and a meter provider with an in-memory reader.

Each interpreter times a first execution (a new key each call) and a duplicate
(the same key) of one function on ``MemoryStore``, the store with the least
work of its own, so the overhead shows at its largest. Rounds are interleaved
(every round starts each mode once); medians are printed with each mode's ratio
to ``absent``. The ``absent`` interpreter also times the only work absence adds
to a call (the watcher's lookup of ``opentelemetry.trace`` in ``sys.modules``),
and prints it beside the duplicate's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODES = ("absent", "api only", "sdk")

CHILD = r"""
import json, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "api only":
    import opentelemetry.trace
elif mode == "sdk":
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))

from onceonly import idempotent_function
from onceonly.stores import MemoryStore

@idempotent_function(data="order", store=MemoryStore())
def charge(order):
    return order

for i in range(2000):  # warm up both paths
    charge(order=-1 - i)
    charge(order=-1)
started = time.perf_counter()
for i in range(n):
    charge(order=i)
first = (time.perf_counter() - started) / n
started = time.perf_counter()
for _ in range(n):
    charge(order=0)
duplicate = (time.perf_counter() - started) / n
lookup = None
if mode == "absent":
    watcher = charge.guard.watcher
    started = time.perf_counter()
    for _ in range(n):
        watcher.watch(None)
    lookup = (time.perf_counter() - started) / n
    assert watcher.telemetry is None
    assert not any(name.startswith("opentelemetry") for name in sys.modules)
else:
    assert charge.guard.watcher.telemetry is not None
print(json.dumps({"first": first, "duplicate": duplicate, "lookup": lookup}))
"""


def run(mode: str, n: int) -> dict[str, float]:
    """One fresh interpreter in ``mode``: seconds per call, as it measured them."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(n)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        sys.exit(f"the {mode!r} run failed: {done.stderr.strip().splitlines()[-1]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20_000, help="calls per timed loop")
    options = parser.parse_args()
    if options.rounds < 1 or options.n < 1:
        parser.error("--rounds and --n must be at least 1")
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(options.rounds):
        for mode in MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]:
            samples[mode].append(run(mode, options.n))

    def median(mode: str, what: str) -> float:
        return statistics.median(sample[what] for sample in samples[mode])

    print(f"MemoryStore, {options.n} calls per loop, median of {options.rounds} interleaved rounds")
    print(f"{'mode':<10} {'first µs':>9} {'ratio':>6} {'duplicate µs':>13} {'ratio':>6}")
    for mode in MODES:
        first, duplicate = median(mode, "first"), median(mode, "duplicate")
        print(
            f"{mode:<10} {first * 1e6:>9.2f} {first / median('absent', 'first'):>6.2f}"
            f" {duplicate * 1e6:>13.2f} {duplicate / median('absent', 'duplicate'):>6.2f}"
        )
    lookup = statistics.median(s["lookup"] for s in samples["absent"])
    share = lookup / median("absent", "duplicate")
    print(
        f"absent: the watcher's lookup alone {lookup * 1e9:.0f} ns per call,"
        f" {share:.1%} of a duplicate"
    )


if __name__ == "__main__":
    main()
