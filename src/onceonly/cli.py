"""The ``onceonly`` command: demo, inspect, purge."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import IdempotencyError

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onceonly", description="Run code once per idempotency key."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="a payment service under at-least-once delivery, without and with onceonly",
    )
    demo.add_argument("--orders", type=_positive_int, default=1000)
    demo.add_argument("--workers", type=_positive_int, default=4)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--crash-rate", type=_rate, default=0.02, help="share of executions killed")
    demo.add_argument(
        "--store", default=None, help="store URL or SQLite path (default: a temp SQLite file)"
    )

    inspect = commands.add_parser("inspect", help="show the record under a key")
    inspect.add_argument("--store", required=True, help="store URL or SQLite path")
    inspect.add_argument("key")

    purge = commands.add_parser("purge", help="delete a key, or every expired record")
    purge.add_argument("--store", required=True, help="store URL or SQLite path")
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="delete this key whatever it holds")
    target.add_argument("--expired", action="store_true", help="delete expired records")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import render, run_demo

    print(
        f"onceonly demo: {args.orders} orders, each delivered 1-4 times to {args.workers} "
        f"workers; {args.crash_rate:.0%} of executions killed mid-way and redelivered\n",
        flush=True,
    )
    plain, guarded = run_demo(
        orders=args.orders,
        workers=args.workers,
        seed=args.seed,
        crash_rate=args.crash_rate,
        store_url=args.store,
    )
    print(render(plain, guarded))
    return 0 if guarded.exact else 1


def _inspect(args: argparse.Namespace) -> int:
    from .stores.url import store_from_url

    record = store_from_url(args.store).get(args.key)
    if record is None:
        print(f"no live record under {args.key}")
        return 1
    print(
        json.dumps(
            {
                "key": args.key,
                "status": record.status.name,
                "deadline_ms": record.deadline_ms,
                "fingerprint": record.fingerprint,
                "outcome_bytes": None if record.outcome is None else len(record.outcome),
            },
            indent=2,
        )
    )
    return 0


def _purge(args: argparse.Namespace) -> int:
    from .stores.url import store_from_url

    store = store_from_url(args.store)
    if args.key is not None:
        print("deleted" if store.delete(args.key) else "nothing under that key")
        return 0
    purge = getattr(store, "purge", None)
    if purge is None:
        print("this store expires records by itself; nothing to purge")
        return 0
    print(f"deleted {purge()} expired records")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    handlers = {"demo": _demo, "inspect": _inspect, "purge": _purge}
    try:
        return handlers[args.command](args)
    except IdempotencyError as exc:
        print(f"onceonly: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
