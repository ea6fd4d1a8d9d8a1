"""Reliability in figures: every fault scenario against every target, onceonly beside Powertools.

Run: bash scripts/bench faults [--scenario NAME ...] [--target NAME ...] [--runs N]
     [--keys N] [--seed N] [--engine redis|valkey] [--json PATH] [--plot PATH]
     bash scripts/bench faults --list
     bash scripts/bench faults --from-json PATH [PATH...] [--json OUT] [--plot PNG]
         (the tables and plot of saved runs again, merged; a later file's cell wins)

Each (scenario, target) cell starts the target's servers afresh (Redis with the
named persistence, a replica, Sentinel, a cluster, moto's DynamoDB server in
its own process, an SQLite file) on loopback ports in a temporary folder, runs
the scenario ``--runs`` times with seeds ``--seed``, ``--seed + 1``..., and
prints what the ledgers counted: duplicate executions, lost outcomes, stale
replays, stuck seconds, calls that failed closed and the time they took. It
prints and plots; it asserts nothing (``tests/faults`` asserts the guarantees).
The drivers live in ``tests/faultlab``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import redis_harness as harness  # noqa: E402
from faultlab import matrix  # noqa: E402
from faultlab.catalog import SCENARIOS, Params  # noqa: E402
from faultlab.lab import TARGETS  # noqa: E402


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through every lab's finally: servers, moto and workers stop.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="*", help="default: all")
    parser.add_argument("--target", nargs="*", help="default: all")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keys", type=int, default=Params.keys)
    parser.add_argument("--kills", type=int, default=Params.kills)
    parser.add_argument("--late-keys", type=int, default=Params.late_keys)
    parser.add_argument("--soak-keys", type=int, default=Params.soak_keys)
    parser.add_argument("--soak-minutes", type=float, default=Params.soak_minutes)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=["redis", "valkey"], default="redis")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--plot", type=Path, help="write the PNG plot here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print and plot saved runs")
    parser.add_argument("--list", action="store_true", help="list scenarios and targets")
    args = parser.parse_args()

    if args.list:
        for name, spec in SCENARIOS.items():
            print(f"{name:28} {spec.title}")
        print()
        for name in TARGETS:
            print(name)
        return 0
    if args.from_json:
        results = matrix.merge([json.loads(path.read_text()) for path in args.from_json])
        if args.json:
            matrix.save(results, args.json)
    else:
        scenarios = matrix.scenarios_named(args.scenario)
        targets = matrix.targets_named(args.target)
        engines = {e.name: e for e in harness.engines_or_fail()}
        if args.engine not in engines:
            print(f"no {args.engine} server here (found: {', '.join(engines)})", file=sys.stderr)
            return 1
        engine = engines[args.engine]
        params = Params(
            seed=args.seed,
            keys=args.keys,
            kills=args.kills,
            late_keys=args.late_keys,
            soak_keys=args.soak_keys,
            soak_minutes=args.soak_minutes,
        )
        print(f"{engine.name} {engine.version}; {args.runs} run(s) per cell; {params}")

        def progress(cell: matrix.Cell) -> None:
            text = matrix.cell_text(None if cell.tally is None else cell.tally.as_dict())
            extra = f" ({cell.reason})" if cell.reason else ""
            print(f"{cell.scenario:28} {cell.target:32} {text}{extra}", flush=True)

        cells = matrix.run_matrix(scenarios, targets, engine, params, args.runs, progress)
        results = matrix.to_json(cells, engine, params)
        if args.json:
            matrix.save(results, args.json)
    print()
    print(matrix.markdown(results))
    if args.plot:
        matrix.plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
