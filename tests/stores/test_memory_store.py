"""What only the in-memory stores do: their options, orphans and the sweep."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from onceonly.errors import IdempotencyConfigError
from onceonly.records import Acquired, Record, Status
from onceonly.stores import AsyncMemoryStore, MemoryStore


def token() -> str:
    return secrets.token_hex(16)


@pytest.mark.parametrize("cls", [MemoryStore, AsyncMemoryStore])
@pytest.mark.parametrize("clock", [5, "now", 1.5])
def test_a_clock_that_is_not_callable_is_refused(cls: Any, clock: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match="clock"):
        cls(clock=clock)


def test_an_orphan_stays_until_taken_over(clock: Any) -> None:
    store = MemoryStore(clock=clock)
    old, new = token(), token()
    store.claim("k", token=old, lease_ms=100, ttl_ms=100, fingerprint=None)
    clock.advance(100)

    assert len(store) == 1
    assert store.get("k") is None
    assert store.claim("k", token=new, lease_ms=100, ttl_ms=100, fingerprint=None) == Acquired(
        takeover=True
    )
    assert len(store) == 1


def test_expired_records_are_swept_as_writes_go_on(clock: Any) -> None:
    store = MemoryStore(clock=clock)
    for i in range(100):
        store.claim(f"old:{i}", token=token(), lease_ms=10, ttl_ms=10, fingerprint=None)
    clock.advance(10)

    # The sweep runs every few thousand writes, so the store stays bounded by
    # the live records without a timer.
    tok = token()
    store.claim("live", token=tok, lease_ms=1_000_000, ttl_ms=1_000_000, fingerprint=None)
    for _ in range(5_000):
        store.renew("live", token=tok, lease_ms=1_000_000)

    assert len(store) == 1
    assert store.get("live") == Record(Status.IN_PROGRESS, tok, clock.now + 1_000_000)


def test_the_async_store_completes_without_suspending(clock: Any) -> None:
    # The async twin needs no thread: each operation finishes on its first
    # step, so it never hands control back to an event loop.
    store = AsyncMemoryStore(clock=clock)
    tok = token()
    results = []
    for operation in (
        store.claim("k", token=tok, lease_ms=100, ttl_ms=100, fingerprint=None),
        store.renew("k", token=tok, lease_ms=200),
        store.complete("k", token=tok, outcome=b"j1", ttl_ms=500),
        store.get("k"),
        store.delete("k"),
    ):
        with pytest.raises(StopIteration) as done:
            operation.send(None)
        results.append(done.value.value)

    assert results == [
        Acquired(),
        True,
        True,
        Record(Status.COMPLETED, tok, clock.now + 500, None, b"j1"),
        True,
    ]
