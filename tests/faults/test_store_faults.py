"""Faults: a store that cannot answer, a corrupt row, a lease lost while the function ran.

The SQLite store is made to fail for real: another connection holds the write
lock (``BEGIN EXCLUSIVE``) while the store's busy timeout is 50 ms, so its
writes fail with ``database is locked``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from onceonly import (
    CorruptRecordError,
    Event,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyStoreError,
    Record,
    Status,
    idempotent_function,
)
from onceonly.records import Acquired
from onceonly.stores import AsyncMemoryStore, AsyncSQLiteStore, MemoryStore, SQLiteStore

LEASE_MS = 2_000


def key_of(prefix: str, selected: Any) -> str:
    canonical = json.dumps(selected, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{prefix}:{hashlib.md5(canonical.encode()).hexdigest()}"


def token() -> str:
    return secrets.token_hex(16)


class WriteLock:
    """SQLite's write lock on a file, held by another connection between hold() and free()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def hold(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("BEGIN EXCLUSIVE")

    def free(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None

    def __enter__(self) -> WriteLock:
        self.hold()
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def once(action: Callable[[], Any]) -> Callable[[], None]:
    """``action`` on the first call only."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()

    return run


def decorate(store: Any, body: Callable[[Any], Any], config: IdempotencyConfig) -> Any:
    """``idempotent_function(data="job")`` over ``body``, async when the store is."""
    if isinstance(store, AsyncSQLiteStore | AsyncMemoryStore):

        async def async_job(job: Any) -> Any:
            return body(job)

        return idempotent_function(store=store, data="job", config=config)(async_job)

    def job(job: Any) -> Any:
        return body(job)

    return idempotent_function(store=store, data="job", config=config)(job)


def call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def sync_view(store: Any) -> Any:
    """The store's records as a sync store sees them."""
    if isinstance(store, AsyncSQLiteStore):
        return store.sync
    if isinstance(store, AsyncMemoryStore):
        return _AsyncView(store)
    return store


def run_coro(coro: Any) -> Any:
    """Run a coroutine to its end, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class _AsyncView:
    def __init__(self, store: AsyncMemoryStore) -> None:
        self._store = store

    def get(self, key: str) -> Record | None:
        return run_coro(self._store.get(key))

    def claim(self, key: str, **kwargs: Any) -> Any:
        return run_coro(self._store.claim(key, **kwargs))


class Job:
    """A job body that counts its runs; ``during`` runs inside it."""

    def __init__(self, result: Any = "done", during: Callable[[], Any] | None = None) -> None:
        self.calls = 0
        self.result = result
        self.during = during

    def __call__(self, job: Any) -> Any:
        self.calls += 1
        if self.during is not None:
            self.during()
        return self.result


# -- the store cannot be reached -------------------------------------------------


@pytest.fixture(params=["sqlite", "async-sqlite"])
def locked_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Any]:
    """A SQLite store with a 50 ms busy timeout, on a manual clock."""
    path = tmp_path / "faults.sqlite3"
    cls = SQLiteStore if request.param == "sqlite" else AsyncSQLiteStore
    store = cls(path, busy_timeout_ms=50, clock=clock)
    try:
        yield store
    finally:
        store.close()


def _path(store: Any) -> Path:
    return Path(sync_view(store).path)


def test_a_locked_store_fails_closed(locked_store: Any) -> None:
    job = Job()
    fn = decorate(locked_store, job, IdempotencyConfig(key_prefix="f"))

    with WriteLock(_path(locked_store)), pytest.raises(IdempotencyStoreError) as caught:
        call(fn, {"id": 1})

    cause = caught.value.__cause__
    assert type(cause) is sqlite3.OperationalError
    assert str(cause) == "database is locked"
    assert "held the file for longer than busy_timeout_ms" in str(caught.value)
    assert job.calls == 0
    assert fn.stats[Event.STORE_ERROR] == 1
    # Once the lock is gone the same delivery runs.
    assert call(fn, {"id": 1}) == "done"
    assert job.calls == 1


def test_a_locked_store_with_on_store_error_run_runs_unprotected(
    locked_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job({"charged": 5})
    fn = decorate(locked_store, job, IdempotencyConfig(key_prefix="f", on_store_error="run"))

    with (
        caplog.at_level(logging.WARNING, logger="onceonly"),
        WriteLock(_path(locked_store)),
    ):
        assert call(fn, {"id": 1}) == {"charged": 5}

    assert job.calls == 1
    assert (fn.stats[Event.STORE_ERROR], fn.stats[Event.UNPROTECTED]) == (1, 1)
    assert fn.stats[Event.EXECUTED] == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "onceonly"]
    assert len(messages) == 1
    assert "running without idempotency" in messages[0]
    assert "on_store_error='run'" in messages[0]
    # Nothing was recorded, so the next delivery runs (and is protected) again.
    assert sync_view(locked_store).get(key_of("f", {"id": 1})) is None
    assert call(fn, {"id": 1}) == {"charged": 5}
    assert job.calls == 2


def test_a_store_failing_at_completion_returns_the_result_and_keeps_the_claim(
    locked_store: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = _path(locked_store)
    lock = WriteLock(path)
    job = Job({"sent": True}, during=once(lock.hold))
    fn = decorate(locked_store, job, IdempotencyConfig(key_prefix="f", lease_seconds=2))

    try:
        with caplog.at_level(logging.WARNING, logger="onceonly"):
            assert call(fn, {"id": 1}) == {"sent": True}
    finally:
        lock.free()

    assert any("could not store its outcome" in r.getMessage() for r in caplog.records)
    assert fn.stats[Event.STORE_ERROR] == 1
    record = sync_view(locked_store).get(key_of("f", {"id": 1}))
    assert record is not None
    assert (record.status, record.deadline_ms) == (Status.IN_PROGRESS, clock.now + LEASE_MS)
    # A duplicate meanwhile is told to retry; after the lease it runs again.
    with pytest.raises(IdempotencyAlreadyInProgressError):
        call(fn, {"id": 1})
    clock.advance(LEASE_MS)
    assert call(fn, {"id": 1}) == {"sent": True}
    assert job.calls == 2
    assert fn.stats[Event.STORE_ERROR] == 1
    record = sync_view(locked_store).get(key_of("f", {"id": 1}))
    assert record is not None
    assert record.status is Status.COMPLETED


def test_a_store_failing_at_release_keeps_the_original_exception(
    locked_store: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = _path(locked_store)
    lock = WriteLock(path)
    boom = RuntimeError("downstream failed")

    def fail() -> None:
        lock.hold()
        raise boom

    fn = decorate(locked_store, Job(during=fail), IdempotencyConfig(key_prefix="f"))

    try:
        with (
            caplog.at_level(logging.WARNING, logger="onceonly"),
            pytest.raises(RuntimeError) as caught,
        ):
            call(fn, {"id": 1})
    finally:
        lock.free()

    assert caught.value is boom
    assert any("could not release" in r.getMessage() for r in caplog.records)
    record = sync_view(locked_store).get(key_of("f", {"id": 1}))
    assert record is not None
    assert record.status is Status.IN_PROGRESS


def _insert_corrupt_row(path: Path, key: str) -> None:
    """Put a row that is no record under ``key``, whatever columns the table has."""
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(onceonly)")]
        assert columns[0] == "key"
        values: list[Any] = []
        for name in columns:
            if name == "key":
                values.append(key)
            elif name in ("expires_at", "deadline"):
                values.append(9_999_999_999_999)  # far in the future: a live row
            elif name == "took_over":
                values.append(0)
            else:
                values.append("\x00garbage")
        with conn:
            conn.execute(
                f"INSERT INTO onceonly ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                values,
            )
    finally:
        conn.close()


@pytest.mark.parametrize("policy", ["raise", "run"])
def test_a_corrupt_record_is_raised_even_with_on_store_error_run(
    locked_store: Any, policy: str
) -> None:
    _insert_corrupt_row(_path(locked_store), key_of("f", {"id": 1}))
    job = Job()
    fn = decorate(locked_store, job, IdempotencyConfig(key_prefix="f", on_store_error=policy))

    with pytest.raises(CorruptRecordError):
        call(fn, {"id": 1})

    assert job.calls == 0
    assert call(fn, {"id": 2}) == "done"


# -- a lease lost while the function ran -----------------------------------------


class BadInputError(Exception):
    pass


@pytest.fixture(params=["memory", "sqlite", "async-memory", "async-sqlite"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Any]:
    path = tmp_path / "lease.sqlite3"
    factories: dict[str, Callable[[], Any]] = {
        "memory": lambda: MemoryStore(clock=clock),
        "sqlite": lambda: SQLiteStore(path, clock=clock),
        "async-memory": lambda: AsyncMemoryStore(clock=clock),
        "async-sqlite": lambda: AsyncSQLiteStore(path, clock=clock),
    }
    store = factories[request.param]()
    try:
        yield store
    finally:
        if hasattr(store, "close"):
            store.close()


def test_a_lease_lost_at_completion_returns_the_result_and_spares_the_new_owner(
    any_store: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of("lost", {"id": 1})
    successor = token()
    taken: list[Any] = []

    def lose_the_lease() -> None:
        clock.advance(LEASE_MS + 1)
        taken.append(
            sync_view(any_store).claim(
                key, token=successor, lease_ms=30_000, ttl_ms=60_000, fingerprint=None
            )
        )

    job = Job({"result": "mine"}, during=lose_the_lease)
    fn = decorate(any_store, job, IdempotencyConfig(key_prefix="lost", lease_seconds=2))

    with caplog.at_level(logging.WARNING, logger="onceonly"):
        assert call(fn, {"id": 1}) == {"result": "mine"}

    assert taken == [Acquired(takeover=True)]
    assert sync_view(any_store).get(key) == Record(
        Status.IN_PROGRESS, successor, clock.now + 30_000, None, None
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "losing its lease" in warnings[0].getMessage()
    assert key in warnings[0].getMessage()
    assert (fn.stats[Event.EXECUTED], fn.stats[Event.LEASE_LOST]) == (1, 1)
    # A duplicate sees the successor's live claim, not the lost result.
    with pytest.raises(IdempotencyAlreadyInProgressError):
        call(fn, {"id": 1})
    assert job.calls == 1


def test_a_lease_lost_before_a_failure_spares_the_new_owner(
    any_store: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of("lost", {"id": 1})
    successor = token()
    boom = BadInputError("bad input")

    def lose_the_lease_then_fail() -> None:
        clock.advance(LEASE_MS + 1)
        sync_view(any_store).claim(
            key, token=successor, lease_ms=30_000, ttl_ms=60_000, fingerprint=None
        )
        raise boom

    fn = decorate(
        any_store,
        Job(during=lose_the_lease_then_fail),
        IdempotencyConfig(key_prefix="lost", lease_seconds=2),
    )

    with (
        caplog.at_level(logging.WARNING, logger="onceonly"),
        pytest.raises(BadInputError) as caught,
    ):
        call(fn, {"id": 1})

    assert caught.value is boom
    assert sync_view(any_store).get(key) == Record(
        Status.IN_PROGRESS, successor, clock.now + 30_000, None, None
    )
    assert any("lost its lease" in r.getMessage() for r in caplog.records)
    assert fn.stats[Event.LEASE_LOST] == 1


def test_a_lease_that_ran_out_without_a_successor_is_not_completed(
    any_store: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job("late", during=lambda: clock.advance(LEASE_MS))
    fn = decorate(any_store, job, IdempotencyConfig(key_prefix="late", lease_seconds=2))

    with caplog.at_level(logging.WARNING, logger="onceonly"):
        assert call(fn, {"id": 1}) == "late"

    assert sync_view(any_store).get(key_of("late", {"id": 1})) is None
    assert fn.stats[Event.LEASE_LOST] == 1
    # Nothing was stored, so the next delivery runs it again.
    assert call(fn, {"id": 1}) == "late"
    assert job.calls == 2
