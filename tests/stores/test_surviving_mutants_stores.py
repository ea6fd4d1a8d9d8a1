"""Tests on real stores that kill mutants a mutation pass found surviving (issue 17)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import redis_harness as harness
from onceonly.records import Acquired, new_token
from onceonly.stores.protocol import RenewCall
from onceonly.stores.redis import RedisStore
from onceonly.stores.sqlite import SQLiteStore
from testkit import ManualClock, RedisFarm

# -- Redis: a renew moves the key's own expiry, not only the deadline in the value -------

SHORT_LEASE = 10_000
LONG_LEASE = 3_600_000


def test_redis_renew_sets_the_keys_expiry_to_the_new_lease(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:12]}", clock=ManualClock())
    tokens = {key: new_token() for key in ("one", "many")}
    for key, token in tokens.items():
        claimed = store.claim(
            key, token=token, lease_ms=SHORT_LEASE, ttl_ms=LONG_LEASE, fingerprint=None
        )
        assert claimed == Acquired()
        assert 0 < client.pttl(store.full_key(key)) <= SHORT_LEASE
    assert store.renew("one", token=tokens["one"], lease_ms=LONG_LEASE) is True
    assert store.renew_many([RenewCall("many", tokens["many"], LONG_LEASE)]) == [True]
    for key in tokens:
        # Past the short lease by far more than any pause between the renew and this read
        # could take off, and never past the new lease: Redis keeps the claim that long.
        assert LONG_LEASE - 600_000 < client.pttl(store.full_key(key)) <= LONG_LEASE


# -- SQLite: the sweep of expired rows runs on exactly every purge_every-th write --------

PURGE_EVERY = 4


def _keys(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT key FROM onceonly ORDER BY key")]
    finally:
        conn.close()


def test_sqlite_sweep_runs_on_exactly_every_purge_every_th_write(tmp_path: Path) -> None:
    clock = ManualClock()
    db = tmp_path / "sweep.sqlite3"
    # Expired rows come from a second store on the file, whose writes the first one does not count.
    seed = SQLiteStore(db, clock=clock, purge_every=1_000_000)
    store = SQLiteStore(db, clock=clock, purge_every=PURGE_EVERY, purge_batch=1_000)
    try:
        for cycle in range(3):
            old = f"old:{cycle}"
            seed.claim(old, token=new_token(), lease_ms=10, ttl_ms=10, fingerprint=None)
            clock.advance(10)  # expired: only a sweep takes its row away
            for i in range(PURGE_EVERY):
                assert old in _keys(db), f"swept after {i} of {PURGE_EVERY} writes"
                key = f"live:{cycle}:{i}"
                claimed = store.claim(
                    key, token=new_token(), lease_ms=60_000, ttl_ms=60_000, fingerprint=None
                )
                assert claimed == Acquired()
            assert old not in _keys(db), f"not swept by write {PURGE_EVERY}"
            assert len(_keys(db)) == PURGE_EVERY * (cycle + 1)  # the live rows stay
    finally:
        seed.close()
        store.close()
