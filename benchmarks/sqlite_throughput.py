"""How many claim+complete pairs per second the SQLite store does in one process.

Run: .venv/bin/python benchmarks/sqlite_throughput.py [--n 20000] [--rounds 3]

Prints, per round: store-level claim+complete pairs per second, duplicate
claims per second, decorated first executions and duplicate calls per second
(an ``idempotent_function`` whose body does nothing), and, for reference,
the same two statements in raw sqlite3 without onceonly, so the library's own
cost can be read off beside what SQLite itself takes.
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

LEASE_MS = 60_000
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


def raw_sqlite(path: str, n: int) -> float:
    """The floor: one upsert and one update per pair, autocommit, WAL, no library."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 4000")
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
            mem_first, mem_again = decorated(MemoryStore(), args.n, f"m{r}")
            sqlite_store.close()
            for name, value in (
                ("SQLiteStore claim+complete pairs/s", pairs),
                ("SQLiteStore duplicate claims/s", dups),
                ("decorated, SQLite: first executions/s", first),
                ("decorated, SQLite: duplicate calls/s", again),
                ("raw sqlite3 upsert+update pairs/s (floor)", raw),
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


if __name__ == "__main__":
    main()
