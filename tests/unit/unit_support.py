"""Shared helpers for the unit tests (imported by name; no fixtures): clock, policy, data."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from onceonly.cache import LocalCache
from onceonly.config import IdempotencyConfig
from onceonly.engine import Invocation, Policy
from onceonly.metrics import Stats
from onceonly.records import new_token
from onceonly.serializers import JsonSerializer, Serializer

START_MS = 1_700_000_000_000

FALSY_VALUES: list[Any] = [None, 0, 0.0, "", [], {}, False]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)

json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


class Clock:
    """Injected wall-clock milliseconds that only move when a test moves them."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


def make_policy(
    config: IdempotencyConfig | None = None,
    *,
    serializer: Serializer | None = None,
    cache: LocalCache | None = None,
    clock: Clock | None = None,
) -> Policy:
    return Policy(
        name="tests.fn",
        config=config if config is not None else IdempotencyConfig(),
        serializer=serializer if serializer is not None else JsonSerializer(),
        stats=Stats(),
        cache=cache,
        clock=clock if clock is not None else Clock(),
    )


def make_inv(
    *,
    key: str = "tests.fn:0123abcd",
    fingerprint: str | None = None,
    lease_ms: int = 60_000,
    ttl_ms: int = 3_600_000,
) -> Invocation:
    return Invocation(
        key=key, fingerprint=fingerprint, token=new_token(), lease_ms=lease_ms, ttl_ms=ttl_ms
    )
