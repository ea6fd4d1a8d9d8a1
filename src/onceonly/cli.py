"""The ``onceonly`` command: demo, doctor, inspect, purge, bench, dynamodb create-table."""

from __future__ import annotations

import argparse
import decimal
import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import IdempotencyConfigError, IdempotencyError

if TYPE_CHECKING:
    from .doctor import Check
    from .stores.protocol import Store

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _store_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--store",
        required=True,
        help="an existing SQLite file (PATH or sqlite:///PATH), redis://HOST:PORT[/DB] "
        "(or rediss://, redis+sentinel://, valkey://), or dynamodb://TABLE?region=R with "
        "optional &endpoint_url=URL and &sort_key=ATTR",
    )
    command.add_argument(
        "--prefix", help="the Redis store's key prefix (RedisStore(prefix=...); default onceonly)"
    )
    command.add_argument(
        "--cluster", action="store_true", help="the redis:// URL names a Redis Cluster node"
    )


def _function_options(command: argparse.ArgumentParser, function: Any) -> None:
    function.add_argument(
        "--function",
        metavar="MODULE:FUNCTION",
        help="the decorated function (imported from the current folder like python -m): "
        "its key for --payload is used",
    )
    command.add_argument(
        "--payload",
        metavar="JSON",
        help="with --function: the event of an @idempotent handler, or the data= argument "
        "of an @idempotent_function",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onceonly", description="Run code once per idempotency key."
    )
    parser.add_argument("--version", action="version", version=f"onceonly {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="a payment service under at-least-once delivery, without and with onceonly",
        description="Charge orders delivered 1-4 times to worker processes that are killed "
        "at random, once plainly and once under onceonly, and compare the charges. A Redis "
        "store gets its own key prefix for the run, and the run's records are deleted at "
        "the end.",
    )
    demo.add_argument(
        "--orders", type=_positive_int, default=1000, help="how many orders (default 1000)"
    )
    demo.add_argument(
        "--workers", type=_positive_int, default=4, help="worker processes (default 4)"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=7,
        help="seed of the deliveries and the crashes: a seed replays the same run (default 7)",
    )
    demo.add_argument(
        "--crash-rate",
        type=_rate,
        default=0.02,
        help="share of executions killed mid-way (default 0.02)",
    )
    demo.add_argument(
        "--store",
        default=None,
        help="store URL or SQLite path for the protected run (default: a temporary SQLite file)",
    )

    doctor = commands.add_parser(
        "doctor", help="check that a Redis / Valkey server can hold onceonly's records safely"
    )
    doctor.add_argument("url", help="redis://, rediss:// or redis+sentinel:// URL")
    doctor.add_argument("--prefix", default="onceonly", help="the store's key prefix")
    doctor.add_argument("--cluster", action="store_true", help="the URL names a cluster node")
    doctor.add_argument("--ca-certs", help="CA bundle to verify the server (rediss://)")
    doctor.add_argument("--certfile", help="client certificate (rediss://)")
    doctor.add_argument("--keyfile", help="client certificate's key (rediss://)")
    doctor.add_argument("--insecure", action="store_true", help="do not verify the server")
    doctor.add_argument("--timeout", type=_seconds, default=5.0, help="socket timeout, seconds")
    doctor.add_argument(
        "--stream", help="with --group: also report this stream's consumer group (Redis Streams)"
    )
    doctor.add_argument("--group", help="the consumer group of --stream")
    doctor.add_argument(
        "--dead-letters",
        metavar="STREAM",
        help="the group's dead-letter stream (default <stream>:<group>:dead, the consumer's; "
        "a stream without a hash tag: {<stream>}:<group>:dead)",
    )
    doctor.add_argument(
        "--min-idle-ms",
        type=_positive_int,
        help="the consumers' min_idle_ms (default 60000): pending entries idle 3 times "
        "longer are a warning",
    )

    inspect = commands.add_parser(
        "inspect",
        help="show the record under a key: status, deadline, stored result",
        description="Show one record as JSON. Give its key (what the decorated function's "
        "key_for(...) returns), or --function and --payload to compute it. Exit 0: found; "
        "1: no live record; 2: an error.",
    )
    _store_options(inspect)
    inspect.add_argument(
        "key", nargs="?", metavar="KEY", help="the record's key, as key_for(...) returns it"
    )
    _function_options(inspect, inspect)

    purge = commands.add_parser(
        "purge",
        help="delete a key, or every expired record",
        description="Delete one record whatever it holds (so that its key runs again), or "
        "every expired record of a SQLite store.",
    )
    _store_options(purge)
    target = purge.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="delete this key whatever it holds")
    target.add_argument("--expired", action="store_true", help="delete expired records")
    _function_options(purge, target)

    bench = commands.add_parser(
        "bench",
        help="measure onceonly on your own store: latency and executions per second",
        description="Time one read, first executions and duplicates (p50 / p99) and "
        "executions per second, sync and with asyncio tasks, against the store. It writes "
        "only keys under a prefix of its own (onceonly-bench-<random>, kept ten minutes at "
        "most) and deletes them at the end. A Redis / Valkey server whose maxmemory-policy "
        "may evict keys is refused unless --force. Exit 0: measured; 2: an error.",
    )
    bench.add_argument(
        "store",
        metavar="STORE_URL",
        help="a SQLite file (PATH or sqlite:///PATH), redis://HOST:PORT[/DB] (or rediss://, "
        "redis+sentinel://, valkey://), or dynamodb://TABLE?region=R with optional "
        "&endpoint_url=URL and &sort_key=ATTR",
    )
    bench.add_argument(
        "--seconds", type=_seconds, default=3.0, help="how long each phase runs (default 3)"
    )
    bench.add_argument(
        "--concurrency",
        type=_positive_int,
        default=64,
        help="asyncio tasks in the async phase (default 64)",
    )
    bench.add_argument(
        "--payload-bytes",
        type=_non_negative_int,
        default=256,
        help="size of each call's data and of its result (default 256)",
    )
    bench.add_argument(
        "--prefix", help="the Redis store's key prefix (RedisStore(prefix=...); default onceonly)"
    )
    bench.add_argument(
        "--cluster", action="store_true", help="the redis:// URL names a Redis Cluster node"
    )
    bench.add_argument(
        "--force", action="store_true", help="run even if the server's maxmemory-policy evicts"
    )

    dynamodb = commands.add_parser("dynamodb", help="DynamoDB store helpers")
    dynamodb_commands = dynamodb.add_subparsers(
        dest="dynamodb_command", required=True, metavar="COMMAND"
    )
    create = dynamodb_commands.add_parser(
        "create-table",
        help="create the store's table (on-demand billing, TTL on) unless a matching one exists",
    )
    create.add_argument("name", help="table name")
    create.add_argument("--endpoint-url", help="e.g. http://localhost:8000 for DynamoDB Local")
    create.add_argument(
        "--region",
        help="AWS region (default: AWS_DEFAULT_REGION or the AWS profile's region)",
    )
    create.add_argument("--key-attr", default="id", help="partition key attribute (default id)")
    create.add_argument(
        "--sort-key", metavar="ATTR", help="sort key attribute that holds the idempotency key"
    )
    create.add_argument(
        "--expiry-attr", default="expiration", help="TTL attribute (default expiration)"
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import Progress, render, run_demo

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
        progress=Progress(sys.stdout),
    )
    print(render(plain, guarded))
    return 0 if guarded.exact else 1


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import Check, exit_code, run_doctor
    from .doctor_stream import stream_target

    # Bad stream options are a usage error (one line, exit 2), like inspect's.
    stream = stream_target(args.stream, args.group, args.dead_letters, args.min_idle_ms)
    try:
        options = doctor_options(
            args.url,
            ca_certs=args.ca_certs,
            certfile=args.certfile,
            keyfile=args.keyfile,
            insecure=args.insecure,
            timeout=args.timeout,
        )
    except IdempotencyConfigError as exc:  # a line of the report, like any other failure
        checks = [Check("connection", "error", str(exc))]
    else:
        checks = run_doctor(
            args.url, prefix=args.prefix, cluster=args.cluster, stream=stream, **options
        )
    print(render_doctor(checks, url=args.url, prefix=args.prefix))
    return exit_code(checks)


def doctor_options(
    url: str,
    *,
    ca_certs: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    insecure: bool = False,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Map ``onceonly doctor``'s TLS files, ``--insecure`` and ``--timeout`` to redis-py options.

    Args:
        url: The server's URL: TLS options need ``rediss://`` or ``rediss+sentinel://``.
        ca_certs, certfile, keyfile: ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``.
        insecure: Do not verify the server's certificate (``ssl_cert_reqs="none"``).
        timeout: ``socket_timeout`` and ``socket_connect_timeout``, seconds.

    Returns:
        Keyword arguments for ``RedisStore.from_url``.

    Raises:
        IdempotencyConfigError: TLS options on a URL without TLS.
    """
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    tls = {"ssl_ca_certs": ca_certs, "ssl_certfile": certfile, "ssl_keyfile": keyfile}
    options.update({k: v for k, v in tls.items() if v is not None})
    if insecure:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    if len(options) > 2 and not url.lower().startswith("rediss"):
        raise IdempotencyConfigError("TLS options need a rediss:// or rediss+sentinel:// URL")
    return options


def mask_url(url: str) -> str:
    """Return the URL as ``onceonly doctor`` shows it: no password, no query (``redact_url``)."""
    from .stores._redact import redact_url

    return redact_url(url)


def render_doctor(checks: Sequence[Check], *, url: str, prefix: str) -> str:
    """Return the doctor's report: masked URL, one aligned line per check, verdict and exit code."""
    from .doctor import exit_code

    width = max(len(c.name) for c in checks)
    lines = [f"onceonly doctor: {mask_url(url)} (prefix {prefix})", ""]
    lines += [f"{c.name:<{width}}  {c.status:<7}  {c.reason}" for c in checks]
    counts = [(s, sum(c.status == s for c in checks)) for s in ("error", "warning", "unknown")]
    said = ", ".join(f"{n} {s}{'s' * (n > 1 and s != 'unknown')}" for s, n in counts if n)
    return "\n".join([*lines, "", f"{said or 'all ok'}: exit {exit_code(checks)}"])


def _open_store(args: argparse.Namespace) -> Store:
    """The store of ``inspect`` / ``purge``: it must exist already."""
    from .stores.url import store_from_url

    return store_from_url(args.store, prefix=args.prefix, cluster=args.cluster, must_exist=True)


def _target_key(args: argparse.Namespace, key: str | None, flag: str) -> str:
    """The key given as ``KEY`` / ``--key``, or computed from ``--function`` and ``--payload``."""
    if args.function is not None:
        if key is not None:
            raise IdempotencyConfigError(f"give {flag} or --function, not both")
        if args.payload is None:
            raise IdempotencyConfigError("--function needs --payload JSON")
        from .lookup import key_from_function

        return key_from_function(args.function, args.payload)
    if args.payload is not None:
        raise IdempotencyConfigError("--payload needs --function MODULE:FUNCTION")
    if key is None:
        raise IdempotencyConfigError(
            f"give the record's key ({flag}) or --function MODULE:FUNCTION --payload JSON"
        )
    if not key:
        raise IdempotencyConfigError(
            f"{flag} must not be empty: give the key that key_for(...) returns, or "
            "--function MODULE:FUNCTION --payload JSON"
        )
    return key


def _inspect(args: argparse.Namespace) -> int:
    from .lookup import describe_record
    from .stores.protocol import wall_ms

    key = _target_key(args, args.key, "KEY")
    record = _open_store(args).get(key)
    if record is None:
        print(f"no live record under {key}")
        return 1
    shown = describe_record(key, record, wall_ms())
    # A Decimal result (boto3's DynamoDB numbers) shows as its exact digits.
    print(json.dumps(shown, indent=2, ensure_ascii=False, default=_exact_text))
    return 0


def _purge(args: argparse.Namespace) -> int:
    if args.expired:
        store = _open_store(args)
        purge = getattr(store, "purge", None)
        if purge is None:
            print("this store expires records by itself; nothing to purge")
            return 0
        print(f"deleted {purge()} expired records")
        return 0
    key = _target_key(args, args.key, "--key")
    print("deleted" if _open_store(args).delete(key) else "nothing under that key")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, render, run_bench

    options = BenchOptions(
        seconds=args.seconds,
        concurrency=args.concurrency,
        payload_bytes=args.payload_bytes,
        force=args.force,
    )
    report = run_bench(args.store, options, prefix=args.prefix, cluster=args.cluster)
    print(render(report))
    return 0


# The create-table command's flags, for messages that name the store's arguments.
_FLAGS = {
    "table_name": "NAME",
    "sort_key_attr": "--sort-key",
    "key_attr": "--key-attr",
    "expiry_attr": "--expiry-attr",
    "region_name": "--region",
    "endpoint_url": "--endpoint-url",
}
_ARGUMENT = re.compile(r"\b(" + "|".join(_FLAGS) + r")\b=?")


def _dynamodb(args: argparse.Namespace) -> int:
    from .stores.dynamodb import DynamoDBStore

    try:
        created = DynamoDBStore.create_table(
            args.name,
            region_name=args.region,
            endpoint_url=args.endpoint_url,
            key_attr=args.key_attr,
            sort_key_attr=args.sort_key,
            expiry_attr=args.expiry_attr,
        )
    except IdempotencyConfigError as exc:
        if type(exc.__cause__).__name__ == "NoRegionError":
            message = (
                "no AWS region for DynamoDB: give --region REGION, set AWS_DEFAULT_REGION, or "
                "set a region in the AWS profile (AWS_PROFILE, ~/.aws/config)"
            )
        else:
            message = _ARGUMENT.sub(lambda m: _FLAGS[m[1]], str(exc))
        raise IdempotencyConfigError(message) from exc
    layout = f"partition key {args.key_attr}"
    if args.sort_key is not None:
        layout += f", sort key {args.sort_key}"
    if created:
        print(f"created table {args.name}: {layout}, on-demand billing, TTL on {args.expiry_attr}")
    else:
        print(f"table {args.name} is already there: {layout}, TTL on {args.expiry_attr}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Exit codes: 0 success, 1 the command's negative answer (no record, a failed
    check, the demo's charges did not match), 2 an error (one ``onceonly: ...``
    line on stderr), 130 interrupted.
    """
    args = _parser().parse_args(argv)
    handlers = {
        "demo": _demo,
        "doctor": _doctor,
        "inspect": _inspect,
        "purge": _purge,
        "bench": _bench,
        "dynamodb": _dynamodb,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("onceonly: interrupted", file=sys.stderr)
        return 130
    # ValueError and OSError: bad input that a library below us did not word as ours.
    except (IdempotencyError, ValueError, OSError) as exc:
        print(f"onceonly: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (
        text if isinstance(exc, IdempotencyError) or not text else f"{text} ({type(exc).__name__})"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _exact_text(value: Any) -> str:
    """JSON output for what JSON has no type for: a Decimal's own digits."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be shown as JSON")
