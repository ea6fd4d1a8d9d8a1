"""What a batch counts into the Stats it is given (process_batch(stats=...)), event by event."""

from __future__ import annotations

from typing import Any

import pytest

from onceonly import CorruptRecordError, IdempotencyConfig, IdempotencyStoreError
from onceonly.batch import ItemStatus, process_batch
from onceonly.metrics import Stats
from onceonly.records import new_token
from onceonly.stores import MemoryStore
from onceonly.stores.protocol import ClaimCall
from testkit import ManualClock

CONFIG = IdempotencyConfig(
    event_key_jmespath="order", payload_validation_jmespath="amount", key_prefix="stats"
)


def _record(order: int, amount: int = 5) -> dict[str, Any]:
    return {"order": order, "amount": amount}


def _key(order: int) -> str:
    probe = process_batch([_record(order)], lambda r: None, store=MemoryStore(), config=CONFIG)
    key = probe.items[0].key
    assert key is not None
    return key


def _handle(record: dict[str, Any]) -> int:
    if record["amount"] < 0:
        raise ValueError("refused")
    return int(record["order"])


def _counted(stats: Stats) -> dict[str, int]:
    return {name: count for name, count in stats.snapshot().items() if count != 0}


def test_a_batch_counts_replays_takeovers_rejections_and_runs() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    process_batch([_record(1), _record(4)], _handle, store=store, config=CONFIG)
    store.claim(_key(2), token=new_token(), lease_ms=1_000, ttl_ms=60_000, fingerprint=None)
    clock.advance(1_000)  # order 2's holder has ended: an orphan
    store.claim(_key(3), token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
    stats = Stats()

    records = [_record(1), _record(2), _record(3), _record(4, amount=6), _record(5)]
    result = process_batch(records, _handle, store=store, config=CONFIG, stats=stats)

    assert [item.status for item in result.items] == [
        ItemStatus.REPLAYED,
        ItemStatus.RUN,
        ItemStatus.IN_PROGRESS,
        ItemStatus.FAILED,
        ItemStatus.RUN,
    ]
    assert _counted(stats) == {
        "executed": 2,
        "replayed": 1,
        "in_progress": 1,
        "takeover": 1,
        "key_reuse": 1,
    }


class _SpoilingStore(MemoryStore):
    """Its completes refuse one key (another owner took it) or all fail; releases fail."""

    def __init__(self, refused: str | None) -> None:
        super().__init__()
        self.refused = refused

    def complete(self, key: str, *, token: str, outcome: bytes, ttl_ms: int) -> bool:
        if self.refused is None:
            raise IdempotencyStoreError("complete failed (test)")
        if key == self.refused:
            return False
        return super().complete(key, token=token, outcome=outcome, ttl_ms=ttl_ms)

    def release(self, key: str, *, token: str) -> bool:
        raise IdempotencyStoreError("release failed (test)")


@pytest.mark.parametrize(
    ("completes", "expected"),
    [
        ("one-refused", {"executed": 3, "released": 2, "lease_lost": 1, "store_error": 1}),
        # A failed complete fails the batch's one CompleteMany: each outcome
        # it held counts a store error.
        ("all-fail", {"executed": 3, "released": 2, "store_error": 4}),
    ],
)
def test_a_batch_counts_lost_leases_and_store_errors_on_the_way_out(
    completes: str, expected: dict[str, int]
) -> None:
    store = _SpoilingStore(refused=_key(2) if completes == "one-refused" else None)
    stats = Stats()
    records = [_record(1), _record(2), _record(3), _record(4, amount=-1), _record(5, amount=-1)]

    result = process_batch(records, _handle, store=store, config=CONFIG, stats=stats)

    assert [item.status for item in result.items] == [ItemStatus.RUN] * 3 + [ItemStatus.FAILED] * 2
    # The two failed releases (one ReleaseMany) count one store error.
    assert _counted(stats) == expected


class _ClaimsFailStore(MemoryStore):
    """Claims fail: all at once in claim_many, or one key's record is corrupt."""

    def __init__(self, corrupt: str | None) -> None:
        super().__init__()
        self.corrupt = corrupt
        if corrupt is None:
            self.claim_many = self._claim_many

    def claim(self, key: str, **options: Any) -> Any:
        if key == self.corrupt:
            raise CorruptRecordError(f"record of key {key} is corrupt (test)")
        return super().claim(key, **options)

    def _claim_many(self, calls: list[ClaimCall]) -> Any:
        raise IdempotencyStoreError("claim_many failed (test)")


def test_a_batch_whose_claims_fail_counts_one_store_error_and_runs_each_record_unprotected() -> (
    None
):
    config = IdempotencyConfig(event_key_jmespath="order", key_prefix="stats", on_store_error="run")
    stats = Stats()
    store = _ClaimsFailStore(corrupt=None)
    process_batch([_record(1), _record(2)], _handle, store=store, config=config, stats=stats)
    assert _counted(stats) == {"store_error": 1, "unprotected": 2}


def test_a_batch_counts_a_store_error_for_a_record_whose_claim_fails() -> None:
    stats = Stats()
    store = _ClaimsFailStore(corrupt=_key(1))
    result = process_batch(
        [_record(1), _record(2)], _handle, store=store, config=CONFIG, stats=stats
    )
    assert [item.status for item in result.items] == [ItemStatus.FAILED, ItemStatus.RUN]
    assert _counted(stats) == {"store_error": 1, "executed": 1}
