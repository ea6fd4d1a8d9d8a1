"""Test helpers imported by name (conftest modules cannot be, reliably)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis_harness as harness

EVENTS = Path(__file__).resolve().parent / "events"


def finished_tasks_alive(qualname: str) -> int:
    """How many finished asyncio tasks running ``qualname`` are still alive (after a collection).

    Tells whether something keeps a task it is done with. Objects are told by
    ``type()``, never ``isinstance``: that would read ``__class__``, which sets
    up a lazy object (Django's settings-backed ones) as a side effect.
    """
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if issubclass(type(o), asyncio.Task) and o.done() and o.get_coro().__qualname__ == qualname
    )


def load_event(name: str) -> dict[str, Any]:
    """A sample Lambda event from ``tests/events/`` (a fresh dict on every call)."""
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


class ManualClock:
    """A store clock that only the test moves: integer milliseconds since the epoch.

    Pass it as ``MemoryStore(clock=clock)`` or ``SQLiteStore(path, clock=clock)``
    and call ``clock.advance(ms)`` to let leases and retention run out without
    sleeping.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        if type(ms) is not int or ms < 0:
            raise ValueError(f"a manual clock only moves forward by whole ms, got {ms!r}")
        self.now += ms


class VirtualHeartbeatTime:
    """A ``threading`` for ``onceonly._sync`` whose timed Event waits run on a ManualClock.

    ``monkeypatch.setattr(onceonly._sync, "threading", VirtualHeartbeatTime(clock, ms).module)``.
    A timed wait on an unset event (the heartbeat's wait between beats) moves
    the clock on by its timeout and returns at once, until the wait would pass
    ``horizon_ms`` from now: then it sets ``reached`` and blocks, really, until
    the event is set (the heartbeat stopped). ``waits_ms`` lists every timed
    wait in whole ms, ``waits_s`` each timeout exactly as it was asked for.
    """

    def __init__(self, clock: ManualClock, horizon_ms: int) -> None:
        self.clock = clock
        self.until = clock.now + horizon_ms
        self.reached = threading.Event()
        self.waits_ms: list[int] = []
        self.waits_s: list[float] = []
        outer = self

        class Event(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                if timeout is None or self.is_set():
                    return super().wait(timeout)
                step = round(timeout * 1000)
                outer.waits_ms.append(step)
                outer.waits_s.append(timeout)
                if outer.clock.now + step > outer.until:
                    outer.reached.set()
                    return super().wait()
                outer.clock.advance(step)
                return False

        self.module = types.SimpleNamespace(Event=Event, Thread=threading.Thread)


class VirtualAsyncHeartbeatTime:
    """An ``asyncio`` for ``onceonly._async`` whose ``sleep`` runs on a ManualClock.

    ``monkeypatch.setattr(onceonly._async, "asyncio", VirtualAsyncHeartbeatTime(clock, ms))``.
    A sleep (the heartbeat's wait between beats) moves the clock on by its
    length and yields once, until it would pass ``horizon_ms`` from now: then it
    sets ``reached`` (call ``await reached.wait()`` inside the event loop) and
    sleeps until cancelled. Everything else is the real ``asyncio``.
    """

    def __init__(self, clock: ManualClock, horizon_ms: int) -> None:
        self.clock = clock
        self.until = clock.now + horizon_ms
        self.reached = asyncio.Event()
        self.sleeps_ms: list[int] = []
        self.sleeps_s: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        step = round(seconds * 1000)
        self.sleeps_ms.append(step)
        self.sleeps_s.append(seconds)
        if self.clock.now + step > self.until:
            self.reached.set()
            await asyncio.Event().wait()  # until the heartbeat is cancelled
        self.clock.advance(step)
        await asyncio.sleep(0)


class RedisFarm:
    """Servers started on first use, one of each kind per engine, stopped at session end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._started: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, engine: harness.Engine, make: Callable[..., Any]) -> Any:
        key = (kind, engine.id)
        if key not in self._started:
            self._started[key] = make(engine, self.folder / f"{engine.id}-{kind}")
        return self._started[key]

    def standalone(self, engine: harness.Engine) -> harness.Server:
        return self._get("standalone", engine, harness.standalone)

    def cluster(self, engine: harness.Engine) -> harness.Cluster:
        return self._get("cluster", engine, harness.cluster)

    def sentinel(self, engine: harness.Engine) -> harness.SentinelSet:
        return self._get("sentinel", engine, harness.sentinel_set)

    def close(self) -> None:
        for started in self._started.values():
            with contextlib.suppress(Exception):
                started.stop()
