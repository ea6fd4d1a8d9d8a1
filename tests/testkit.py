"""Test helpers imported by name (conftest modules cannot be, reliably)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis_harness as harness

EVENTS = Path(__file__).resolve().parent / "events"


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
