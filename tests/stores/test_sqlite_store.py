"""What only the SQLite store does: its file, table, corrupt rows, purge and options."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceonly.errors import CorruptRecordError, IdempotencyConfigError, IdempotencyStoreError
from onceonly.records import Acquired, Found, Record, Status
from onceonly.stores import AsyncSQLiteStore, SQLiteStore

KEY = "svc.handler:77"
OUTCOME = b'j{"ok":true}'


def token() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def sqlite_store(db: Path, clock: Any) -> Iterator[SQLiteStore]:
    store = SQLiteStore(db, clock=clock)
    try:
        yield store
    finally:
        store.close()


COLUMNS = ("key", "status", "token", "deadline", "fingerprint", "outcome", "took_over")


def raw_rows(db: Path, table: str = "onceonly") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY key").fetchall()
    finally:
        conn.close()


def raw_insert(db: Path, row: dict[str, Any]) -> None:
    """Write a row straight into the table, bypassing the store."""
    values = {"status": "P", "token": "a" * 32, "fingerprint": None, "outcome": None}
    values |= {"took_over": 0, **row}
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                f"INSERT OR REPLACE INTO onceonly ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})",
                [values[c] for c in COLUMNS],
            )
    finally:
        conn.close()


# -- the file ------------------------------------------------------------------


def test_the_file_is_in_wal_mode_and_rows_hold_the_record_fields(
    sqlite_store: SQLiteStore, db: Path, clock: Any
) -> None:
    tok = token()
    fp = "0f" * 32
    sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=5000, fingerprint=fp)

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert raw_rows(db) == [(KEY, "P", tok, clock.now + 1000, fp, None, 0)]

    clock.advance(10)
    assert sqlite_store.complete(KEY, token=tok, outcome=OUTCOME, ttl_ms=5000) is True
    assert raw_rows(db) == [(KEY, "C", tok, clock.now + 5000, fp, OUTCOME, 0)]


def test_records_persist_across_store_instances(db: Path, clock: Any) -> None:
    tok = token()
    first = SQLiteStore(db, clock=clock)
    first.claim(KEY, token=tok, lease_ms=1000, ttl_ms=5000, fingerprint=None)
    first.complete(KEY, token=tok, outcome=OUTCOME, ttl_ms=5000)
    first.close()

    second = SQLiteStore(db, clock=clock)
    try:
        assert second.get(KEY) == Record(Status.COMPLETED, tok, clock.now + 5000, None, OUTCOME)
    finally:
        second.close()


@pytest.fixture
def writer_on_a_new_file(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding a write lock on a new file, still in rollback mode.

    That is what a process starting beside others on a new file meets: one of
    them is creating the table while the others switch the file to WAL.
    """
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE other (x)")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def test_a_store_opening_while_another_writer_holds_a_new_file_waits_for_it(
    db: Path, writer_on_a_new_file: sqlite3.Connection, clock: Any
) -> None:
    # SQLite refuses the switch to WAL at once here, without its busy timeout;
    # the store must wait like any other writer (the lock is already held when
    # the store starts, so only the wait makes this pass).
    release = threading.Timer(0.2, writer_on_a_new_file.execute, ("COMMIT",))
    release.start()
    try:
        store = SQLiteStore(db, clock=clock)
    finally:
        release.join()
    try:
        assert store.claim(KEY, token=token(), lease_ms=1000, ttl_ms=1000, fingerprint=None) == (
            Acquired()
        )
    finally:
        store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_a_new_file_locked_past_the_busy_timeout_is_a_store_error(
    db: Path, writer_on_a_new_file: sqlite3.Connection
) -> None:
    with pytest.raises(
        IdempotencyStoreError,
        match=r"database is locked; another connection held the file for longer than "
        r"busy_timeout_ms \(50 ms\): find what holds it, or raise busy_timeout_ms",
    ):
        SQLiteStore(db, busy_timeout_ms=50)


def test_tables_on_one_file_are_independent(db: Path, clock: Any) -> None:
    a = SQLiteStore(db, table="alpha", clock=clock)
    b = SQLiteStore(db, table="beta", clock=clock)
    try:
        ta, tb = token(), token()
        assert a.claim(KEY, token=ta, lease_ms=1000, ttl_ms=1000, fingerprint=None) == Acquired()
        assert b.claim(KEY, token=tb, lease_ms=1000, ttl_ms=1000, fingerprint=None) == Acquired()
        assert a.get(KEY) == Record(Status.IN_PROGRESS, ta, clock.now + 1000)
        assert b.get(KEY) == Record(Status.IN_PROGRESS, tb, clock.now + 1000)
        assert [r[:3] for r in raw_rows(db, "alpha")] == [(KEY, "P", ta)]
        assert [r[:3] for r in raw_rows(db, "beta")] == [(KEY, "P", tb)]
    finally:
        a.close()
        b.close()


def test_the_store_reconnects_after_close(sqlite_store: SQLiteStore, clock: Any) -> None:
    tok = token()
    sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
    sqlite_store.close()

    assert sqlite_store.get(KEY) == Record(Status.IN_PROGRESS, tok, clock.now + 1000)


def test_orphans_stay_as_rows_until_purged(sqlite_store: SQLiteStore, clock: Any) -> None:
    old, new = token(), token()
    sqlite_store.claim(KEY, token=old, lease_ms=1000, ttl_ms=1000, fingerprint=None)
    clock.advance(1000)
    assert len(sqlite_store) == 1
    assert sqlite_store.get(KEY) is None

    result = sqlite_store.claim(KEY, token=new, lease_ms=1000, ttl_ms=1000, fingerprint=None)

    assert result == Acquired(takeover=True)
    assert len(sqlite_store) == 1


# -- corrupt rows --------------------------------------------------------------

FAR = 9_999_999_999_999  # a deadline far ahead: the row is live
CORRUPT_ROWS: list[Any] = [
    pytest.param({"status": "X"}, id="unknown-status"),
    pytest.param({"status": "p"}, id="lowercase-status"),
    pytest.param({"token": "not a token"}, id="bad-token"),
    pytest.param({"token": b"a" * 32}, id="blob-token"),
    pytest.param({"deadline": "soon"}, id="text-deadline"),
    pytest.param({"deadline": float(FAR) + 0.5}, id="real-deadline"),
    pytest.param({"fingerprint": "XYZ"}, id="bad-fingerprint"),
    pytest.param({"outcome": b"j1"}, id="in-progress-with-outcome"),
    pytest.param({"status": "C"}, id="completed-without-outcome"),
    pytest.param({"status": "C", "outcome": "j1"}, id="completed-text-outcome"),
    pytest.param({"status": "C", "outcome": b""}, id="completed-empty-outcome"),
    pytest.param({"status": "\x80\x04garbage", "token": "\x00"}, id="garbage"),
]


@pytest.mark.parametrize("bad", CORRUPT_ROWS)
def test_a_corrupt_row_raises_until_deleted(
    sqlite_store: SQLiteStore, db: Path, bad: dict[str, Any]
) -> None:
    raw_insert(db, {"key": KEY, "deadline": FAR, **bad})
    before = raw_rows(db)
    tok = token()

    with pytest.raises(CorruptRecordError):
        sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
    with pytest.raises(CorruptRecordError):
        sqlite_store.get(KEY)
    # Nothing was written over the bad row.
    assert raw_rows(db) == before

    assert sqlite_store.delete(KEY) is True
    assert raw_rows(db) == []
    assert sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None) == (
        Acquired(takeover=False)
    )


def test_a_corrupt_row_raises_through_the_async_store(db: Path, clock: Any) -> None:
    store = AsyncSQLiteStore(db, clock=clock)
    raw_insert(db, {"key": KEY, "deadline": FAR, "status": "?"})
    tok = token()

    async def scenario() -> tuple[bool, Any]:
        with pytest.raises(CorruptRecordError):
            await store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
        with pytest.raises(CorruptRecordError):
            await store.get(KEY)
        deleted = await store.delete(KEY)
        claimed = await store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
        return deleted, claimed

    try:
        assert asyncio.run(scenario()) == (True, Acquired(takeover=False))
    finally:
        store.close()


def test_a_corrupt_row_does_not_disturb_other_keys(sqlite_store: SQLiteStore, db: Path) -> None:
    raw_insert(db, {"key": "bad", "deadline": FAR, "status": "X"})
    tok = token()
    assert sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None) == (
        Acquired()
    )
    assert sqlite_store.complete(KEY, token=tok, outcome=OUTCOME, ttl_ms=1000) is True


# -- purge ---------------------------------------------------------------------


def _fill(store: SQLiteStore, clock: Any, expired: int, live: int) -> list[str]:
    """Make ``expired`` rows whose deadline has passed and ``live`` rows still running."""
    for i in range(expired):
        tok = token()
        store.claim(f"old:{i}", token=tok, lease_ms=100, ttl_ms=100, fingerprint=None)
        if i % 2 == 0:
            store.complete(f"old:{i}", token=tok, outcome=OUTCOME, ttl_ms=150)
    clock.advance(1_000)
    new = [f"new:{i}" for i in range(live)]
    for key in new:
        store.claim(key, token=token(), lease_ms=1_000, ttl_ms=1_000, fingerprint=None)
    return new


@pytest.mark.parametrize("batch", [1, 3, 256])
def test_purge_deletes_only_expired_rows(db: Path, clock: Any, batch: int) -> None:
    store = SQLiteStore(db, clock=clock, purge_batch=batch)
    try:
        new = _fill(store, clock, expired=7, live=3)
        live_rows = [r for r in raw_rows(db) if r[0].startswith("new:")]
        assert len(store) == 10

        assert store.purge() == 7

        assert raw_rows(db) == live_rows
        assert [store.get(k) is not None for k in new] == [True, True, True]
        assert store.purge() == 0
    finally:
        store.close()


def test_purge_walks_more_rows_than_one_batch(db: Path, clock: Any) -> None:
    store = SQLiteStore(db, clock=clock, purge_batch=16, purge_every=10_000)
    try:
        new = _fill(store, clock, expired=300, live=2)
        assert store.purge() == 300
        assert [r[0] for r in raw_rows(db)] == sorted(new)
    finally:
        store.close()


@pytest.mark.parametrize("deadline", ["soon", float(FAR) + 0.5], ids=["text", "real"])
def test_purge_leaves_a_row_with_a_corrupt_deadline_for_a_person_to_see(
    db: Path, clock: Any, deadline: object
) -> None:
    # The sweep cannot tell when such a row ends: it neither deletes it nor
    # stops on it, and the rows around it are purged as usual.
    store = SQLiteStore(db, clock=clock, purge_batch=2, purge_every=10_000)
    try:
        _fill(store, clock, expired=3, live=0)
        raw_insert(db, {"key": "old:1a", "deadline": deadline})
        assert store.purge() == 3
        assert raw_rows(db) == [("old:1a", "P", "a" * 32, deadline, None, None, 0)]
    finally:
        store.close()


def test_a_row_expiring_exactly_now_is_purged(sqlite_store: SQLiteStore, clock: Any) -> None:
    sqlite_store.claim(KEY, token=token(), lease_ms=500, ttl_ms=500, fingerprint=None)
    clock.advance(499)
    assert sqlite_store.purge() == 0
    clock.advance(1)
    assert sqlite_store.purge() == 1


def test_writes_sweep_expired_rows_a_bounded_batch_at_a_time(db: Path, clock: Any) -> None:
    store = SQLiteStore(db, clock=clock, purge_every=1, purge_batch=2)
    try:
        for i in range(6):
            store.claim(f"old:{i}", token=token(), lease_ms=10, ttl_ms=10, fingerprint=None)
        assert len(store) == 6
        clock.advance(10)
        tok = token()
        store.claim("live", token=tok, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)

        sizes = [len(store)]
        for _ in range(12):
            assert store.renew("live", token=tok, lease_ms=60_000) is True
            sizes.append(len(store))

        # Each write looked at no more than 2 rows, and the sweep came round to all.
        assert all(0 <= a - b <= 2 for a, b in itertools.pairwise(sizes)), sizes
        assert [r[0] for r in raw_rows(db)] == ["live"]
    finally:
        store.close()


def test_a_failing_sweep_does_not_fail_the_write_that_ran_it(
    db: Path, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(db, clock=clock, purge_every=1, purge_batch=8)
    try:
        store.claim("m-old", token=token(), lease_ms=10, ttl_ms=10, fingerprint=None)
        # A trigger makes every delete of a row fail inside SQLite.
        conn = sqlite3.connect(db)
        try:
            conn.execute(
                "CREATE TRIGGER keep_rows BEFORE DELETE ON onceonly "
                "BEGIN SELECT RAISE(ABORT, 'rows are kept'); END"
            )
            conn.commit()
        finally:
            conn.close()
        clock.advance(10)

        # Every write runs a sweep step, and the sweep soon reaches the expired
        # row. Each write is committed before that, so each must report success:
        # a claim taken but reported failed holds its key until the lease ends.
        tokens = {key: token() for key in ("a-1", "z-2", "a-3", "z-4")}
        with caplog.at_level(logging.WARNING, logger="onceonly"):
            claims = [
                store.claim(key, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
                for key, tok in tokens.items()
            ]
            completes = [
                store.complete(key, token=tok, outcome=OUTCOME, ttl_ms=1000)
                for key, tok in tokens.items()
            ]

        assert claims == [Acquired(takeover=False)] * 4
        assert completes == [True] * 4
        assert [store.get(key) for key in tokens] == [
            Record(Status.COMPLETED, tok, clock.now + 1000, None, OUTCOME)
            for tok in tokens.values()
        ]
        swept = [r for r in caplog.records if "rows are kept" in r.getMessage()]
        assert swept
        assert {r.onceonly_outcome for r in swept} == {"sweep_failed"}  # type: ignore[attr-defined]
        assert {r.onceonly_store for r in swept} == {"SQLiteStore"}  # type: ignore[attr-defined]
        # An explicit purge still reports the failure.
        with pytest.raises(IdempotencyStoreError) as caught:
            store.purge()
        assert type(caught.value.__cause__) is sqlite3.IntegrityError
    finally:
        store.close()


# -- connections -----------------------------------------------------------------

# Run in a child process whose open-file limit is 64: each SQLite connection
# holds two or three descriptors, so a store that kept one connection per
# finished thread would run out long before 300 threads.
_MANY_THREADS = """
import asyncio, gc, resource, secrets, sqlite3, sys, threading
from onceonly.stores import AsyncSQLiteStore, SQLiteStore

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
path, kind = sys.argv[1], sys.argv[2]
results = []

def claim(store, i):
    return store.claim(
        f"k{i}", token=secrets.token_hex(16), lease_ms=1000, ttl_ms=1000, fingerprint=None
    )

if kind == "threads":
    store = SQLiteStore(path)
    for i in range(300):
        worker = threading.Thread(target=lambda i=i: results.append(claim(store, i)))
        worker.start()
        worker.join()
else:
    store = AsyncSQLiteStore(path)
    for i in range(300):
        # A new event loop per call (asyncio.run in a Lambda handler): new worker threads.
        results.append(asyncio.run(claim(store, i)))
# Nor do the closed connections' objects: the store keeps only those of live threads.
gc.collect()
alive = sum(isinstance(o, sqlite3.Connection) for o in gc.get_objects())
store.close()
print(len(results), sum(type(r).__name__ == "Acquired" for r in results), alive < 20)
"""


@pytest.mark.parametrize("kind", ["threads", "event-loops"])
def test_connections_of_finished_threads_do_not_pile_up(tmp_path: Path, kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MANY_THREADS, str(tmp_path / "threads.sqlite3"), kind],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert (done.returncode, done.stderr[-2000:], done.stdout) == (0, "", "300 300 True\n")


# -- options and failures ------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", ""])
def test_a_memory_or_empty_path_is_refused(path: str) -> None:
    with pytest.raises(IdempotencyConfigError, match="file path"):
        SQLiteStore(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table": "bad name"}, "table"),
        ({"table": "t; DROP TABLE x"}, "table"),
        ({"table": "1abc"}, "table"),
        ({"table": ""}, "table"),
        ({"busy_timeout_ms": 0}, "busy_timeout_ms"),
        ({"busy_timeout_ms": 1.5}, "busy_timeout_ms"),
        ({"busy_timeout_ms": True}, "busy_timeout_ms"),
        ({"purge_every": 0}, "purge_every"),
        ({"purge_batch": -1}, "purge_batch"),
        ({"synchronous": "FAST"}, "synchronous"),
        ({"synchronous": 1}, "synchronous"),
        ({"clock": 5}, "clock"),
    ],
)
def test_bad_options_are_refused(db: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(IdempotencyConfigError, match=message):
        SQLiteStore(db, **options)
    assert not db.exists()


def test_a_path_that_is_not_a_path_is_refused() -> None:
    with pytest.raises(IdempotencyConfigError):
        SQLiteStore(42)  # type: ignore[arg-type]


def test_bad_options_are_refused_by_the_async_store(db: Path) -> None:
    with pytest.raises(IdempotencyConfigError, match="purge_batch"):
        AsyncSQLiteStore(db, purge_batch=0)
    with pytest.raises(IdempotencyConfigError, match="file path"):
        AsyncSQLiteStore(":memory:")


@pytest.mark.parametrize("synchronous", ["off", "NORMAL", "full", "EXTRA"])
def test_every_synchronous_level_is_accepted(db: Path, synchronous: str) -> None:
    store = SQLiteStore(db, synchronous=synchronous)
    try:
        assert store.claim(KEY, token=token(), lease_ms=10, ttl_ms=10, fingerprint=None) == (
            Acquired()
        )
    finally:
        store.close()


def test_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(IdempotencyStoreError) as caught:
        SQLiteStore(tmp_path / "no" / "such" / "folder" / "db.sqlite3")
    assert type(caught.value.__cause__) is sqlite3.OperationalError
    assert str(caught.value.__cause__) == "unable to open database file"
    assert not (tmp_path / "no").exists()


def test_a_directory_as_the_path_is_a_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IdempotencyStoreError) as caught:
        SQLiteStore(folder)
    assert type(caught.value.__cause__) is sqlite3.OperationalError


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    text = b"this is not an SQLite database, just some text. " * 100
    path.write_bytes(text)
    with pytest.raises(IdempotencyStoreError) as caught:
        SQLiteStore(path)
    assert type(caught.value.__cause__) is sqlite3.DatabaseError
    assert path.read_bytes() == text


def test_an_unreachable_store_is_no_corrupt_record_error(tmp_path: Path) -> None:
    # Callers tell an outage (retry later) from a bad row (delete it) by type.
    with pytest.raises(IdempotencyStoreError) as caught:
        SQLiteStore(tmp_path / "missing" / "db.sqlite3")
    assert not isinstance(caught.value, CorruptRecordError)


def test_found_carries_the_stores_clock(sqlite_store: SQLiteStore, clock: Any) -> None:
    tok = token()
    sqlite_store.claim(KEY, token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
    clock.advance(123)
    result = sqlite_store.claim(KEY, token=token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
    assert result == Found(Record(Status.IN_PROGRESS, tok, clock.now - 123 + 1000), clock.now)


# -- defaults and bounds (mutation survivors, issue 17) ---------------------------------


def test_by_default_every_512th_write_sweeps_the_next_256_keys(db: Path, clock: Any) -> None:
    # The documented defaults of purge_every and purge_batch, seen in the file.
    SQLiteStore(db, clock=clock).close()  # the table
    for i in range(300):
        raw_insert(db, {"key": f"a{i:03d}", "deadline": clock.now - 1})
    store = SQLiteStore(db, clock=clock)
    try:
        tok = token()
        store.claim("z-live", token=tok, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        for _ in range(510):  # writes 2 to 511
            assert store.renew("z-live", token=tok, lease_ms=60_000) is True
        assert len(raw_rows(db)) == 301  # no sweep yet
        assert store.renew("z-live", token=tok, lease_ms=60_000) is True  # write 512
        # The sweep looked at the first 256 keys (all expired) and deleted them.
        assert [r[0] for r in raw_rows(db)] == [f"a{i:03d}" for i in range(256, 300)] + ["z-live"]
    finally:
        store.close()


def test_by_default_a_writer_waits_ten_seconds_and_checkpoints_every_4000_pages(
    sqlite_store: SQLiteStore,
) -> None:
    conn = sqlite_store._conn()  # the store's own connection: its pragmas
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (10_000,)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (4000,)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


class _FlipClock:
    """A clock that reads a claim's holder as live, then as ended, call after call."""

    def __init__(self, now: int, later: int) -> None:
        self.times = (now, later)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.times[(self.calls - 1) % 2]


@pytest.mark.parametrize("later_ms", [1000, 5000], ids=["at-its-deadline", "past-it"])
def test_a_claim_gives_up_after_eight_holders_that_end_as_they_are_read(
    db: Path, clock: Any, later_ms: int
) -> None:
    # Each round the claim finds the key held, then reads the holder ended (its
    # deadline is its last held instant): as if another writer took and dropped
    # it in between. After 8 rounds it stops.
    holder = SQLiteStore(db, clock=clock)
    holder.claim(KEY, token=token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
    holder.close()
    flip = _FlipClock(clock.now, clock.now + later_ms)
    store = SQLiteStore(db, clock=flip)
    try:
        with pytest.raises(
            IdempotencyStoreError, match=r"key svc.handler:77 changed hands 8 times during one"
        ):
            store.claim(KEY, token=token(), lease_ms=1000, ttl_ms=1000, fingerprint=None)
        assert flip.calls == 16  # two readings of the clock per round
    finally:
        store.close()


# Forked in a fresh interpreter of its own: a fork of pytest's process, with
# whatever threads other tests left running, could inherit a held lock.
_FORK = """
import os, secrets, sys
from onceonly.records import Acquired
from onceonly.stores import SQLiteStore

store = SQLiteStore(sys.argv[1])
parent = store._conn()
pid = os.fork()
if pid == 0:
    fresh = store._conn() is not parent
    tok = secrets.token_hex(16)
    took = store.claim("k", token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)
    os._exit(0 if fresh and took == Acquired() else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), store._conn() is parent, store.get("k") is not None)
"""


def test_a_forked_child_opens_its_own_connection(db: Path) -> None:
    # A connection must never cross a fork: the child's first call opens another.
    done = subprocess.run(
        [sys.executable, "-c", _FORK, str(db)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (done.returncode, done.stderr[-2000:], done.stdout) == (0, "", "0 True True\n")


def test_close_closes_the_connections_the_store_opened(sqlite_store: SQLiteStore) -> None:
    conn = sqlite_store._conn()
    sqlite_store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        conn.execute("SELECT 1")


def test_a_failure_other_than_a_lock_says_to_check_the_file(tmp_path: Path) -> None:
    with pytest.raises(IdempotencyStoreError) as caught:
        SQLiteStore(tmp_path / "no" / "db.sqlite3")
    assert str(caught.value) == (
        f"SQLite store {tmp_path / 'no' / 'db.sqlite3'} failed: unable to open database file; "
        "check that the file and its folder exist, are writable and on a local disk"
    )


def test_a_release_counts_as_a_write_for_the_sweep(db: Path, clock: Any) -> None:
    store = SQLiteStore(db, clock=clock, purge_every=2)
    try:
        tok = token()
        store.claim("k", token=tok, lease_ms=1000, ttl_ms=1000, fingerprint=None)  # write 1
        raw_insert(db, {"key": "expired", "deadline": clock.now - 1})
        assert store.release("k", token=tok) is True  # write 2: the sweep runs
        assert raw_rows(db) == []
    finally:
        store.close()


def test_each_sweep_step_goes_on_after_the_last_key_it_looked_at(db: Path, clock: Any) -> None:
    # Five live rows, then an expired one: two keys per step, the third step reaches it.
    SQLiteStore(db, clock=clock).close()  # the table
    for i in range(6):
        raw_insert(db, {"key": f"a{i}", "deadline": clock.now + (-1 if i == 5 else 60_000)})
    store = SQLiteStore(db, clock=clock, purge_every=1, purge_batch=2)
    try:
        tok = token()
        store.claim("z", token=tok, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        left = [len(raw_rows(db))]
        for _ in range(2):
            assert store.renew("z", token=tok, lease_ms=60_000) is True
            left.append(len(raw_rows(db)))
        assert left == [7, 7, 6]  # a0-a1, a2-a3, then a4-a5: a5 goes
        assert "a5" not in [r[0] for r in raw_rows(db)]
    finally:
        store.close()


def test_the_async_store_runs_at_most_8_threads_by_default(db: Path) -> None:
    store = AsyncSQLiteStore(db)
    try:
        assert store.max_workers == 8
    finally:
        store.close()
