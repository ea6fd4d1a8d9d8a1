"""``onceonly bench``: what onceonly costs on the user's own store, measured where it runs.

Phases, each for ``seconds``, one after the other, on keys under a prefix
of this run's own (``onceonly-bench-<random>``), all deleted at the end:

1. one read: ``store.get`` of a key that is not there (a raw round trip on
   a networked store: one ``GET`` on Redis, one ``GetItem`` on DynamoDB);
2. first executions: an ``idempotent_function`` on fresh keys, one call
   after another (its rate is the sync executions per second);
3. duplicates: the same keys again, now completed records;
4. async executions: ``concurrency`` asyncio tasks on fresh keys through the
   store's asyncio twin.

The records also carry a retention of ten minutes, so that a run cut short
leaves nothing behind for long. A Redis / Valkey server whose
``maxmemory-policy`` may evict keys is refused unless ``force``: the figures
of a store that can drop live records say nothing of how it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .config import IdempotencyConfig
from .decorators import idempotent_function
from .errors import IdempotencyConfigError, IdempotencyError
from .stores.url import REDIS_SCHEMES, async_store_from_url, store_from_url, url_scheme

__all__ = [
    "BenchOptions",
    "Measure",
    "Progress",
    "Report",
    "percentile",
    "render",
    "run_bench",
]

RETENTION_SECONDS = 600  # of the run's records, in case the cleanup never runs
MAX_CALLS = 2_000_000  # per phase: bounds the samples kept in memory
WARM_UP = 20  # untimed calls before each phase (connections, scripts loaded)
DELETE_CHUNK = 500  # keys per pipeline when a Redis run's records are deleted


@dataclass(frozen=True)
class BenchOptions:
    """What ``onceonly bench`` runs, checked.

    Attributes:
        seconds: How long each phase runs (0.1 to 600).
        concurrency: asyncio tasks in the async phase (1 to 4096).
        payload_bytes: Size of each call's data and of its result (0 to 1 MiB).
        force: Run on a Redis server whose ``maxmemory-policy`` may evict keys.

    Raises:
        IdempotencyConfigError: A value out of its range or of the wrong type.
    """

    seconds: float = 3.0
    concurrency: int = 64
    payload_bytes: int = 256
    force: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("seconds", self.seconds, (int, float), 0.1, 600),
            ("concurrency", self.concurrency, (int,), 1, 4096),
            ("payload_bytes", self.payload_bytes, (int,), 0, 1 << 20),
        )
        for name, value, kinds, low, high in checks:
            if type(value) not in kinds or not low <= value <= high:
                raise IdempotencyConfigError(f"{name} must be from {low} to {high}, got {value!r}")
        if type(self.force) is not bool:
            raise IdempotencyConfigError(f"force must be True or False, got {self.force!r}")


def percentile(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of samples sorted in ascending order (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Measure:
    """One phase's figures: its latencies in microseconds and its rate."""

    name: str
    calls: int
    seconds: float
    latencies_us: tuple[float, ...] = ()

    @property
    def per_second(self) -> float:
        """Calls per second over the phase's wall time."""
        return self.calls / self.seconds if self.seconds > 0 else math.nan

    @property
    def p50_us(self) -> float:
        """The median latency (NaN for a phase timed as a whole)."""
        return percentile(self.latencies_us, 0.50)

    @property
    def p99_us(self) -> float:
        """The 99th percentile latency (NaN for a phase timed as a whole)."""
        return percentile(self.latencies_us, 0.99)


@dataclass
class Report:
    """Everything a run measured, for :func:`render`."""

    store: str
    options: BenchOptions
    prefix: str
    measures: list[Measure] = field(default_factory=list)
    deleted: int = 0
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Measure | None:
        """The phase called ``name``, if it ran."""
        return next((m for m in self.measures if m.name == name), None)


READ, FIRST, DUPLICATE, ASYNC = (
    "one read (get of a missing key)",
    "first execution",
    "duplicate",
    "async executions",
)


def _figure(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def render(report: Report) -> str:
    """The table ``onceonly bench`` prints at the end.

    One row per phase: its calls, p50 and p99 latency in microseconds (``-`` for the
    async phase, timed as a whole) and calls per second; then each
    execution's p50 as a multiple of one read's, and what was deleted.
    """
    options = report.options
    lines = [
        f"onceonly bench: {report.store}; {options.seconds:g} s per phase, payload "
        f"{options.payload_bytes} bytes, {options.concurrency} async tasks",
        "",
        f"{'':<34}{'calls':>9}{'p50 us':>10}{'p99 us':>10}{'per second':>12}",
    ]
    for m in report.measures:
        name = f"{m.name} x{options.concurrency}" if m.name == ASYNC else m.name
        lines.append(
            f"{name:<34}{m.calls:>9}{_figure(m.p50_us, 1):>10}{_figure(m.p99_us, 1):>10}"
            f"{_figure(m.per_second, 0):>12}"
        )
    read = report.get(READ)
    if read is not None and read.p50_us > 0:
        ratios = [
            f"{m.name} {m.p50_us / read.p50_us:.2f} x"
            for m in (report.get(FIRST), report.get(DUPLICATE))
            if m is not None and not math.isnan(m.p50_us)
        ]
        if ratios:
            lines += ["", "p50 / one read's p50: " + ", ".join(ratios)]
    lines += [*("note: " + n for n in report.notes)]
    lines += ["", f"deleted {report.deleted} records under {report.prefix}"]
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal; one line per phase elsewhere (logs, pipes)."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._shown = 0.0

    def start(self, phase: str) -> None:
        """A phase begins."""
        self._shown = 0.0
        if not self._tty:
            self._stream.write(f"onceonly bench: {phase}...\n")
            self._stream.flush()

    def update(self, phase: str, done: float) -> None:
        """``done`` (0 to 1) of the phase has passed; redrawn at most ten times a second."""
        now = time.monotonic()
        if not self._tty or now - self._shown < 0.1:
            return
        self._shown = now
        filled = int(self.WIDTH * min(1.0, done))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\r[{bar}] {phase:<34}")
        self._stream.flush()

    def finish(self) -> None:
        """Clear the bar before the table is printed."""
        if self._tty:
            self._stream.write("\r" + " " * (self.WIDTH + 38) + "\r")
            self._stream.flush()


class _Phase:
    """A timed loop: ``tick()`` says whether to go on and moves the progress bar."""

    def __init__(self, name: str, seconds: float, progress: Progress) -> None:
        self.name, self.seconds, self.progress = name, seconds, progress
        progress.start(name)
        self.start = time.perf_counter()
        self.end = self.start + seconds
        self.calls = 0

    def tick(self) -> bool:
        now = time.perf_counter()
        self.progress.update(self.name, (now - self.start) / self.seconds)
        return now < self.end and self.calls < MAX_CALLS

    def measure(self, latencies: list[float] | None = None) -> Measure:
        elapsed = time.perf_counter() - self.start
        ordered = tuple(sorted(latencies)) if latencies is not None else ()
        return Measure(self.name, self.calls, elapsed, ordered)


def _timed(name: str, call: Callable[[int], object], seconds: float, progress: Progress) -> Measure:
    """Call ``call(i)`` for i = 0, 1, ... for ``seconds``; each call's latency in microseconds."""
    phase = _Phase(name, seconds, progress)
    latencies: list[float] = []
    clock = time.perf_counter_ns
    while phase.tick():
        started = clock()
        call(phase.calls)
        latencies.append((clock() - started) / 1000)
        phase.calls += 1
    return phase.measure(latencies)


def _check_eviction(store: Any) -> str | None:
    """Why the Redis server behind ``store`` may evict records (None: it may not, or unknown)."""
    from .doctor import NodeAnswers, check_eviction
    from .stores.redis import import_redis

    client = store.client
    nodes = [client]
    if hasattr(client, "get_primaries"):  # a cluster: every primary holds records
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    refusal = import_redis().exceptions.ResponseError
    for node in nodes:
        answers = NodeAnswers()
        try:
            answers.info = dict(node.info("memory"))
        except refusal:
            continue  # INFO refused (ACL): not known, and not refused for it
        status, reason = check_eviction(answers)
        if status == "warning":
            return reason
    return None


def _decorated(store: Any, config: IdempotencyConfig, pad: str, *, asynchronous: bool) -> Any:
    """The function each phase calls: its result is as large as its data."""

    def body(data: dict[str, Any]) -> dict[str, Any]:
        return {"n": data["n"], "result": pad}

    async def async_body(data: dict[str, Any]) -> dict[str, Any]:
        return body(data)

    return idempotent_function(data="data", store=store, config=config)(
        async_body if asynchronous else body
    )


def _payload(i: int, pad: str, tag: str) -> dict[str, Any]:
    return {"run": tag, "n": i, "pad": pad}


def run_bench(
    url: str,
    options: BenchOptions,
    *,
    prefix: str | None = None,
    cluster: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Measure onceonly on the store at ``url``; delete what it wrote.

    Args:
        url: A store URL or SQLite path, as ``onceonly inspect --store`` takes.
        options: What to run.
        prefix: The Redis store's key prefix (None: the store's default).
        cluster: The Redis URL names a cluster node.
        progress: Where the progress shows (default: stderr).

    Returns:
        The figures, for :func:`render`.

    Raises:
        IdempotencyConfigError: A bad URL, or a Redis server whose
            ``maxmemory-policy`` may evict records, without ``options.force``.
        IdempotencyStoreError: The store failed (what was written so far is
            deleted first, as far as the store lets it).
    """
    progress = progress or Progress(sys.stderr)
    store = store_from_url(url, prefix=prefix, cluster=cluster)
    scheme = url_scheme(url)
    report = Report(_describe(url, store), options, "")
    if scheme in REDIS_SCHEMES:
        from .stores.redis.common import redis_errors, store_error

        try:
            why = _check_eviction(store)
        except redis_errors() as exc:
            _close(store)
            raise store_error(exc, None) from exc
        if why is not None:
            if not options.force:
                raise IdempotencyConfigError(
                    f"maxmemory-policy {why.split(':')[0]} may evict records under memory "
                    "pressure, and the figures would not be the ones of a safe setup: set "
                    "noeviction, or pass --force to run anyway"
                )
            report.notes.append(f"run with --force: maxmemory-policy {why.split(':')[0]}")
    tag = f"onceonly-bench-{secrets.token_hex(6)}"
    report.prefix = tag
    config = IdempotencyConfig(key_prefix=tag, expires_after_seconds=RETENTION_SECONDS)
    run = _Run(config, "x" * options.payload_bytes, tag, options, progress, report)
    keys = run.keys
    try:
        try:
            _sync_phases(store, run)
            _async_phase(async_store_from_url(url, prefix=prefix, cluster=cluster), run)
        except BaseException:
            # What failed is the error to report; the records still go if the store lets them.
            with contextlib.suppress(IdempotencyError):
                _delete_all(store, keys, progress)
            raise
        report.deleted = _delete_all(store, keys, progress)
    finally:
        progress.finish()
        _close(store)
    return report


def _describe(url: str, store: Any) -> str:
    from .stores._redact import redact_url

    return f"{redact_url(url)} ({type(store).__name__})"


@dataclass
class _Run:
    """What every phase of one run shares."""

    config: IdempotencyConfig
    pad: str
    tag: str
    options: BenchOptions
    progress: Progress
    report: Report
    keys: list[str] = field(default_factory=list)  # every key written, for the cleanup


def _sync_phases(store: Any, run: _Run) -> None:
    config, pad, tag, options, progress, report, keys = (
        run.config, run.pad, run.tag, run.options, run.progress, run.report, run.keys
    )  # fmt: skip
    execute = _decorated(store, config, pad, asynchronous=False)
    missing = f"{tag}:missing"
    for _ in range(WARM_UP):
        store.get(missing)
    report.measures.append(_timed(READ, lambda _: store.get(missing), options.seconds, progress))

    payloads: list[dict[str, Any]] = []

    def first(i: int) -> None:
        data = _payload(i, pad, "s")
        payloads.append(data)
        keys.append(execute.key_for(data))
        execute(data)

    report.measures.append(_timed(FIRST, first, options.seconds, progress))
    report.measures.append(
        _timed(
            DUPLICATE,
            lambda i: execute(payloads[i % len(payloads)]),
            options.seconds,
            progress,
        )
    )


def _async_phase(store: Any, run: _Run) -> None:
    config, pad, options, progress, report, keys = (
        run.config, run.pad, run.options, run.progress, run.report, run.keys
    )  # fmt: skip

    execute = _decorated(store, config, pad, asynchronous=True)

    async def timed() -> Measure:
        phase: _Phase | None = None
        counter = 0

        async def worker() -> None:
            nonlocal counter
            assert phase is not None
            while phase.tick():
                data = _payload(counter, pad, "a")
                counter += 1
                keys.append(execute.key_for(data))
                await execute(data)
                phase.calls += 1

        try:
            for i in range(WARM_UP):  # connections made, scripts loaded
                data = _payload(-1 - i, pad, "a")
                keys.append(execute.key_for(data))
                await execute(data)
            phase = _Phase(ASYNC, options.seconds, progress)
            await asyncio.gather(*(worker() for _ in range(options.concurrency)))
            return phase.measure()
        finally:
            await _aclose(store)

    report.measures.append(asyncio.run(timed()))


def _delete_all(store: Any, keys: list[str], progress: Progress) -> int:
    """Delete the run's records; how many were there.

    Raises:
        IdempotencyStoreError: The store failed.
    """
    progress.start("deleting the run's records")
    client, full_key = getattr(store, "client", None), getattr(store, "full_key", None)
    if client is not None and callable(full_key) and hasattr(client, "pipeline"):
        # Redis: DEL in pipelines (one round trip per chunk and node), not one by one.
        from .stores.redis.common import redis_errors, store_error

        deleted = 0
        for start in range(0, len(keys), DELETE_CHUNK):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + DELETE_CHUNK]:
                pipe.delete(full_key(key))
            try:
                deleted += sum(int(n) for n in pipe.execute())
            except redis_errors() as exc:
                raise store_error(exc, None) from exc
        return deleted
    return sum(1 for key in keys if store.delete(key))


def _sentinels(client: Any) -> list[Any]:
    """The clients a Sentinel-managed client keeps to its Sentinels (closed with it)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", []))


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()
    client = getattr(store, "client", None)
    if client is not None and callable(getattr(client, "close", None)):
        for sentinel in _sentinels(client):
            sentinel.close()
        client.close()


async def _aclose(store: Any) -> None:
    if hasattr(store, "aclose"):  # AsyncRedisStore: its client's connections
        await store.aclose()
        for sentinel in _sentinels(store.client):
            await sentinel.aclose()
    else:  # a store on threads: its pool
        store.close()
