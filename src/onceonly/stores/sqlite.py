"""The embedded default store: one SQLite file, safe across threads and processes.

One table keyed by the idempotency key holds the encoded record and its
deadline. Every operation is one ``BEGIN IMMEDIATE`` transaction (read,
decide with the shared rules, write), so two processes on one host never both
take a key. WAL mode lets readers go on while one writer commits; the busy
timeout makes writers queue instead of failing. Expired rows are purged in
bounded batches every few hundred writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import codec
from ..errors import IdempotencyConfigError, IdempotencyStoreError
from ..records import ClaimResult, Record
from . import _rules
from .protocol import check_claim, check_complete, check_key, check_ms, check_token, wall_ms

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SQLiteStore:
    """A store in one SQLite file.

    Args:
        path: The database file (created with its folder's permissions if absent).
        table: Table name.
        busy_timeout_ms: How long a writer waits for another process's lock.
        synchronous: SQLite ``synchronous`` pragma. ``NORMAL`` (default) in WAL
            mode survives a process crash but may lose the last commits on
            power loss; ``FULL`` survives power loss at some speed.
        purge_every: Purge expired rows once per this many writes.
        purge_batch: At most this many rows per purge.
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
            ("purge_every", purge_every),
            ("purge_batch", purge_batch),
        ):
            if type(value) is not int or value < 1:
                raise IdempotencyConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if clock is not None and not callable(clock):
            raise IdempotencyConfigError("clock must be a callable returning integer milliseconds")
        self.path = Path(path)
        self.table = table
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous.upper()
        self._purge_every = purge_every
        self._purge_batch = purge_batch
        self._clock = clock or wall_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writes = 0
        t = table
        self._sql_get = f"SELECT value FROM {t} WHERE key = ?"
        self._sql_put = f"INSERT OR REPLACE INTO {t} (key, expires_at, value) VALUES (?, ?, ?)"
        self._sql_del = f"DELETE FROM {t} WHERE key = ?"
        self._sql_purge = (
            f"DELETE FROM {t} WHERE key IN (SELECT key FROM {t} WHERE expires_at <= ? LIMIT ?)"
        )
        self._guard(self._setup)

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 connections must not
        # cross a fork, and per-thread ones need no Python-side locking.
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.conn = self._connect()
            local.pid = pid
        conn: sqlite3.Connection = local.conn
        return conn

    def _setup(self) -> None:
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise IdempotencyStoreError(
                f"SQLite store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                "put the file on a local disk"
            )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} "
            "(key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, value BLOB NOT NULL)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.table}_expires ON {self.table} (expires_at)"
        )

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def _guard(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except sqlite3.Error as exc:
            raise IdempotencyStoreError(
                f"SQLite store {self.path} failed: {exc}; check that the file and its folder "
                "exist, are writable and on a local disk"
            ) from exc

    def _transaction(self, body: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``body(conn, now)`` inside BEGIN IMMEDIATE ... COMMIT."""

        def run() -> T:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The clock is read under the write lock, so the order of
                # decisions across processes follows the order of their times.
                result = body(conn, self._clock())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return self._guard(run)

    def _read(self, conn: sqlite3.Connection, key: str) -> Record | None:
        row = conn.execute(self._sql_get, (key,)).fetchone()
        return None if row is None else codec.decode(row[0])

    def _write(self, conn: sqlite3.Connection, key: str, record: Record) -> None:
        conn.execute(self._sql_put, (key, record.deadline_ms, codec.encode(record)))
        self._writes += 1

    def _maybe_purge(self) -> None:
        if self._writes >= self._purge_every:
            self._writes = 0
            self.purge(limit=self._purge_batch)

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

        def body(conn: sqlite3.Connection, now: int) -> ClaimResult:
            new, result = _rules.claim(
                self._read(conn, key), now, token=token, lease_ms=lease_ms, fingerprint=fingerprint
            )
            if new is not None:
                self._write(conn, key, new)
            return result

        result = self._transaction(body)
        self._maybe_purge()
        return result

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        check_complete(key, token, outcome, ttl_ms)

        def body(conn: sqlite3.Connection, now: int) -> bool:
            new = _rules.complete(
                self._read(conn, key), now, token=token, outcome=outcome, ttl_ms=ttl_ms
            )
            if new is None:
                return False
            self._write(conn, key, new)
            return True

        return self._transaction(body)

    def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it."""
        check_key(key)
        check_token(token)

        def body(conn: sqlite3.Connection, now: int) -> bool:
            if not _rules.owns(self._read(conn, key), now, token):
                return False
            conn.execute(self._sql_del, (key,))
            return True

        return self._transaction(body)

    def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        check_key(key)
        check_token(token)
        check_ms("lease_ms", lease_ms)

        def body(conn: sqlite3.Connection, now: int) -> bool:
            new = _rules.renew(self._read(conn, key), now, token=token, lease_ms=lease_ms)
            if new is None:
                return False
            self._write(conn, key, new)
            return True

        return self._transaction(body)

    def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None.

        Raises:
            CorruptRecordError: The row under the key is not a record.
        """
        check_key(key)

        def run() -> Record | None:
            record = self._read(self._conn(), key)
            return record if _rules.is_live(record, self._clock()) else None

        return self._guard(run)

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever it holds (a corrupt row too); True if a row was there."""
        check_key(key)
        return self._guard(lambda: self._conn().execute(self._sql_del, (key,)).rowcount > 0)

    # -- maintenance -------------------------------------------------------

    def purge(self, *, limit: int | None = None) -> int:
        """Delete expired rows, at most ``limit`` (all when None); return how many."""
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValueError("limit must be None or an integer >= 1")

        def run() -> int:
            cursor: Any = self._conn().execute(self._sql_purge, (self._clock(), limit or -1))
            return int(cursor.rowcount)

        return self._guard(run)

    def __len__(self) -> int:
        """Number of rows, expired ones not yet purged included."""
        return self._guard(
            lambda: int(self._conn().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])
        )


class AsyncSQLiteStore:
    """The asyncio twin of :class:`SQLiteStore`: each operation runs in a worker thread.

    SQLite has no async interface; ``asyncio.to_thread`` keeps its blocking
    calls (and busy waits on another process's lock) off the event loop.

    Args:
        path: As for :class:`SQLiteStore`, with the same keyword options.
    """

    def __init__(self, path: str | os.PathLike[str], **options: Any) -> None:
        self.sync = SQLiteStore(path, **options)

    async def claim(
        self, key: str, *, token: str, lease_ms: int, ttl_ms: int, fingerprint: str | None
    ) -> ClaimResult:
        """Take the key, or return the live record that holds it."""
        return await asyncio.to_thread(
            self.sync.claim,
            key,
            token=token,
            lease_ms=lease_ms,
            ttl_ms=ttl_ms,
            fingerprint=fingerprint,
        )

    async def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        """Store the outcome if ``token`` still holds the claim."""
        return await asyncio.to_thread(
            self.sync.complete, key, token=token, outcome=outcome, ttl_ms=ttl_ms
        )

    async def release(self, key: str, *, token: str) -> bool:
        """Drop the claim if ``token`` still holds it."""
        return await asyncio.to_thread(self.sync.release, key, token=token)

    async def renew(self, key: str, *, token: str, lease_ms: int) -> bool:
        """Extend the lease if ``token`` still holds the claim."""
        return await asyncio.to_thread(self.sync.renew, key, token=token, lease_ms=lease_ms)

    async def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or None."""
        return await asyncio.to_thread(self.sync.get, key)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a row was there."""
        return await asyncio.to_thread(self.sync.delete, key)

    def close(self) -> None:
        """Close the underlying connections."""
        self.sync.close()
