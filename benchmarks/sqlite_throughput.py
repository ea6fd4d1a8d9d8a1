"""How many claim+complete pairs per second the SQLite store does in one process.

Run: .venv/bin/python benchmarks/sqlite_throughput.py [--n 20000] [--rounds 3]

Prints, per round: store-level claim+complete pairs per second, duplicate
claims per second, decorated first executions and duplicate calls per second
(an ``idempotent_function`` whose body does nothing), and, for reference,
raw sqlite3 without onceonly: the store's own two statements (claim, complete)
on a plain connection (the goal: the store at >= 0.9 x of that), and a
minimal upsert and update (the floor), so the library's own cost can be read
off beside what SQLite itself takes.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.records import encode_outcome, new_token
from onceonly.stores import MemoryStore, SQLiteStore
from onceonly.stores.protocol import wall_ms

LEASE_MS = 60_000
GOAL = 0.9
PAIRS = "SQLiteStore claim+complete pairs/s"
SAME = "raw sqlite3, the store's two statements, pairs/s"
FLOOR = "raw sqlite3 minimal upsert+update pairs/s (floor)"
TTL_MS = 3_600_000


def store_pairs(store: SQLiteStore | MemoryStore, n: int, tag: str) -> tuple[float, float]:
    outcome = encode_outcome({"ok": True, "charge": 1234})
    tokens = [new_token() for _ in range(n)]
    keys = [f"bench.{tag}:{i:064x}" for i in range(n)]
    start = time.perf_counter()
    for key, token in zip(keys, tokens, strict=True):
        store.claim(key, token=token, lease_ms=LEASE_MS, ttl_ms=TTL_MS, fingerprint=None)
        store.complete(key, token=token, outcome=outcome, ttl_ms=TTL_MS)
    pairs = n / (time.perf_counter() - start)
    other = new_token()
    start = time.perf_counter()
    for key in keys:
        store.claim(key, token=other, lease_ms=LEASE_MS, ttl_ms=TTL_MS, fingerprint=None)
    return pairs, n / (time.perf_counter() - start)


def decorated(store: SQLiteStore | MemoryStore, n: int, tag: str) -> tuple[float, float]:
    @idempotent_function(store=store, data="order", config=IdempotencyConfig(key_prefix=tag))
    def process(order: dict[str, int]) -> dict[str, int]:
        return {"charged": order["id"]}

    orders = [{"id": i} for i in range(n)]
    start = time.perf_counter()
    for order in orders:
        process(order)
    first = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for order in orders:
        process(order)
    return first, n / (time.perf_counter() - start)


def _raw_connection(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: one commit each
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 4000")
    return conn


def raw_sqlite(path: str, n: int) -> float:
    """The floor: a minimal upsert and update per pair, autocommit, WAL, no library."""
    conn = _raw_connection(path)
    conn.execute(
        "CREATE TABLE t (key TEXT PRIMARY KEY, status TEXT, token TEXT, deadline INTEGER, "
        "outcome BLOB) WITHOUT ROWID"
    )
    token = new_token()
    start = time.perf_counter()
    for i in range(n):
        key = f"raw:{i:064x}"
        conn.execute(
            "INSERT INTO t VALUES (?, 'P', ?, ?, NULL) ON CONFLICT (key) DO UPDATE SET "
            "status = 'P' WHERE t.deadline <= ? RETURNING 1",
            (key, token, i, i),
        ).fetchall()
        conn.execute(
            "UPDATE t SET status = 'C', outcome = ? WHERE key = ? AND token = ?",
            (b'j{"ok":true}', key, token),
        )
    conn.close()
    return n / (time.perf_counter() - start)


def raw_store_statements(path: str, n: int) -> float:
    """Raw sqlite3 running the store's own claim and complete statements (the goal's peer).

    The table and the two statements are the store's (read from a store made
    on the file, then closed); the loop runs them on a plain connection with
    the same pragmas, the same parameters and the same clock reads, and no
    onceonly code: what is left between this row and the store's is the
    library's own Python.
    """
    store = SQLiteStore(path)
    claim_sql, complete_sql = store._sql_claim, store._sql_complete
    store.close()
    conn = _raw_connection(path)
    outcome = encode_outcome({"ok": True, "charge": 1234})
    tokens = [new_token() for _ in range(n)]
    keys = [f"raw.{i:064x}" for i in range(n)]
    start = time.perf_counter()
    for key, token in zip(keys, tokens, strict=True):
        conn.execute(claim_sql, (key, token, wall_ms(), LEASE_MS, None)).fetchall()
        conn.execute(complete_sql, (key, token, wall_ms(), TTL_MS, outcome))
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            # Interleaved rounds, each on fresh files, so drift hits every row alike.
            sqlite_store = SQLiteStore(os.path.join(tmp, f"store{r}.sqlite3"))
            pairs, dups = store_pairs(sqlite_store, args.n, f"s{r}")
            first, again = decorated(sqlite_store, args.n, f"d{r}")
            raw = raw_sqlite(os.path.join(tmp, f"raw{r}.sqlite3"), args.n)
            same = raw_store_statements(os.path.join(tmp, f"same{r}.sqlite3"), args.n)
            mem_first, mem_again = decorated(MemoryStore(), args.n, f"m{r}")
            sqlite_store.close()
            for name, value in (
                (PAIRS, pairs),
                ("SQLiteStore duplicate claims/s", dups),
                ("decorated, SQLite: first executions/s", first),
                ("decorated, SQLite: duplicate calls/s", again),
                (SAME, same),
                (FLOOR, raw),
                ("decorated, MemoryStore: first executions/s", mem_first),
                ("decorated, MemoryStore: duplicate calls/s", mem_again),
            ):
                rows.setdefault(name, []).append(value)
    width = max(map(len, rows))
    print(
        f"{'':{width}}  {'median':>9}  {'min':>9}  {'max':>9}   (n={args.n}, rounds={args.rounds})"
    )
    for name, values in rows.items():
        print(
            f"{name:{width}}  {statistics.median(values):9.0f}  {min(values):9.0f}  "
            f"{max(values):9.0f}"
        )
    # The goal's ratio: per round (the rows of one round ran back to back), then the median.
    ratios = [a / b for a, b in zip(rows[PAIRS], rows[SAME], strict=True)]
    ratio = statistics.median(ratios)
    floor = statistics.median(a / b for a, b in zip(rows[PAIRS], rows[FLOOR], strict=True))
    print(
        f"\nSQLiteStore pairs / raw sqlite3 with the store's statements: {ratio:.2f} x "
        f"(goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}); "
        f"/ the minimal floor: {floor:.2f} x"
    )


if __name__ == "__main__":
    main()
