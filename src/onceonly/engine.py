"""The I/O-free core: what an idempotent call does, step by step.

:func:`decide` maps a claim result to a decision. :func:`flow` is a generator
that yields the steps of one call (claim, execute, complete, release, sleep)
and receives their results; the sync and async drivers only carry the steps
out, so every decision lives here once. The shape follows httpx's
``auth_flow``: ``step = flow.send(result)`` until it returns the call's value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .cache import LocalCache
from .config import IdempotencyConfig, InProgressPolicy, StoreErrorPolicy
from .errors import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyKeyReuseError,
    IdempotencySerializationError,
    IdempotencyStoreError,
)
from .metrics import Event, Stats, log_extra
from .records import Acquired, ClaimResult, Record, Status, decode_outcome, encode_outcome
from .serializers import Serializer
from .stores.protocol import ClaimCall, CompleteCall, ReleaseCall

__all__ = [
    "Claim",
    "Complete",
    "Decision",
    "Execute",
    "InProgress",
    "Invocation",
    "Mismatch",
    "Policy",
    "Release",
    "Replay",
    "Run",
    "Sleep",
    "Step",
    "claim_call",
    "complete_call",
    "decide",
    "elapsed_ms",
    "encode_result",
    "flow",
    "in_progress_error",
    "key_reuse_error",
    "release_call",
    "renewal_lease_ms",
    "replay",
    "started_at",
    "store_kind",
]

logger = logging.getLogger("onceonly")

# Backoff while waiting for another execution: first sleep, growth, ceiling.
_WAIT_FIRST_MS = 20
_WAIT_MAX_MS = 1000


# -- decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """The claim is ours: run the function."""

    takeover: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """A completed record with a matching fingerprint: replay its outcome."""

    record: Record


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another execution holds a live claim, for ``retry_after_ms`` more."""

    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key is taken by a call with another payload fingerprint."""

    record: Record


Decision = Run | Replay | InProgress | Mismatch

# Frozen, so shared: made once instead of on every call.
_RUN = Run(takeover=False)
_RUN_TAKEOVER = Run(takeover=True)


def decide(result: ClaimResult, fingerprint: str | None) -> Decision:
    """Decide what a call does with the store's answer to its claim.

    Args:
        result: ``Acquired`` or ``Found`` from ``Store.claim``.
        fingerprint: The caller's payload fingerprint, or None when payload
            validation is off.

    Returns:
        Run, Replay, InProgress or Mismatch.
    """
    if isinstance(result, Acquired):
        return _RUN_TAKEOVER if result.takeover else _RUN
    record = result.record
    # A record written before validation was turned on has no fingerprint:
    # nothing to compare, so it replays (as it would have before).
    if fingerprint is not None and record.fingerprint not in (None, fingerprint):
        return Mismatch(record)
    if record.status is Status.COMPLETED:
        return Replay(record)
    return InProgress(retry_after_ms=max(0, record.deadline_ms - result.now_ms))


# -- steps a driver carries out ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """Call ``store.claim`` with the invocation's key, token, lease, ttl, fingerprint."""


@dataclass(frozen=True, slots=True)
class Execute:
    """Run the function; send back its value or throw its exception in.

    Attributes:
        protected: False when it runs without a claim (store down, policy "run").
        heartbeat_ms: Renew the lease this often while it runs, or None.
    """

    protected: bool
    heartbeat_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Complete:
    """Call ``store.complete`` with this outcome; send back the bool."""

    outcome: bytes


@dataclass(frozen=True, slots=True)
class Release:
    """Call ``store.release``; send back the bool."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep this long, then send back anything."""

    ms: int


Step = Claim | Execute | Complete | Release | Sleep

# The steps without fields, made once.
CLAIM = Claim()
RELEASE = Release()
_EXECUTE = Execute(protected=True)  # the usual one: no heartbeat


class Invocation(NamedTuple):
    """One call's fixed facts (a NamedTuple: one is built per call, cheaply).

    Attributes:
        key: The idempotency key.
        fingerprint: Payload fingerprint, or None.
        token: This call's fencing token.
        lease_ms: How long its claim holds.
        ttl_ms: Retention of its outcome.
        deadline_ms: When the Lambda invocation it runs in ends (wall-clock
            ms on the policy's clock), or None outside Lambda: no renewal
            extends the claim past it.
    """

    key: str
    fingerprint: str | None
    token: str
    lease_ms: int
    ttl_ms: int
    deadline_ms: int | None = None


@dataclass(frozen=True)
class Policy:
    """What stays the same across calls of one decorated function.

    Attributes:
        name: The function's name, for messages.
        config: Its options.
        serializer: How its results become JSON.
        stats: Its counters.
        cache: Its local cache, or None.
        clock: Wall-clock milliseconds (for the cache and wait budgets).
        max_outcome_bytes: The largest outcome its store can hold (None: no
            limit), checked before the function's claim is completed.
        store: Its store's class name, for events and log records.
    """

    name: str
    config: IdempotencyConfig
    serializer: Serializer
    stats: Stats
    cache: LocalCache | None
    clock: Callable[[], int]
    max_outcome_bytes: int | None = None
    store: str | None = None

    def count(self, event: Event, key: str | None = None, duration_ms: int | None = None) -> None:
        """Count an event of this function's (with its key, when it has one)."""
        self.stats.add(event, self.name, key, self.store, duration_ms)

    def log_extra(self, key: str | None, outcome: str) -> dict[str, Any]:
        """The ``extra`` fields of a log record about this function's key."""
        return log_extra(self.name, key, outcome, self.store)


def store_kind(store: Any) -> str:
    """The class name of a store, as events and log records name it."""
    return type(store).__name__


def started_at(policy: Policy) -> int | None:
    """The policy's clock when a callback listens to its events (else no clock read)."""
    return policy.clock() if policy.stats.listening else None


def elapsed_ms(policy: Policy, started: int | None) -> int | None:
    """Milliseconds on the policy's clock since ``started`` (from :func:`started_at`)."""
    return None if started is None else policy.clock() - started


def claim_call(inv: Invocation) -> ClaimCall:
    """The store arguments of an invocation's claim."""
    return ClaimCall(inv.key, inv.token, inv.lease_ms, inv.ttl_ms, inv.fingerprint)


def complete_call(inv: Invocation, outcome: bytes) -> CompleteCall:
    """The store arguments of an invocation's complete."""
    return CompleteCall(inv.key, inv.token, outcome, inv.ttl_ms)


def release_call(inv: Invocation) -> ReleaseCall:
    """The store arguments of an invocation's release."""
    return ReleaseCall(inv.key, inv.token)


def renewal_lease_ms(inv: Invocation, now_ms: int) -> int:
    """The lease a heartbeat renews an invocation's claim to, at ``now_ms``.

    Its own lease, but never past the invocation's deadline: a Lambda
    invocation that timed out must not leave a claim that outlives it.

    Args:
        inv: The invocation whose claim is renewed.
        now_ms: The policy's clock now.

    Returns:
        The lease in ms; zero or less when the deadline has come, and the
        heartbeat stops.
    """
    deadline = inv.deadline_ms
    if deadline is None:
        return inv.lease_ms
    return min(inv.lease_ms, deadline - now_ms)


# -- the flow ----------------------------------------------------------------


def replay(policy: Policy, record: Record, key: str) -> Any:
    """Rebuild a result from a completed record and apply the response hook.

    Args:
        policy: The function's policy.
        record: The completed record.
        key: Its key (prefix and digest), named in errors.

    Raises:
        CorruptRecordError: The outcome cannot be decoded or rebuilt. The
            message names the function, the key and the kind of misfit, never
            the stored value: our serializers say what does not fit without
            quoting it, and a custom serializer's own error text (which may
            quote what it read) is left to the chained cause.
    """
    assert record.outcome is not None
    data = decode_outcome(record.outcome)
    try:
        value = policy.serializer.from_json(data)
    except CorruptRecordError as exc:
        raise CorruptRecordError(
            f"stored outcome of {policy.name} under key {key} cannot be rebuilt: {exc}; "
            "if the result type changed, delete the key (onceonly purge) to let it run again"
        ) from exc
    except Exception as exc:
        raise CorruptRecordError(
            f"stored outcome of {policy.name} under key {key} cannot be rebuilt by its "
            f"serializer ({type(exc).__name__}); if the result type changed, delete the key "
            "(onceonly purge) to let it run again"
        ) from exc
    hook = policy.config.response_hook
    return value if hook is None else hook(value, record)


def encode_result(policy: Policy, value: Any) -> bytes:
    """Serialize a result into an outcome envelope.

    Raises:
        IdempotencySerializationError: The serializer or JSON refused it, or the
            outcome is larger than the store can hold.
    """
    try:
        data = policy.serializer.to_json(value)
    except IdempotencySerializationError:
        raise
    except Exception as exc:
        raise IdempotencySerializationError(
            f"{policy.name}: output serializer could not convert the result "
            f"({type(value).__name__}): {exc}"
        ) from exc
    outcome = encode_outcome(data)
    limit = policy.max_outcome_bytes
    if limit is not None and len(outcome) > limit:
        # Refused before any write: the claim is released and the caller told.
        raise IdempotencySerializationError(
            f"{policy.name}: the result is {len(outcome)} bytes stored, over the store's limit "
            f"of {limit} bytes; return less (e.g. a reference to data kept elsewhere)"
        )
    return outcome


def key_reuse_error(policy: Policy, inv: Invocation) -> Exception:
    """The error for a key taken by another payload; counts it."""
    policy.count(Event.KEY_REUSE, inv.key)
    return IdempotencyKeyReuseError(
        f"{policy.name}: key {inv.key} was used before with a different payload "
        "(payload_validation_jmespath); use a new key for a new request"
    )


def in_progress_error(policy: Policy, inv: Invocation, retry_after_ms: int) -> Exception:
    """The error for a key held by a live claim elsewhere; counts it."""
    policy.count(Event.IN_PROGRESS, inv.key)
    return IdempotencyAlreadyInProgressError(
        f"{policy.name}: another execution holds key {inv.key} for {retry_after_ms} ms more; "
        "retry later, or set on_in_progress='wait'",
        key=inv.key,
        retry_after_ms=retry_after_ms,
    )


def _release_after_failure(
    policy: Policy, inv: Invocation, ran_ms: int | None
) -> Generator[Step, Any, None]:
    policy.count(Event.RELEASED, inv.key, ran_ms)
    try:
        released = yield RELEASE
    except IdempotencyStoreError as exc:
        policy.count(Event.STORE_ERROR, inv.key)
        logger.warning(
            "onceonly: %s could not release key %s after a failure (%s); "
            "it is held until its lease ends",
            policy.name,
            inv.key,
            type(exc).__name__,
            extra=policy.log_extra(inv.key, Event.STORE_ERROR.value),
        )
        return
    if released is not True:
        policy.count(Event.LEASE_LOST, inv.key)
        logger.warning(
            "onceonly: %s lost its lease on key %s before it failed",
            policy.name,
            inv.key,
            extra=policy.log_extra(inv.key, Event.LEASE_LOST.value),
        )


def flow(policy: Policy, inv: Invocation) -> Generator[Step, Any, Any]:
    """The steps of one idempotent call; returns the call's result.

    Args:
        policy: The function's policy.
        inv: This call's key, token and timings.

    Returns:
        The function's result, or a replayed one.

    Raises:
        IdempotencyKeyReuseError: Same key, different fingerprint.
        IdempotencyAlreadyInProgressError: A live claim elsewhere (after the wait, if waiting).
        IdempotencyStoreError: The claim failed and the policy is "raise".
        IdempotencySerializationError: The result cannot be stored (the claim is released).
        BaseException: Whatever the function raised, after the claim is released.
    """
    config, stats, cache = policy.config, policy.stats, policy.cache
    name, key, store = policy.name, inv.key, policy.store
    if cache is not None:
        cached = cache.get(inv.key, policy.clock())
        if cached is not None and (
            inv.fingerprint is None or cached.fingerprint == inv.fingerprint
        ):
            stats.add(Event.CACHE_HIT, name, key, store)
            return replay(policy, cached, inv.key)

    wait_until: int | None = None
    delay = _WAIT_FIRST_MS
    while True:
        try:
            result = yield CLAIM
        except IdempotencyStoreError as exc:
            stats.add(Event.STORE_ERROR, name, key, store)
            if config.on_store_error is not StoreErrorPolicy.RUN or isinstance(
                exc, CorruptRecordError
            ):
                raise
            logger.warning(
                "onceonly: store failed for %s (%s); running without idempotency "
                "because on_store_error='run'",
                policy.name,
                type(exc).__name__,
                extra=policy.log_extra(key, Event.UNPROTECTED.value),
            )
            stats.add(Event.UNPROTECTED, name, key, store)
            return (yield Execute(protected=False))
        decision = decide(result, inv.fingerprint)
        if isinstance(decision, Run):
            break
        if isinstance(decision, Replay):
            stats.add(Event.REPLAYED, name, key, store)
            value = replay(policy, decision.record, inv.key)
            # Cached only once it replays: a corrupt record must not outlive its purge here.
            if cache is not None:
                cache.put(inv.key, decision.record)
            return value
        if isinstance(decision, Mismatch):
            raise key_reuse_error(policy, inv)
        if config.on_in_progress is InProgressPolicy.RAISE:
            raise in_progress_error(policy, inv, decision.retry_after_ms)
        now = policy.clock()
        if wait_until is None:
            # round, not int: 1.001 s is 1000.999... ms as a float.
            wait_until = now + round(config.wait_timeout_seconds * 1000)
        if now >= wait_until:
            raise in_progress_error(policy, inv, decision.retry_after_ms)
        # Wake no later than the other lease's end, so an orphan is taken over promptly.
        stats.add(Event.WAITED, name, key, store)
        yield Sleep(max(1, min(delay, decision.retry_after_ms + 1, wait_until - now)))
        delay = min(delay * 2, _WAIT_MAX_MS)

    if decision.takeover:
        stats.add(Event.TAKEOVER, name, key, store)
    execute = (
        Execute(protected=True, heartbeat_ms=max(1, inv.lease_ms // 3))
        if config.heartbeat
        else _EXECUTE
    )
    started = started_at(policy)
    try:
        value = yield execute
    except GeneratorExit:
        raise
    except BaseException:
        yield from _release_after_failure(policy, inv, elapsed_ms(policy, started))
        raise
    ran_ms = elapsed_ms(policy, started)
    try:
        outcome = encode_result(policy, value)
    except IdempotencySerializationError:
        yield from _release_after_failure(policy, inv, ran_ms)
        raise
    stats.add(Event.EXECUTED, name, key, store, ran_ms)
    try:
        completed = yield Complete(outcome)
    except IdempotencyStoreError as exc:
        # The work is done: hand the result back. The claim stays until its
        # lease ends, so a duplicate meanwhile is told "in progress".
        stats.add(Event.STORE_ERROR, name, key, store)
        logger.warning(
            "onceonly: %s ran but could not store its outcome for key %s (%s: %s); "
            "a retry after the lease will run it again",
            policy.name,
            inv.key,
            type(exc).__name__,
            exc,
            extra=policy.log_extra(key, Event.STORE_ERROR.value),
        )
        return value
    if completed is not True:
        stats.add(Event.LEASE_LOST, name, key, store)
        logger.warning(
            "onceonly: %s finished after losing its lease on key %s; "
            "its result is returned but not stored (another execution owns the key)",
            policy.name,
            inv.key,
            extra=policy.log_extra(key, Event.LEASE_LOST.value),
        )
    elif cache is not None:
        cache.put(
            inv.key,
            Record(
                Status.COMPLETED,
                inv.token,
                policy.clock() + inv.ttl_ms,
                inv.fingerprint,
                outcome,
            ),
        )
    return value
