"""Graceful shutdown: stopped mid-batch, a consumer leaves nothing half-done.

Every entry is then either APPLIED and acknowledged, or still pending with no
effect written: the handlers already running finish and are committed, the
rest of the batch is left for a restart or another consumer's reclaim.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from streams_support import ScoreHandler, names, pending_ids, points, worker_address, worker_env

import redis_harness as harness
from onceonly.streams import AsyncStreamConsumer, Effects, EntryStatus, StreamConsumer, StreamEntry
from testkit import RedisFarm

HERE = Path(__file__).resolve().parent
USERS = [f"u{i}" for i in range(10)]


def _add_batch(client: Any, stream: str) -> list[str]:
    # One user per entry: each entry's effect can be checked on its own.
    return [client.xadd(stream, {"user": u, "points": 1}).decode() for u in USERS]


def _nothing_half_done(client: Any, stream: str, group: str, ids: list[str], done: int) -> None:
    """The first ``done`` entries applied and acked; the others pending, nothing written."""
    user = stream.replace(":events", ":user:")
    assert [points(client, user, u) for u in USERS] == [1] * done + [0] * (len(USERS) - done)
    assert pending_ids(client, stream, group) == ids[done:]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_sigterm_mid_batch_finishes_the_entry_in_hand_and_leaves_the_rest_pending(
    client: Any,
    topology: str,
    flavour: str,
    redis_engine: harness.Engine,
    redis_farm: RedisFarm,
) -> None:
    stream, _, _, group = names()
    ids = _add_batch(client, stream)
    address = worker_address(topology, redis_engine, redis_farm)
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "shutdown_worker.py"), topology, address, stream, group,
         flavour],
        env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "READY"  # in the third entry's handler
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    report = json.loads(out)
    assert report == {"handled": ids[:3], "restored": True}
    _nothing_half_done(client, stream, group, ids, 3)


def test_stop_from_a_handler_commits_what_was_handled(client: Any) -> None:
    stream, user, lb, group = names()
    ids = _add_batch(client, stream)
    score = ScoreHandler(user, lb)
    consumer: StreamConsumer

    def handler(entry: StreamEntry) -> Effects:
        if len(score.calls) == 1:
            consumer.stop()  # while handling the second entry
        return score(entry)

    consumer = StreamConsumer(
        client, stream=stream, group=group, handler=handler, consumer="c", block_ms=0
    )
    results = consumer.run_once()
    assert [(r.id, r.status) for r in results] == [(i, EntryStatus.APPLIED) for i in ids[:2]]
    _nothing_half_done(client, stream, group, ids, 2)
    assert consumer.stopping
    assert consumer.run_once() == []  # stopped: nothing new is read
    assert score.calls == ids[:2]


def test_stop_in_the_async_consumer_leaves_unstarted_handlers_pending(
    client: Any, topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    from test_async_consumer import _async_client, _close

    stream, user, lb, group = names()
    ids = _add_batch(client, stream)
    score = ScoreHandler(user, lb)

    async def main() -> list[Any]:
        aclient = _async_client(topology, redis_engine, redis_farm)
        consumer: AsyncStreamConsumer

        async def handler(entry: StreamEntry) -> Effects:
            if entry.id == ids[1]:
                consumer.stop()  # the first two handlers are running (concurrency 2)
            await asyncio.sleep(0)
            return score(entry)

        try:
            consumer = AsyncStreamConsumer(
                aclient, stream=stream, group=group, handler=handler, consumer="c",
                block_ms=0, concurrency=2,
            )  # fmt: skip
            await asyncio.wait_for(consumer.run(), 60)  # returns after the batch in hand
            return score.calls
        finally:
            await _close(aclient)

    assert asyncio.run(main()) == ids[:2]
    # Two handlers were running (concurrency 2) when stop came: both committed.
    _nothing_half_done(client, stream, group, ids, 2)
