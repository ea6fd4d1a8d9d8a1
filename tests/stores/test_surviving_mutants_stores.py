"""Tests on real stores that kill mutants a mutation pass found surviving (issue 17)."""

from __future__ import annotations

import uuid

import redis_harness as harness
from onceonly.records import Acquired, new_token
from onceonly.stores.protocol import RenewCall
from onceonly.stores.redis import RedisStore
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
