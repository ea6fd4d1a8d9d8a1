"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


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


@pytest.fixture
def clock() -> ManualClock:
    """A fresh manual clock, started at a fixed instant."""
    return ManualClock()
