"""The store contract, run against every store, sync and async (see conftest.py)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from store_driver import LEASE_MS, TTL_MS, StoreDriver

from onceonly.records import Acquired, Found, Record, Status

KEY = "svc.handler:3f1a"
FP = "ab12cd34" * 8
# Every byte value, so a store that mangles binary outcomes is caught.
OUTCOME = b"j" + bytes(range(256))


def token() -> str:
    return secrets.token_hex(16)


def in_progress(tok: str, deadline: int, fp: str | None = None) -> Record:
    return Record(Status.IN_PROGRESS, tok, deadline, fp, None)


# -- claim ---------------------------------------------------------------------


def test_claim_on_absent_key_acquires_without_takeover(store: StoreDriver) -> None:
    tok = token()
    t0 = store.now()

    assert store.claim(KEY, token=tok, fingerprint=FP) == Acquired(takeover=False)
    assert store.get(KEY) == in_progress(tok, t0 + LEASE_MS, FP)


def test_claim_with_another_token_finds_the_live_claim(store: StoreDriver) -> None:
    first, second = token(), token()
    t0 = store.now()
    store.claim(KEY, token=first, fingerprint=FP)
    store.advance(250)

    result = store.claim(KEY, token=second, fingerprint="ff")

    assert result == Found(record=in_progress(first, t0 + LEASE_MS, FP), now_ms=t0 + 250)
    # Found writes nothing: the first claim is untouched.
    assert store.get(KEY) == in_progress(first, t0 + LEASE_MS, FP)


def test_claim_by_the_same_token_acquires_again(store: StoreDriver) -> None:
    # A client whose claim reply was lost retries with the same token.
    tok = token()
    store.claim(KEY, token=tok, fingerprint=FP)
    store.advance(400)
    t1 = store.now()

    assert store.claim(KEY, token=tok, fingerprint=FP) == Acquired(takeover=False)
    assert store.get(KEY) == in_progress(tok, t1 + LEASE_MS, FP)


def test_keys_are_independent(store: StoreDriver) -> None:
    a, b = token(), token()
    t0 = store.now()
    assert store.claim("k:a", token=a) == Acquired(takeover=False)
    assert store.claim("k:b", token=b) == Acquired(takeover=False)
    assert store.complete("k:a", token=a, outcome=OUTCOME) is True

    assert store.get("k:b") == in_progress(b, t0 + LEASE_MS)
    assert store.get("k:a") == Record(Status.COMPLETED, a, t0 + TTL_MS, None, OUTCOME)


# -- complete ------------------------------------------------------------------


def test_complete_stores_the_outcome_bytes_exactly(store: StoreDriver) -> None:
    tok, other = token(), token()
    store.claim(KEY, token=tok, fingerprint=FP)
    store.advance(100)
    t1 = store.now()

    assert store.complete(KEY, token=tok, outcome=OUTCOME, ttl_ms=5_000) is True

    completed = Record(Status.COMPLETED, tok, t1 + 5_000, FP, OUTCOME)
    assert store.get(KEY) == completed
    store.advance(10)
    assert store.claim(KEY, token=other, fingerprint=FP) == Found(completed, t1 + 10)


def test_a_completed_record_cannot_be_released_renewed_or_overwritten(
    store: StoreDriver,
) -> None:
    tok = token()
    store.claim(KEY, token=tok)
    store.complete(KEY, token=tok, outcome=OUTCOME)
    before = store.get(KEY)
    store.advance(50)

    assert store.release(KEY, token=tok) is False
    assert store.renew(KEY, token=tok, lease_ms=99_000) is False
    # A complete retried after its reply was lost succeeds, and changes nothing.
    assert store.complete(KEY, token=tok, outcome=b"jnull", ttl_ms=99_000) is True
    assert store.complete(KEY, token=token(), outcome=b"jnull") is False
    assert store.get(KEY) == before
    # A re-claim by the finished token replays instead of running again.
    assert store.claim(KEY, token=tok) == Found(before, store.now())


@pytest.mark.parametrize("operation", ["complete", "release", "renew"])
def test_writes_with_a_wrong_token_fail_and_change_nothing(
    store: StoreDriver, operation: str
) -> None:
    owner = token()
    store.claim(KEY, token=owner, fingerprint=FP)
    before = store.get(KEY)

    wrong = token()
    if operation == "complete":
        assert store.complete(KEY, token=wrong, outcome=OUTCOME) is False
    elif operation == "release":
        assert store.release(KEY, token=wrong) is False
    else:
        assert store.renew(KEY, token=wrong, lease_ms=50_000) is False

    assert store.get(KEY) == before


@pytest.mark.parametrize("operation", ["complete", "renew"])
def test_writes_on_an_absent_key_fail_and_create_nothing(
    store: StoreDriver, operation: str
) -> None:
    tok = token()
    if operation == "complete":
        assert store.complete(KEY, token=tok, outcome=OUTCOME) is False
    else:
        assert store.renew(KEY, token=tok) is False
    assert store.get(KEY) is None


def test_a_release_on_an_absent_key_has_done_its_job_and_creates_nothing(
    store: StoreDriver,
) -> None:
    # A release retried after its reply was lost finds the key gone: that is
    # what it asked for, so it is no lost lease.
    assert store.release(KEY, token=token()) is True
    assert store.get(KEY) is None


# -- release -------------------------------------------------------------------


def test_release_frees_the_key_for_a_new_claim(store: StoreDriver) -> None:
    first, second = token(), token()
    store.claim(KEY, token=first)

    assert store.release(KEY, token=first) is True
    assert store.get(KEY) is None
    assert store.release(KEY, token=first) is True  # retried: the key is gone, as asked
    assert store.claim(KEY, token=second) == Acquired(takeover=False)
    assert store.get(KEY) == in_progress(second, store.now() + LEASE_MS)


# -- renew ---------------------------------------------------------------------


def test_renew_extends_the_lease(store: StoreDriver) -> None:
    tok, other = token(), token()
    t0 = store.now()
    store.claim(KEY, token=tok, fingerprint=FP)
    store.advance(900)

    assert store.renew(KEY, token=tok, lease_ms=2_000) is True
    assert store.get(KEY) == in_progress(tok, t0 + 900 + 2_000, FP)

    # Past the first lease, the claim still holds.
    store.advance(1_500)
    assert store.claim(KEY, token=other) == Found(
        in_progress(tok, t0 + 2_900, FP), t0 + 900 + 1_500
    )
    # And the owner can still finish.
    assert store.complete(KEY, token=tok, outcome=OUTCOME) is True


def test_renew_after_the_lease_passed_fails(store: StoreDriver) -> None:
    tok = token()
    store.claim(KEY, token=tok)
    store.advance(LEASE_MS)

    assert store.renew(KEY, token=tok) is False
    assert store.get(KEY) is None


# -- get and delete ------------------------------------------------------------


def test_get_on_an_absent_key_is_none(store: StoreDriver) -> None:
    assert store.get("never:claimed") is None


def test_delete_reports_whether_a_record_was_there(store: StoreDriver) -> None:
    live, done = token(), token()
    store.claim("k:live", token=live)
    store.claim("k:done", token=done)
    store.complete("k:done", token=done, outcome=OUTCOME)

    assert store.delete("k:live") is True
    assert store.delete("k:done") is True
    assert store.get("k:live") is None
    assert store.get("k:done") is None
    assert store.delete("k:live") is False
    assert store.delete("never:claimed") is False
    # A deleted key can be claimed afresh.
    assert store.claim("k:done", token=token()) == Acquired(takeover=False)
    # The owner of a deleted claim has lost it.
    assert store.complete("k:live", token=live, outcome=OUTCOME) is False
    assert store.get("k:live") is None


# -- lease expiry and fencing --------------------------------------------------


def test_a_claim_holds_until_its_deadline_and_not_a_millisecond_longer(
    store: StoreDriver,
) -> None:
    first, second = token(), token()
    t0 = store.now()
    store.claim(KEY, token=first)

    store.advance(LEASE_MS - 1)
    assert store.claim(KEY, token=second) == Found(in_progress(first, t0 + LEASE_MS), t0 + 999)

    store.advance(1)
    assert store.claim(KEY, token=second) == Acquired(takeover=store.reports_takeover)
    assert store.get(KEY) == in_progress(second, t0 + 2 * LEASE_MS)


@pytest.mark.parametrize("operation", ["complete", "release", "renew"])
def test_a_taken_over_owner_cannot_touch_the_new_owners_record(
    store: StoreDriver, operation: str
) -> None:
    old, new = token(), token()
    store.claim(KEY, token=old, fingerprint=FP)
    store.advance(LEASE_MS + 5)
    assert store.claim(KEY, token=new, fingerprint=FP) == Acquired(takeover=store.reports_takeover)
    newer = store.get(KEY)
    assert newer == in_progress(new, store.now() + LEASE_MS, FP)

    if operation == "complete":
        assert store.complete(KEY, token=old, outcome=OUTCOME) is False
    elif operation == "release":
        assert store.release(KEY, token=old) is False
    else:
        assert store.renew(KEY, token=old, lease_ms=60_000) is False

    assert store.get(KEY) == newer
    assert store.complete(KEY, token=new, outcome=OUTCOME) is True


def test_an_expired_claim_without_a_successor_cannot_be_completed(store: StoreDriver) -> None:
    tok = token()
    store.claim(KEY, token=tok)
    store.advance(LEASE_MS + 1)

    assert store.complete(KEY, token=tok, outcome=OUTCOME) is False
    # Nobody holds the key any more: nothing is left to release.
    assert store.release(KEY, token=tok) is True
    assert store.get(KEY) is None


def test_the_old_owner_reclaiming_after_expiry_is_no_takeover(store: StoreDriver) -> None:
    tok = token()
    store.claim(KEY, token=tok)
    store.advance(LEASE_MS)

    assert store.claim(KEY, token=tok) == Acquired(takeover=False)
    assert store.get(KEY) == in_progress(tok, store.now() + LEASE_MS)


# -- retention -----------------------------------------------------------------


def test_a_completed_record_is_kept_for_its_ttl_then_gone(store: StoreDriver) -> None:
    tok, later = token(), token()
    t0 = store.now()
    store.claim(KEY, token=tok)
    assert store.complete(KEY, token=tok, outcome=OUTCOME, ttl_ms=5_000) is True
    done = Record(Status.COMPLETED, tok, t0 + 5_000, None, OUTCOME)

    store.advance(4_999)
    assert store.get(KEY) == done
    assert store.claim(KEY, token=later) == Found(done, t0 + 4_999)

    store.advance(1)
    assert store.get(KEY) is None
    assert store.claim(KEY, token=later) == Acquired(takeover=False)
    assert store.get(KEY) == in_progress(later, t0 + 5_000 + LEASE_MS)


def test_a_claim_lease_does_not_use_the_ttl(store: StoreDriver) -> None:
    tok = token()
    t0 = store.now()
    store.claim(KEY, token=tok, lease_ms=700, ttl_ms=900_000)
    assert store.get(KEY) == in_progress(tok, t0 + 700)


# -- concurrency ---------------------------------------------------------------


def test_concurrent_claims_on_one_key_acquire_exactly_once(store: StoreDriver) -> None:
    tokens = [token() for _ in range(16)]

    results = store.claim_concurrently(KEY, tokens)

    acquired = [t for t, r in zip(tokens, results, strict=True) if r == Acquired(takeover=False)]
    assert len(acquired) == 1
    winner = acquired[0]
    expected = Found(in_progress(winner, store.now() + LEASE_MS), store.now())
    assert [r for r in results if r != Acquired(takeover=False)] == [expected] * 15


# -- argument validation -------------------------------------------------------

GOOD = token()
BAD_TOKENS: list[Any] = ["", "A" * 32, "a" * 31, "a" * 33, "g" * 32, " " + "a" * 31, 123, None]
BAD_MS: list[Any] = [0, -1, 1.5, "1000", True, None]
BAD_KEYS: list[Any] = ["", None, 7, b"key"]


def _claim_cases() -> list[Any]:
    base = {"key": KEY, "token": GOOD, "lease_ms": 1000, "ttl_ms": 1000, "fingerprint": None}
    cases = [dict(base, key=k) for k in BAD_KEYS]
    cases += [dict(base, token=t) for t in BAD_TOKENS]
    cases += [dict(base, lease_ms=m) for m in BAD_MS]
    cases += [dict(base, ttl_ms=m) for m in BAD_MS]
    cases += [dict(base, fingerprint=f) for f in ["", "XYZ", "AB12", 12, "a" * 129]]
    return [pytest.param(c, id=f"claim-{i}") for i, c in enumerate(cases)]


@pytest.mark.parametrize("kwargs", _claim_cases())
def test_claim_rejects_bad_arguments(store: StoreDriver, kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)  # the parameter is shared by every store
    key = kwargs.pop("key")
    with pytest.raises(ValueError):  # noqa: PT011 - the message is the store's own
        store.claim(key, **kwargs)
    assert store.get(KEY) is None


def _write_cases() -> list[Any]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for k in BAD_KEYS:
        cases += [
            ("complete", {"key": k, "token": GOOD, "outcome": OUTCOME, "ttl_ms": 1000}),
            ("release", {"key": k, "token": GOOD}),
            ("renew", {"key": k, "token": GOOD, "lease_ms": 1000}),
            ("get", {"key": k}),
            ("delete", {"key": k}),
        ]
    for t in BAD_TOKENS:
        cases += [
            ("complete", {"key": KEY, "token": t, "outcome": OUTCOME, "ttl_ms": 1000}),
            ("release", {"key": KEY, "token": t}),
            ("renew", {"key": KEY, "token": t, "lease_ms": 1000}),
        ]
    for m in BAD_MS:
        cases += [
            ("complete", {"key": KEY, "token": GOOD, "outcome": OUTCOME, "ttl_ms": m}),
            ("renew", {"key": KEY, "token": GOOD, "lease_ms": m}),
        ]
    for o in [b"", "jtext", None, bytearray(b"j1")]:
        cases.append(("complete", {"key": KEY, "token": GOOD, "outcome": o, "ttl_ms": 1000}))
    return [pytest.param(op, kw, id=f"{op}-{i}") for i, (op, kw) in enumerate(cases)]


@pytest.mark.parametrize(("operation", "kwargs"), _write_cases())
def test_other_operations_reject_bad_arguments(
    store: StoreDriver, operation: str, kwargs: dict[str, Any]
) -> None:
    # The owner's claim must survive every rejected call.
    store.claim(KEY, token=GOOD)
    before = store.get(KEY)
    kwargs = dict(kwargs)  # the parameter is shared by every store
    key = kwargs.pop("key")

    with pytest.raises(ValueError):  # noqa: PT011 - the message is the store's own
        getattr(store, operation)(key, **kwargs)

    assert store.get(KEY) == before
