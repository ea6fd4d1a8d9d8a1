"""What the Powertools record tests share: Powertools' own writes, our stores' reads."""

from __future__ import annotations

import time
from typing import Any

import pytest

from onceonly import powertools_records
from onceonly.records import Found, new_token
from testkit import ManualClock

LEASE = 60_000
TTL = 60_000


class LambdaContext:
    """A Lambda context double: what Powertools reads from one."""

    function_name = "orders"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:orders"
    aws_request_id = "request-1"

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def wall_clock() -> ManualClock:
    """A manual clock started now, by the clock Powertools stamps its records with."""
    return ManualClock(start_ms=int(time.time() * 1000))


def claim(store: Any, key: str, token: str | None = None) -> Any:
    return store.claim(
        key, token=token or new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
    )


def save_inprogress(layer: Any, data: dict[str, Any], remaining_ms: int | None) -> str:
    """Powertools' own INPROGRESS write (as its handler does before the function runs); its key."""
    if remaining_ms is None:
        # Powertools warns that it has no Lambda context, and writes no in-progress expiry.
        with pytest.warns(UserWarning, match="remaining time"):
            layer.save_inprogress(data, remaining_time_in_millis=None)
    else:
        layer.save_inprogress(data, remaining_time_in_millis=remaining_ms)
    key: str = layer._get_hashed_idempotency_key(data)
    return key


def check_foreign_writes_refused(store: Any, key: str) -> None:
    """complete / renew / release / claim treat a live Powertools record as someone else's."""
    token = new_token()
    assert store.complete(key, token=token, outcome=b"j1", ttl_ms=TTL) is False
    assert store.renew(key, token=token, lease_ms=LEASE) is False
    assert store.release(key, token=token) is False
    # Its placeholder token is no key to it either: never the caller's own claim.
    placeholder = powertools_records.PLACEHOLDER_TOKEN
    assert store.complete(key, token=placeholder, outcome=b"j1", ttl_ms=TTL) is False
    assert store.renew(key, token=placeholder, lease_ms=LEASE) is False
    assert store.release(key, token=placeholder) is False
    assert isinstance(claim(store, key, placeholder), Found)
