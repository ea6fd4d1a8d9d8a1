"""``onceonly demo``: a payment service behind an at-least-once queue, without and with onceonly.

A broker process plays the queue. Every order is delivered 1 to 4 times, copies
close together so that several workers get the same order at once. Worker
processes charge orders by writing a row into a ledger (a separate SQLite
file). Some executions die mid-way (SIGKILL, before the charge is written);
the broker notices the dead worker, starts a new one and redelivers the
message once its visibility timeout (the lease) has passed. A delivery that
meets "already in progress" is put back for a short while, as a queue would.

The same traffic (same seed, same crashes) runs twice: plain, then with the
charge function under ``idempotent_function`` on the chosen store. The store is
checked once before any worker starts; the protected run writes under a key
prefix of its own (and a Redis store prefix of its own) and deletes its records
at the end, also when it is interrupted.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import os
import random
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TextIO

from .errors import IdempotencyError, IdempotencyStoreError

__all__ = ["DemoResult", "Progress", "run_demo"]


class Progress:
    """Shows how far a run is: a bar rewritten in place on a terminal, else a line now and then.

    Args:
        stream: Where to write (the CLI's stdout).
        tty: Whether ``stream`` is a terminal; asked of the stream when None.
        every: Seconds between lines when it is not a terminal.
        clock: Seconds, monotonic (injected by tests).
    """

    _WIDTH = 30

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.every = every
        self.clock = clock
        self.label = ""
        self.total = 0
        self.started = self.shown = 0.0
        self.drawn = 0

    def start(self, label: str, total: int) -> None:
        """Begin a run of ``total`` deliveries."""
        self.label, self.total = label, total
        self.started = self.shown = self.clock()
        self.drawn = 0

    def update(self, done: int, *, crashes: int) -> None:
        """Report ``done`` deliveries finished and ``crashes`` workers killed so far."""
        now = self.clock()
        if self.tty:
            # At most ten frames a second, and always the last one.
            if self.drawn and now - self.shown < 0.1 and done < self.total:
                return
            filled = self._WIDTH * done // max(1, self.total)
            line = (
                f"  {self.label} [{'#' * filled}{'.' * (self._WIDTH - filled)}] "
                f"{100 * done // max(1, self.total):3d}% {done}/{self.total}, "
                f"{crashes} workers killed, {int(now - self.started)} s"
            )
            self.stream.write("\r" + line.ljust(self.drawn))
            self.drawn = max(self.drawn, len(line))
        elif now - self.shown >= self.every:
            elapsed = int(now - self.started)
            self.stream.write(
                f"  {self.label}: {done}/{self.total} deliveries done, "
                f"{crashes} workers killed, {elapsed} s\n"
            )
        else:
            return
        self.shown = now
        self.stream.flush()

    def finish(self) -> None:
        """End the run: wipe the bar, so that what follows starts on a clean line."""
        if self.tty and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
        self.drawn = 0


@dataclass(frozen=True)
class Settings:
    """What one demo run needs; sent to every worker."""

    orders: int
    workers: int
    seed: int
    crash_rate: float
    lease_seconds: float
    work_ms: float
    retry_ms: int
    ledger: str
    store_url: str | None  # None: run without onceonly
    key_prefix: str = "onceonly-demo"  # the run's own: no record of another run replays
    store_prefix: str | None = None  # a Redis store's prefix; None for other stores


@dataclass
class DemoResult:
    """Counts of one run."""

    label: str
    orders: int
    deliveries: int = 0
    executions: int = 0
    replays: int = 0
    in_progress: int = 0
    takeovers: int = 0
    crashes: int = 0
    charges: int = 0
    charged_orders: int = 0
    seconds: float = 0.0
    counts_takeovers: bool = True  # False on Redis: an orphaned claim expires by itself
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Every order charged exactly once."""
        return self.charges == self.orders and self.charged_orders == self.orders


def _crashes(seed: int, delivery: int, attempt: int, rate: float) -> bool:
    # Decided by the message, not by timing, so both runs crash alike.
    return random.Random(f"{seed}:{delivery}:{attempt}").random() < rate


def _open_ledger(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _open_store(url: str, settings: Settings) -> Any:
    from .stores.url import store_from_url

    return store_from_url(url, prefix=settings.store_prefix)


def _guard(charge: Callable[..., Any], store: Any, settings: Settings) -> Any:
    """``charge`` under onceonly, as every worker (and the final clean-up) sees it."""
    from . import IdempotencyConfig, idempotent_function

    return idempotent_function(
        charge,
        store=store,
        data="order",
        config=IdempotencyConfig(
            event_key_jmespath="id",
            payload_validation_jmespath="cents",
            lease_seconds=settings.lease_seconds,
            key_prefix=settings.key_prefix,
        ),
    )


def _worker(settings: Settings, conn: Connection) -> None:
    """Charge the orders the broker sends until it sends None."""
    # Ctrl-C reaches the whole process group: the broker handles it (and stops us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(settings, conn)
    except Exception as exc:  # one line to the broker, not a traceback per worker
        text = str(exc) if isinstance(exc, IdempotencyError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            conn.send(("error", text, False, False))


def _serve(settings: Settings, conn: Connection) -> None:
    from . import IdempotencyAlreadyInProgressError
    from .metrics import Event

    ledger = _open_ledger(settings.ledger)
    work = settings.work_ms / 1000

    def charge(order: dict[str, Any], crash: bool) -> dict[str, Any]:
        ledger.execute(
            "INSERT INTO executions (order_id, pid) VALUES (?, ?)", (order["id"], os.getpid())
        )
        time.sleep(work)  # talking to the card processor
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        cursor = ledger.execute(
            "INSERT INTO charges (order_id, cents) VALUES (?, ?)", (order["id"], order["cents"])
        )
        return {"order": order["id"], "charge": cursor.lastrowid, "cents": order["cents"]}

    guarded: Any = None
    if settings.store_url is not None:
        guarded = _guard(charge, _open_store(settings.store_url, settings), settings)
    while True:
        message = conn.recv()
        if message is None:
            return
        delivery, attempt, order = message
        crash = _crashes(settings.seed, delivery, attempt, settings.crash_rate)
        if guarded is None:
            charge(order, crash)
            conn.send(("done", delivery, False, False))
            continue
        stats = guarded.stats
        replays, takeovers = stats[Event.REPLAYED], stats[Event.TAKEOVER]
        try:
            guarded(order, crash=crash)
        except IdempotencyAlreadyInProgressError:
            conn.send(("busy", delivery, False, False))
            continue
        conn.send(
            ("done", delivery, stats[Event.REPLAYED] > replays, stats[Event.TAKEOVER] > takeovers)
        )


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Start worker processes inside: they ignore Ctrl-C from birth; ours waits until after.

    A worker ignores SIGINT itself, but only once it runs our code: a Ctrl-C
    while it boots would print a KeyboardInterrupt traceback. An ignored signal
    stays ignored across exec, so the child is started with SIGINT ignored;
    SIGINT is blocked meanwhile, so that a Ctrl-C meant for us stays pending
    (not discarded) and is delivered when the handler is back.
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield  # pragma: no cover - not POSIX, or signals are not ours to set here
        return
    # Its first start unblocks SIGINT while ignored (losing a pending one): start it now.
    resource_tracker.ensure_running()
    blocked = mask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        mask(signal.SIG_SETMASK, blocked)


def _plan(settings: Settings) -> list[tuple[int, dict[str, Any]]]:
    """Deliveries in queue order: each order 1-4 times, copies near each other."""
    rng = random.Random(settings.seed)
    slots: list[tuple[float, int, dict[str, Any]]] = []
    for i in range(settings.orders):
        order = {"id": f"order-{i:06d}", "cents": rng.randrange(100, 100_000)}
        for _ in range(rng.randint(1, 4)):
            slots.append((i + rng.uniform(0, 6), i, order))
    slots.sort(key=lambda s: s[0])
    return [(n, order) for n, (_, _, order) in enumerate(slots)]


def run_once(settings: Settings, progress: Progress | None = None) -> DemoResult:
    """Run the whole traffic once and count what happened.

    Args:
        settings: The run's settings (``store_url`` None runs without onceonly).
        progress: Told how far the run is, if given.

    Returns:
        The counts.

    Raises:
        IdempotencyStoreError: A worker stopped on an error (the store failed).
    """
    label = "without onceonly" if settings.store_url is None else "with onceonly"
    result = DemoResult(label=label, orders=settings.orders)
    ledger = _open_ledger(settings.ledger)
    ledger.execute("DROP TABLE IF EXISTS executions")
    ledger.execute("DROP TABLE IF EXISTS charges")
    ledger.execute("CREATE TABLE executions (order_id TEXT NOT NULL, pid INTEGER NOT NULL)")
    ledger.execute(
        "CREATE TABLE charges (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, cents INTEGER)"
    )
    context = multiprocessing.get_context("spawn")
    plan = _plan(settings)
    # (ready at, delivery number, attempt): a heap is the queue with visibility timeouts.
    ready: list[tuple[float, int, int]] = [(0.0, n, 0) for n, _ in plan]
    heapq.heapify(ready)
    orders = dict(plan)
    outstanding = len(plan)
    workers: dict[Connection, tuple[Any, tuple[int, int] | None]] = {}

    def start_worker() -> None:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(settings, child), daemon=True)
        with _sigint_deferred():
            process.start()
        child.close()
        workers[parent] = (process, None)

    if progress is not None:
        progress.start(label, len(plan))
    started = time.perf_counter()
    try:
        for _ in range(settings.workers):
            start_worker()
        lease = settings.lease_seconds
        while outstanding:
            now = time.perf_counter() - started
            for conn, (process, busy) in list(workers.items()):
                if busy is None and ready and ready[0][0] <= now:
                    _, delivery, attempt = heapq.heappop(ready)
                    conn.send((delivery, attempt, orders[delivery]))
                    workers[conn] = (process, (delivery, attempt))
                    result.deliveries += 1
            # Wake for the next message, a dead worker, or the next redelivery (50 ms at most).
            timeout = min(max(0.0, ready[0][0] - now), 0.05) if ready else 0.05
            sentinels = {process.sentinel: conn for conn, (process, _) in workers.items()}
            for item in wait([*workers, *sentinels], timeout=timeout):
                found = sentinels[item] if isinstance(item, int) else item
                if not isinstance(found, Connection) or found not in workers:
                    continue
                conn = found
                process, busy = workers[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    # The worker died mid-delivery: redeliver after the visibility timeout.
                    process.join()
                    del workers[conn]
                    result.crashes += 1
                    if busy is not None:
                        when = time.perf_counter() - started + lease * 1.05
                        heapq.heappush(ready, (when, busy[0], busy[1] + 1))
                    start_worker()
                    continue
                kind, delivery, replayed, takeover = message
                if kind == "error":
                    raise IdempotencyStoreError(f"a demo worker stopped: {delivery}")
                workers[conn] = (process, None)
                if kind == "busy":
                    result.in_progress += 1
                    when = time.perf_counter() - started + settings.retry_ms / 1000
                    heapq.heappush(ready, (when, delivery, busy[1] if busy else 0))
                    continue
                outstanding -= 1
                result.replays += int(replayed)
                result.takeovers += int(takeover)
            if progress is not None:
                progress.update(len(plan) - outstanding, crashes=result.crashes)
        for conn, (process, _) in workers.items():
            conn.send(None)
            process.join(timeout=10)
    finally:
        # Also on an error or Ctrl-C: no worker outlives the run.
        for process, _ in workers.values():
            if process.is_alive():
                process.kill()
                process.join()
        if progress is not None:
            progress.finish()
    result.seconds = time.perf_counter() - started
    result.executions = ledger.execute("SELECT count(*) FROM executions").fetchone()[0]
    result.charges = ledger.execute("SELECT count(*) FROM charges").fetchone()[0]
    result.charged_orders = ledger.execute(
        "SELECT count(DISTINCT order_id) FROM charges"
    ).fetchone()[0]
    ledger.close()
    return result


def run_demo(
    *,
    orders: int = 1000,
    workers: int = 4,
    seed: int = 7,
    crash_rate: float = 0.02,
    lease_seconds: float = 1.0,
    work_ms: float = 2.0,
    store_url: str | None = None,
    folder: str | None = None,
    progress: Progress | None = None,
) -> tuple[DemoResult, DemoResult]:
    """Run the traffic without and with onceonly.

    The store is checked (opened, one read) before anything runs. The protected
    run's records carry a key prefix of their own (on Redis, a store prefix of
    their own too) and are deleted at the end, also on an error or Ctrl-C.

    Args:
        orders: How many orders.
        workers: Worker processes.
        seed: Seed of the delivery plan and the crashes.
        crash_rate: Share of executions killed mid-way.
        lease_seconds: Lease, and the queue's visibility timeout.
        work_ms: Time one charge spends "at the card processor".
        store_url: Store for the protected run; a fresh SQLite file by default.
        folder: Where the ledger (and default store) go; a temp folder by default.
        progress: Shows each run's progress, if given.

    Returns:
        (without, with) results.

    Raises:
        IdempotencyConfigError: The store URL is not usable.
        IdempotencyStoreError: The store cannot be reached, or failed during the run.
    """
    from .stores.url import REDIS_SCHEMES, url_scheme

    run = f"onceonly-demo-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="onceonly-demo-") as tmp:
        base = Path(folder or tmp)
        url = store_url or str(base / "onceonly.sqlite3")
        redis = url_scheme(url) in REDIS_SCHEMES
        common: dict[str, Any] = {
            "orders": orders,
            "workers": workers,
            "seed": seed,
            "crash_rate": crash_rate,
            "lease_seconds": lease_seconds,
            "work_ms": work_ms,
            "retry_ms": 50,
            "ledger": str(base / "ledger.sqlite3"),
            "key_prefix": run,
            "store_prefix": run if redis else None,
        }
        settings = Settings(store_url=url, **common)
        # Once, here, rather than a traceback from every worker.
        store = _open_store(url, settings)
        store.get(f"{run}:check")
        plain = run_once(Settings(store_url=None, **common), progress)
        try:
            guarded = run_once(settings, progress)
        finally:
            _clean_up(store, settings)
    guarded.counts_takeovers = not redis
    return plain, guarded


def _clean_up(store: Any, settings: Settings) -> None:
    """Delete every record the protected run may have written (one per order)."""

    def charge(order: dict[str, Any]) -> None:  # only its keys are used
        return None

    key_for = _guard(charge, store, settings).key_for
    for _, order in _plan(settings):
        store.delete(key_for(order))


def render(plain: DemoResult, guarded: DemoResult) -> str:
    """The results as a small text table."""
    rows = [
        ("deliveries", plain.deliveries, guarded.deliveries),
        ("executions", plain.executions, guarded.executions),
        ("replays", plain.replays, guarded.replays),
        ("in-progress rejections", plain.in_progress, guarded.in_progress),
        (
            "takeovers after a crash",
            plain.takeovers,
            guarded.takeovers if guarded.counts_takeovers else "n/a*",
        ),
        ("crashes (worker killed)", plain.crashes, guarded.crashes),
        ("charges made", plain.charges, guarded.charges),
        (f"charges == orders ({plain.orders})", _yes(plain.exact), _yes(guarded.exact)),
        ("seconds", f"{plain.seconds:.1f}", f"{guarded.seconds:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'without onceonly':>17}  {'with onceonly':>14}"]
    lines += [f"{name:{width}}  {a!s:>17}  {b!s:>14}" for name, a, b in rows]
    if not guarded.counts_takeovers:
        lines += [
            "",
            "* Redis lets an orphaned claim expire by itself (PX = the lease), so a redelivery",
            "  after a crash finds no record and claims afresh: nothing counts as a takeover.",
        ]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
