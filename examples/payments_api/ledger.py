"""The payments example's ledger: one SQLite table of charges, shared by both apps.

A charge is the effect that must happen once per payment. The ledger is
separate from the idempotency store, as a real payment provider would be.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path


class Ledger:
    """Charges in a SQLite file; safe to use from several threads.

    Args:
        path: The database file.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS charges ("
            "id INTEGER PRIMARY KEY, payment TEXT NOT NULL, cents INTEGER NOT NULL)"
        )
        self._lock = threading.Lock()

    def charge(self, payment: str, cents: int) -> int:
        """Record a charge; returns its id."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO charges (payment, cents) VALUES (?, ?)", (payment, cents)
            )
            return int(cursor.lastrowid or 0)

    def counts(self) -> tuple[int, int]:
        """(charges made, distinct payments charged)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT payment) FROM charges"
            ).fetchone()
            return int(row[0]), int(row[1])

    def close(self) -> None:
        self._db.close()


def is_slow(payment: str, every: int = 4) -> bool:
    """Whether this payment's response is held back (a slow downstream), 1 in ``every``.

    Decided by the payment's id, so a retry of it is slow again: the client's
    timeout fires on the first try of these, after the charge was made.
    """
    return hashlib.sha256(payment.encode()).digest()[0] % every == 0
