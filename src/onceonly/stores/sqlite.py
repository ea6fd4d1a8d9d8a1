"""The embedded default store: one SQLite file, safe across threads and processes.

One table keyed by the idempotency key holds each record's fields. Every write
is one SQL statement, so one transaction: the claim is an ``INSERT ... ON
CONFLICT DO UPDATE ... WHERE`` that takes the key only when it is absent,
expired, or held under the caller's own token, and ``complete`` / ``renew`` /
``release`` are single statements conditioned on status, token and lease (the
fencing token). Two processes on one host therefore never both take a key.
WAL mode lets readers go on while one writer commits; the busy timeout makes
writers queue instead of failing. Expired rows are purged by a sweep that
walks the key space a bounded batch at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import codec
from ..errors import IdempotencyConfigError, IdempotencyStoreError
from ..metrics import log_extra
from ..records import Acquired, ClaimResult, Found, Record, Status
from ._threaded import InThreadStore
from .protocol import check_claim, check_complete, check_key, check_ms, check_token, wall_ms

__all__ = ["AsyncSQLiteStore", "SQLiteStore"]

T = TypeVar("T")

logger = logging.getLogger("onceonly")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_COLUMNS = "status, token, deadline, fingerprint, outcome"
# A claim that finds a row which then vanishes before it is read tries again;
# each retry means another writer made progress, so a few always suffice.
_CLAIM_ATTEMPTS = 8

# This process's id, kept current across fork() without a getpid() call per
# operation: connections opened by a parent must never be used by its child.
_pid = os.getpid()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY)."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)  # 3.11+; 3.10: the message only
    if code is None:
        return str(exc).startswith("database is locked")
    return code & 0xFF == 5  # SQLITE_BUSY and its extended codes


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class SQLiteStore:
    """A store in one SQLite file.

    Args:
        path: The database file (created if absent; its folder must exist).
        table: Table name.
        busy_timeout_ms: How long a writer waits for another process's lock.
        synchronous: SQLite ``synchronous`` pragma. ``NORMAL`` (default) in WAL
            mode survives a process crash but may lose the last commits on
            power loss; ``FULL`` survives power loss at some speed.
        wal_autocheckpoint: Pages of WAL between checkpoints (each checkpoint
            syncs to disk, so fewer and larger ones are faster).
        purge_every: Sweep for expired rows once per this many writes.
        purge_batch: Rows looked at per sweep step.
        clock: Integer milliseconds since the epoch; the host clock by default.

    Raises:
        IdempotencyConfigError: An option is out of range, or the path is ``:memory:``.
        IdempotencyStoreError: The file cannot be opened or set up.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "onceonly",
        busy_timeout_ms: int = 10_000,
        synchronous: str = "NORMAL",
        wal_autocheckpoint: int = 4000,
        purge_every: int = 512,
        purge_batch: int = 256,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or str(path) in ("", ":memory:"):
            raise IdempotencyConfigError(
                "SQLiteStore needs a file path (':memory:' is private to one connection; "
                "use MemoryStore for an in-process store)"
            )
        if not isinstance(table, str) or _IDENTIFIER.fullmatch(table) is None:
            raise IdempotencyConfigError(f"table must be a plain SQL identifier, got {table!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise IdempotencyConfigError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        for name, value in (
            ("busy_timeout_ms", busy_timeout_ms),
            ("wal_autocheckpoint", wal_autocheckpoint),
            ("purge_every", purge_every),
            ("purge_batch", purge_batch),
        ):
            if type(value) is not int or value < 1:
                raise IdempotencyConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be a callable returning integer milliseconds")
        self.path = Path(path)
        self.table = table
        self._name = f"SQLite store {self.path} (table {table})"
        self._pragmas = (
            f"PRAGMA busy_timeout = {busy_timeout_ms}",
            f"PRAGMA synchronous = {synchronous.upper()}",
            f"PRAGMA wal_autocheckpoint = {wal_autocheckpoint}",
        )
        self._busy_timeout_ms = busy_timeout_ms
        self._purge_every = purge_every
        self._purge_batch = purge_batch
        self._clock = clock or wall_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._owners: dict[sqlite3.Connection, tuple[int, threading.Thread]] = {}
        self._connections_lock = threading.Lock()
        self._writes = 0
        self._sweep_after = ""
        t = table
        # The same rules as stores/_rules.py, in SQL. ?3 is now. A row that is
        # not a valid record (codec.from_fields, in SQL) is never taken, whatever
        # its deadline says: the claim then reads it and raises CorruptRecordError.
        valid = (
            f"{t}.status IN ('P', 'C') AND typeof({t}.token) = 'text' "
            f"AND length({t}.token) = 32 AND {t}.token NOT GLOB '*[^0-9a-f]*' "
            f"AND typeof({t}.deadline) = 'integer' AND {t}.deadline >= 0 "
            f"AND ({t}.fingerprint IS NULL OR (typeof({t}.fingerprint) = 'text' "
            f"AND length({t}.fingerprint) BETWEEN 1 AND 128 "
            f"AND {t}.fingerprint NOT GLOB '*[^0-9a-f]*')) "
            f"AND CASE {t}.status WHEN 'P' THEN {t}.outcome IS NULL "
            f"ELSE typeof({t}.outcome) = 'blob' AND length({t}.outcome) > 0 END"
        )
        self._sql_claim = (
            f"INSERT INTO {t} (key, status, token, deadline, fingerprint, outcome, took_over) "
            "VALUES (?1, 'P', ?2, ?3 + ?4, ?5, NULL, 0) "
            "ON CONFLICT (key) DO UPDATE SET status = 'P', token = excluded.token, "
            "deadline = excluded.deadline, fingerprint = excluded.fingerprint, outcome = NULL, "
            f"took_over = ({t}.status = 'P' AND {t}.token <> excluded.token) "
            f"WHERE ({t}.deadline <= ?3 OR ({t}.status = 'P' AND {t}.token = excluded.token)) "
            f"AND {valid} "
            "RETURNING took_over"
        )
        self._sql_get = f"SELECT {_COLUMNS} FROM {t} WHERE key = ?"
        owned = "key = ?1 AND status = 'P' AND token = ?2 AND deadline > ?3"
        # A complete retried after its reply was lost (same token, already
        # COMPLETED) matches too and changes nothing.
        self._sql_complete = (
            f"UPDATE {t} SET deadline = CASE status WHEN 'P' THEN ?3 + ?4 ELSE deadline END, "
            "outcome = CASE status WHEN 'P' THEN ?5 ELSE outcome END, "
            "status = 'C', took_over = 0 "
            "WHERE key = ?1 AND token = ?2 AND deadline > ?3 AND status IN ('P', 'C')"
        )
        self._sql_renew = f"UPDATE {t} SET deadline = ?3 + ?4 WHERE {owned}"
        self._sql_release = f"DELETE FROM {t} WHERE {owned}"
        # Whether anything still holds the key: a live row, or one that is not a record.
        self._sql_held = (
            f"SELECT count(*) FROM {t} "
            "WHERE key = ?1 AND NOT (typeof(deadline) = 'integer' AND deadline <= ?2)"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = ?"
        self._sql_window = f"SELECT key, deadline FROM {t} WHERE key > ? ORDER BY key LIMIT ?"
        self._sql_purge_one = f"DELETE FROM {t} WHERE key = ? AND deadline <= ?"
        self._guard(self._setup)

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # The busy timeout is set by the first of the pragmas below.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,
        )
        for pragma in self._pragmas:
            conn.execute(pragma)
        with self._connections_lock:
            # Close the connections of this process's finished threads: a thread
            # per request (or a new event loop's workers) would otherwise leave
            # one open file per thread behind, until the process runs out.
            finished = [
                c for c, (pid, t) in self._owners.items() if pid == _pid and not t.is_alive()
            ]
            for old in finished:
                del self._owners[old]
                self._connections.remove(old)
            self._connections.append(conn)
            self._owners[conn] = (_pid, threading.current_thread())
        for old in finished:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        return conn

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 connections must not
        # cross a fork, and per-thread ones need no Python-side locking.
        local = self._local
        if getattr(local, "pid", None) != _pid:
            local.conn = self._connect()
            local.pid = _pid
        conn: sqlite3.Connection = local.conn
        return conn

    def _setup(self) -> None:
        conn = self._conn()
        mode = self._switch_to_wal(conn)
        if str(mode).lower() != "wal":
            raise IdempotencyStoreError(
                f"SQLite store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                "put the file on a local disk"
            )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (key TEXT PRIMARY KEY, "
            "status TEXT NOT NULL, token TEXT NOT NULL, deadline INTEGER NOT NULL, "
            "fingerprint TEXT, outcome BLOB, took_over INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
        )

    def _switch_to_wal(self, conn: sqlite3.Connection) -> object:
        """Put the file in WAL mode, waiting up to the busy timeout for other writers.

        Returns:
            The journal mode SQLite reports afterwards.

        Raises:
            sqlite3.OperationalError: The file stayed locked for the whole busy
                timeout, or the switch failed for another reason.
        """
        # SQLite answers "database is locked" at once, without its busy handler,
        # when another connection holds a write lock on a file still in rollback
        # mode: several processes starting together on a new file race here.
        # The busy timeout is the wait the user allowed, so spend it retrying.
        give_up = time.monotonic() + self._busy_timeout_ms / 1000
        pause = 0.002
        while True:
            try:
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + pause > give_up:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._owners = {}
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def _guard(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: sqlite3.Error) -> IdempotencyStoreError:
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return IdempotencyStoreError(
                f"SQLite store {self.path} failed: {exc}; another connection held the file "
                f"for longer than busy_timeout_ms ({self._busy_timeout_ms} ms): find what "
                "holds it, or raise busy_timeout_ms"
            )
        return IdempotencyStoreError(
            f"SQLite store {self.path} failed: {exc}; check that the file and its folder "
            "exist, are writable and on a local disk"
        )

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= self._purge_every:
            self._writes = 0
            try:
                self._sweep(self._purge_batch)
            except sqlite3.Error as exc:
                # The write is committed already: a failed sweep must not report
                # it as failed (a claim taken but reported lost blocks its key).
                logger.warning(
                    "onceonly: sweep of expired rows in %s failed (%s)",
                    self.path,
                    exc,
                    extra=log_extra(None, None, "sweep_failed", "SQLiteStore"),
                )

    def _read(self, conn: sqlite3.Connection, key: str) -> Record | None:
        row = conn.execute(self._sql_get, (key,)).fetchone()
        return None if row is None else codec.from_fields(*row, store=self._name)

    # -- the protocol ------------------------------------------------------

    def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it (see the protocol).

        Raises:
            CorruptRecordError: The row under the key is not a record.
            IdempotencyStoreError: SQLite failed.
        """
        check_claim(key, token, lease_ms, ttl_ms, fingerprint)
        # The hot paths (claim, complete) catch sqlite3.Error inline rather than
        # through _guard: a closure per call costs more than the rest of the
        # Python side of a claim (benchmarks/sqlite_throughput.py).
        try:
            conn = self._conn()
            for _ in range(_CLAIM_ATTEMPTS):
                rows = conn.execute(
                    self._sql_claim, (key, token, self._clock(), lease_ms, fingerprint)
                ).fetchall()
                if rows:
                    self._wrote()
                    return Acquired(takeover=rows[0][0] == 1)
                # The key is held. Read the holder; a live record other than our
                # own claim is the answer as of this read. If it ended meanwhile,
                # claim again.
                record = self._read(conn, key)
                now = self._clock()
                if (
                    record is not None
                    and record.deadline_ms > now
                    and (record.status is Status.COMPLETED or record.token != token)
                ):
                    return Found(record, now)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        raise IdempotencyStoreError(
            f"SQLite store {self.path}: key {key} changed hands {_CLAIM_ATTEMPTS} times "
            "during one claim; retry"
        )

    def _owned_write(self, sql: str, key: str, token: str, *values: object) -> bool:
        try:
            changed = self._conn().execute(sql, (key, token, self._clock(), *values)).rowcount
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        if changed == 1:
            self._wrote()
        return changed == 1

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        check_complete(key, token, outcome, ttl_ms)
        return self._owned_write(self._sql_complete, key, token, ttl_ms, outcome)

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it; True too when no live record is left."""
        check_key(key)
        check_token(token)

        def run() -> bool:
            conn, now = self._conn(), self._clock()
            if conn.execute(self._sql_release, (key, token, now)).rowcount == 1:
                self._wrote()
                return True
            # Nothing of ours to drop. With no live row left (a release retried
            # after its reply was lost), the release has done its job.
            (held,) = conn.execute(self._sql_held, (key, now)).fetchone()
            return bool(held == 0)

        return self._guard(run)

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)
        return self._owned_write(self._sql_renew, key, token, lease_ms)

    def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None.

        Raises:
            CorruptRecordError: The row under the key is not a record.
        """
        check_key(key)

        def run() -> Record | None:
            record = self._read(self._conn(), key)
            return record if record is not None and record.deadline_ms > self._clock() else None

        return self._guard(run)

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds (a corrupt row too); True if a row was there."""
        check_key(key)
        return self._guard(lambda: self._conn().execute(self._sql_delete, (key,)).rowcount > 0)

    # -- maintenance -------------------------------------------------------

    def _sweep(self, batch: int) -> tuple[int, bool]:
        """Look at the next ``batch`` keys, delete the expired ones; (deleted, wrapped)."""
        conn = self._conn()
        window = conn.execute(self._sql_window, (self._sweep_after, batch)).fetchall()
        if not window:
            self._sweep_after = ""
            return 0, True
        self._sweep_after = window[-1][0]
        now = self._clock()
        expired = [(k, now) for k, deadline in window if type(deadline) is int and deadline <= now]
        deleted = 0
        if expired:
            # The deadline is checked again in the DELETE: a row re-claimed since
            # the window was read is left alone.
            conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = conn.executemany(self._sql_purge_one, expired).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return deleted, len(window) < batch

    def purge(self) -> int:
        """Delete every expired row, a batch per transaction; return how many went.

        Raises:
            IdempotencyStoreError: SQLite failed.
        """

        def run() -> int:
            self._sweep_after = ""
            total = 0
            while True:
                deleted, wrapped = self._sweep(self._purge_batch)
                total += deleted
                if wrapped:
                    self._sweep_after = ""
                    return total

        return self._guard(run)

    def __len__(self) -> int:
        """Number of rows, expired ones not yet purged included."""
        return self._guard(
            lambda: int(self._conn().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])
        )


class AsyncSQLiteStore(InThreadStore):
    """The asyncio twin of :class:`SQLiteStore`: each operation runs on the store's own threads.

    SQLite has no async interface; a bounded pool of threads of this store's
    own (named ``onceonly-sqlite-N``, made on first use) keeps its blocking
    calls, and busy waits on another process's lock, off the event loop and
    out of asyncio's default executor, which the application's own
    ``asyncio.to_thread`` work may fill. Each thread opens its own connection.

    Args:
        path: As for :class:`SQLiteStore`, with the same keyword options.
        max_workers: The most threads (and so connections) the store uses at
            once (default 8). SQLite commits one write at a time per file, so
            more threads mostly wait on its lock.

    Raises:
        IdempotencyConfigError: A bad option (as for :class:`SQLiteStore`),
            or ``max_workers`` not an integer from 1 to 1024.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_workers: int = 8, **options: Any
    ) -> None:
        self._init_threads(max_workers, "sqlite")
        self.sync = SQLiteStore(path, **options)
