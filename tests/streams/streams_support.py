"""Helpers of the stream tests (imported by name): names, handlers, readings of server state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onceonly.streams import Effects, StreamEntry

if TYPE_CHECKING:
    import redis_harness as harness
    from testkit import RedisFarm


def tag() -> str:
    """A fresh hash tag, so that tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


def names(t: str | None = None) -> tuple[str, str, str, str]:
    """(stream, user-hash prefix, leaderboard, group) under one fresh hash tag."""
    t = t or tag()
    return f"{{{t}}}:events", f"{{{t}}}:user:", f"{{{t}}}:leaderboard", "profiles"


class ScoreHandler:
    """Adds an entry's ``points`` to the user's hash and the leaderboard; counts its calls."""

    def __init__(self, user_prefix: str, board: str) -> None:
        self.user_prefix = user_prefix
        self.board = board
        self.calls: list[str] = []

    def __call__(self, entry: StreamEntry) -> Effects:
        self.calls.append(entry.id)
        user, points = entry.fields["user"], int(entry.fields["points"])
        return (
            Effects()
            .hincrby(self.user_prefix + user, "points", points)
            .zincrby(self.board, points, user)
        )


def pending_ids(client: Any, stream: str, group: str) -> list[str]:
    """Ids of the group's pending entries, whoever holds them."""
    rows = client.xpending_range(stream, group, min="-", max="+", count=1000)
    return [r["message_id"].decode() for r in rows]


def points(client: Any, user_prefix: str, user: str) -> int:
    """The user's points in its hash (0 when absent)."""
    value = client.hget(user_prefix + user, "points")
    return 0 if value is None else int(value)


def board(client: Any, key: str) -> dict[str, float]:
    """The leaderboard as {member: score}."""
    return {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}


def wait_idle(client: Any, stream: str, group: str, idle_ms: int, timeout: float = 30.0) -> None:
    """Poll XPENDING until every pending entry of the group has been idle for ``idle_ms``."""
    deadline = time.monotonic() + timeout
    while True:
        rows = client.xpending_range(stream, group, min="-", max="+", count=1000)
        if rows and all(r["time_since_delivered"] >= idle_ms for r in rows):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pending entries not idle for {idle_ms} ms: {rows!r}")
        time.sleep(0.02)


def worker_address(kind: str, engine: harness.Engine, farm: RedisFarm) -> str:
    """Where a worker process connects: a node's port, or the sentinels' ``host:port,...``."""
    if kind == "sentinel":
        return ",".join(f"{host}:{port}" for host, port in farm.sentinel(engine).addresses())
    if kind == "cluster":
        return str(farm.cluster(engine).nodes[0].port)
    return str(farm.standalone(engine).port)


def worker_client(kind: str, address: str, *, asyncio: bool = False) -> Any:
    """The client a worker process builds from :func:`worker_address`'s answer."""
    import redis
    import redis.asyncio

    from redis_harness import SERVICE

    module: Any = redis.asyncio if asyncio else redis
    if kind == "sentinel":
        sentinels = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in address.split(","))]
        sentinel = module.Sentinel(sentinels, socket_timeout=5)
        return sentinel.master_for(SERVICE, socket_timeout=5)
    if kind == "cluster":
        return module.RedisCluster(host="127.0.0.1", port=int(address))
    return module.Redis(host="127.0.0.1", port=int(address))


def worker_env() -> dict[str, str]:
    """The environment of a worker process: this checkout's src and the test folders."""
    here = Path(__file__).resolve().parent
    paths = [str(here.parents[1] / "src"), str(here), str(here.parent)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_crash_worker(
    kind: str, address: str | int, stream: str, group: str, consumer: str, step: str
) -> None:
    """Run crash_worker.py to its SIGKILL (it must die by it).

    Args:
        kind: standalone, cluster or sentinel.
        address: :func:`worker_address`'s answer (a port will do for standalone and cluster).
        stream, group, consumer: What the worker consumes, and its name.
        step: Where it kills itself: ``handled`` or ``acked`` (see crash_worker.py).
    """
    worker = Path(__file__).resolve().parent / "crash_worker.py"
    done = subprocess.run(
        [sys.executable, str(worker), kind, str(address), stream, group, consumer, step],
        env=worker_env(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
