"""Many processes and threads on one SQLite file: every key runs exactly once.

The storm spawns 8 processes, each with its own SQLiteStore on the same file.
500 keys are delivered 4 times each, to 4 random processes at about the same
time, in random order. A delivery that finds the key in progress elsewhere goes back to
the end of its process's queue, as a real queue would redeliver it. Every
execution appends one line to its process's log; the logs must hold each key
exactly once, and every delivery of a key must have got that execution's result.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from onceonly import IdempotencyAlreadyInProgressError, IdempotencyConfig, idempotent_function
from onceonly.records import Acquired, Found, Record, Status
from onceonly.stores import SQLiteStore

PROCESSES = 8
KEYS = 500
COPIES = 4


def _storm_worker(
    db: str, log_path: str, result_path: str, deliveries: list[str], start: Any
) -> None:
    """One consumer process: its own store, its own log, its own queue."""
    store = SQLiteStore(db)
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    @idempotent_function(
        store=store,
        data="message",
        config=IdempotencyConfig(event_key_jmespath="id", key_prefix="storm", lease_seconds=60),
    )
    def handle(message: dict[str, Any]) -> dict[str, Any]:
        log.write(message["id"] + "\n")
        log.flush()
        time.sleep(0.002)  # a little work, so that duplicates find the claim in progress
        return {"id": message["id"], "by": os.getpid()}

    queue = collections.deque({"id": key, "n": i} for i, key in enumerate(deliveries))
    answers: list[list[Any]] = []
    redelivered = 0
    start.wait()
    while queue:
        message = queue.popleft()
        try:
            answer = handle(message)
        except IdempotencyAlreadyInProgressError:
            queue.append(message)
            redelivered += 1
            time.sleep(0.001)
            continue
        answers.append([message["id"], answer["id"], answer["by"]])
    log.close()
    store.close()
    Path(result_path).write_text(
        json.dumps({"pid": os.getpid(), "answers": answers, "redelivered": redelivered})
    )


def _deliveries(keys: list[str], rng: random.Random) -> list[list[str]]:
    """Each key to COPIES distinct processes, at about the same place in each queue.

    The copies of a key then reach their processes at about the same time, so
    they race for the claim rather than queue up behind each other.
    """
    slots: list[list[tuple[float, str]]] = [[] for _ in range(PROCESSES)]
    for i, key in enumerate(keys):
        for p in rng.sample(range(PROCESSES), COPIES):
            slots[p].append((i * COPIES / PROCESSES + rng.uniform(0, 3), key))
    return [[key for _, key in sorted(queue)] for queue in slots]


@pytest.mark.slow
def test_a_storm_of_duplicates_across_processes_runs_each_key_once(tmp_path: Path) -> None:
    db = tmp_path / "storm.sqlite3"
    SQLiteStore(db).close()  # create the file and table once, as a deployment would
    keys = [f"order-{i:04d}" for i in range(KEYS)]
    queues = _deliveries(keys, random.Random(20240501))
    assert sorted(k for q in queues for k in q) == sorted(keys * COPIES)

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    processes = []
    for p in range(PROCESSES):
        args = (str(db), str(tmp_path / f"log-{p}.txt"), str(tmp_path / f"result-{p}.json"))
        proc = ctx.Process(target=_storm_worker, args=(*args, queues[p], start))
        proc.start()
        processes.append(proc)
    start.set()
    for proc in processes:
        proc.join(timeout=300)
    stuck = [proc.pid for proc in processes if proc.is_alive()]
    for proc in processes:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert stuck == []
    assert [proc.exitcode for proc in processes] == [0] * PROCESSES

    executed_by: dict[str, list[int]] = collections.defaultdict(list)
    answers: list[list[Any]] = []
    for p in range(PROCESSES):
        result = json.loads((tmp_path / f"result-{p}.json").read_text())
        for line in (tmp_path / f"log-{p}.txt").read_text().splitlines():
            executed_by[line].append(result["pid"])
        answers += result["answers"]

    # Exactly one execution per key, 500 in all.
    assert sorted(executed_by) == keys
    assert [k for k, runs in executed_by.items() if len(runs) != 1] == []
    # Every delivery was answered, with the result of the one execution.
    assert len(answers) == KEYS * COPIES
    assert collections.Counter(a[0] for a in answers) == dict.fromkeys(keys, COPIES)
    wrong = [a for a in answers if a[1] != a[0] or a[2] != executed_by[a[0]][0]]
    assert wrong == []
    # And the file holds one completed record per key.
    store = SQLiteStore(db)
    try:
        assert len(store) == KEYS
    finally:
        store.close()


def _claim_race(store: SQLiteStore, key: str, threads: int) -> list[Any]:
    tokens = [secrets.token_hex(16) for _ in range(threads)]
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads

    def claim(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.claim(
                key, token=tokens[i], lease_ms=60_000, ttl_ms=60_000, fingerprint=None
            )
        except BaseException as exc:  # reported by the caller's assertions
            results[i] = exc

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [(tokens[i], results[i]) for i in range(threads)]


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_sixteen_threads_racing_for_a_key_acquire_it_once(tmp_path: Path, shared: bool) -> None:
    db = tmp_path / "race.sqlite3"
    store = SQLiteStore(db)
    try:
        for round_ in range(20):
            key = f"race:{round_}"
            if shared:
                outcome = _claim_race(store, key, 16)
            else:
                # Each claim through a fresh store: its own connection, as in another process.
                outcome = _claim_race(_FreshStores(db), key, 16)  # type: ignore[arg-type]
            winners = [tok for tok, result in outcome if result == Acquired(takeover=False)]
            assert len(winners) == 1, outcome
            record = store.get(key)
            assert record is not None
            assert (record.status, record.token) == (Status.IN_PROGRESS, winners[0])
            losers = [result for tok, result in outcome if tok != winners[0]]
            assert [type(r) for r in losers] == [Found] * 15
            assert {r.record for r in losers} == {record}
    finally:
        store.close()


class _FreshStores:
    """Claims through a new SQLiteStore each time (a new connection per claim)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def claim(self, key: str, **kwargs: Any) -> Any:
        store = SQLiteStore(self.path)
        try:
            return store.claim(key, **kwargs)
        finally:
            store.close()


def test_a_record_from_one_process_is_seen_by_another(tmp_path: Path) -> None:
    db = tmp_path / "two.sqlite3"
    ctx = multiprocessing.get_context("spawn")
    tok = secrets.token_hex(16)
    proc = ctx.Process(target=_claim_and_complete, args=(str(db), tok))
    proc.start()
    proc.join(timeout=120)
    if proc.is_alive():
        proc.kill()
        proc.join()
    assert proc.exitcode == 0

    store = SQLiteStore(db)
    try:
        record = store.get("cross:1")
        assert record is not None
        assert (record.status, record.token, record.outcome) == (
            Status.COMPLETED,
            tok,
            b'j"from the child"',
        )
        assert type(record) is Record
    finally:
        store.close()


def _claim_and_complete(db: str, tok: str) -> None:
    store = SQLiteStore(db)
    assert store.claim("cross:1", token=tok, lease_ms=1000, ttl_ms=60_000, fingerprint=None) == (
        Acquired()
    )
    done = store.complete("cross:1", token=tok, outcome=b'j"from the child"', ttl_ms=60_000)
    assert done is True
    store.close()
