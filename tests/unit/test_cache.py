from __future__ import annotations

import pytest

from onceonly.cache import LocalCache
from onceonly.records import Record, Status, encode_outcome, new_token

NOW = 1_700_000_000_000


def record(deadline_ms: int = NOW + 60_000, value: object = "v") -> Record:
    return Record(Status.COMPLETED, new_token(), deadline_ms, None, encode_outcome(value))


def test_get_of_unknown_key_is_none() -> None:
    assert LocalCache(2).get("k", NOW) is None


def test_put_then_get_returns_the_same_record() -> None:
    cache, rec = LocalCache(2), record()
    cache.put("k", rec)
    assert cache.get("k", NOW) is rec
    assert len(cache) == 1


def test_record_is_dropped_at_its_deadline() -> None:
    cache, rec = LocalCache(2), record(deadline_ms=NOW + 100)
    cache.put("k", rec)
    assert cache.get("k", NOW + 99) is rec
    assert cache.get("k", NOW + 100) is None
    assert len(cache) == 0
    assert cache.get("k", NOW) is None  # gone, not merely hidden


def test_expired_record_is_dropped_past_its_deadline() -> None:
    cache = LocalCache(2)
    cache.put("k", record(deadline_ms=NOW))
    assert cache.get("k", NOW + 10_000) is None
    assert len(cache) == 0


def test_least_recently_put_is_evicted_first() -> None:
    cache = LocalCache(2)
    a, b, c = record(), record(), record()
    cache.put("a", a)
    cache.put("b", b)
    cache.put("c", c)
    assert len(cache) == 2
    assert cache.get("a", NOW) is None
    assert cache.get("b", NOW) is b
    assert cache.get("c", NOW) is c


def test_get_makes_a_key_most_recently_used() -> None:
    cache = LocalCache(2)
    a, b, c = record(), record(), record()
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a", NOW) is a
    cache.put("c", c)
    assert cache.get("b", NOW) is None
    assert cache.get("a", NOW) is a
    assert cache.get("c", NOW) is c


def test_put_of_an_existing_key_replaces_it_and_makes_it_most_recent() -> None:
    cache = LocalCache(2)
    old, new, b, c = record(), record(), record(), record()
    cache.put("a", old)
    cache.put("b", b)
    cache.put("a", new)
    assert len(cache) == 2
    cache.put("c", c)
    assert cache.get("b", NOW) is None
    assert cache.get("a", NOW) is new


def test_a_miss_on_an_expired_key_does_not_evict_others() -> None:
    cache = LocalCache(3)
    live = record()
    cache.put("old", record(deadline_ms=NOW - 1))
    cache.put("live", live)
    assert cache.get("old", NOW) is None
    assert cache.get("live", NOW) is live
    assert len(cache) == 1


def test_discard_forgets_a_key_and_ignores_unknown_ones() -> None:
    cache = LocalCache(2)
    cache.put("a", record())
    cache.discard("a")
    cache.discard("never-there")
    assert cache.get("a", NOW) is None
    assert len(cache) == 0


@pytest.mark.parametrize("size", [1, 3, 10])
def test_cache_never_holds_more_than_max_items(size: int) -> None:
    cache = LocalCache(size)
    records = [record() for _ in range(size * 3)]
    for i, rec in enumerate(records):
        cache.put(f"k{i}", rec)
        assert len(cache) == min(i + 1, size)
    kept = [cache.get(f"k{i}", NOW) for i in range(len(records))]
    assert kept == [None] * (size * 2) + records[size * 2 :]
