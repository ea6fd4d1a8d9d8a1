"""The batch flow: the I/O-free decisions for a batch of records, beside ``engine.py``.

What a batch does for its records (claims together, runs one by one, stores
outcomes together, a heartbeat for all its claims, an interruption settled
before it re-raises) is described in ``batch.py``, the entry points; here
``batch_flow`` decides each step, and the drivers' ``drive_batch`` carry them
out, as they carry out ``engine.flow`` for the decorators.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import StoreErrorPolicy
from .engine import (
    InProgress,
    Invocation,
    Mismatch,
    Policy,
    Replay,
    Run,
    decide,
    elapsed_ms,
    encode_result,
    in_progress_error,
    key_reuse_error,
    replay,
    started_at,
)
from .errors import IdempotencyStoreError
from .metrics import Event, log_extra
from .records import ClaimResult, Found, Record, Status
from .stores.protocol import RenewCall

__all__ = [
    "BatchResult",
    "BatchStep",
    "ClaimMany",
    "CompleteMany",
    "ItemResult",
    "ItemStatus",
    "ReleaseMany",
    "RunItem",
    "batch_flow",
    "lambda_item_identifier",
    "renew_call",
    "still_held",
]

logger = logging.getLogger("onceonly")


class ItemStatus(enum.Enum):
    """What happened to one record of a batch."""

    RUN = "run"  # the handler ran (its outcome is stored, or it had no key)
    REPLAYED = "replayed"  # a stored outcome, or the run of an earlier record with its key
    IN_PROGRESS = "in_progress"  # another execution holds the key: retry the record later
    FAILED = "failed"  # the handler raised, or the record could not be claimed


@dataclass(frozen=True)
class ItemResult:
    """One record's outcome.

    Attributes:
        record: The record as given.
        status: What happened.
        value: The handler's (or the replayed) result; None unless RUN or REPLAYED.
        error: The exception for FAILED and IN_PROGRESS records, else None.
        key: The record's idempotency key (None when it had none).
    """

    record: Any
    status: ItemStatus
    value: Any = None
    error: BaseException | None = None
    key: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """Every record's outcome, in the order the records came."""

    items: list[ItemResult] = field(default_factory=list)

    def failures(self) -> list[ItemResult]:
        """Records to deliver again: FAILED and IN_PROGRESS."""
        return [i for i in self.items if i.status in (ItemStatus.FAILED, ItemStatus.IN_PROGRESS)]

    def batch_item_failures(
        self, identifier: Callable[[Any], str] | None = None
    ) -> dict[str, list[dict[str, str]]]:
        """The Lambda partial-batch response (``ReportBatchItemFailures``).

        Args:
            identifier: Record -> its id; by default the SQS ``messageId``, the
                Kinesis ``sequenceNumber`` or the DynamoDB-streams ``SequenceNumber``.

        Returns:
            ``{"batchItemFailures": [{"itemIdentifier": id}, ...]}``.
        """
        ident = identifier or lambda_item_identifier
        return {"batchItemFailures": [{"itemIdentifier": ident(i.record)} for i in self.failures()]}


def lambda_item_identifier(record: Any) -> str:
    """The id Lambda expects for a failed record of an SQS, Kinesis or DynamoDB-streams batch.

    Raises:
        KeyError: The record is none of those.
    """
    if isinstance(record, dict):
        if "messageId" in record:
            return str(record["messageId"])
        if "kinesis" in record:
            return str(record["kinesis"]["sequenceNumber"])
        if "dynamodb" in record:
            return str(record["dynamodb"]["SequenceNumber"])
    raise KeyError("record has no messageId, kinesis.sequenceNumber or dynamodb.SequenceNumber")


# -- steps (carried out by _sync.drive_batch / _async.drive_batch) ---------------------


@dataclass(frozen=True)
class ClaimMany:
    """Claim every invocation's key; send back a list of ClaimResult or exception."""

    invocations: list[Invocation]


@dataclass(frozen=True)
class RunItem:
    """Run the handler on record ``index``; send back its value or throw its exception.

    Attributes:
        index: The record's position in the batch.
        renew: Claims to keep renewed while it runs (``heartbeat=True``), each
            to its own lease; empty for no heartbeat. A driver keeps one
            heartbeat going across consecutive RunItems that carry claims (its
            cadence does not restart with each record) and stops it at any
            other step.
        heartbeat_ms: How often to renew them, when ``renew`` is not empty.
    """

    index: int
    renew: tuple[Invocation, ...] = ()
    heartbeat_ms: int | None = None


@dataclass(frozen=True)
class CompleteMany:
    """Complete each (invocation, outcome); send back a list of bool or exception."""

    items: list[tuple[Invocation, bytes]]


@dataclass(frozen=True)
class ReleaseMany:
    """Release each invocation's claim; send back a list of bool or exception."""

    invocations: list[Invocation]


BatchStep = ClaimMany | RunItem | CompleteMany | ReleaseMany


def renew_call(inv: Invocation) -> RenewCall:
    """The store arguments of the renewal of an invocation's claim (to its own lease)."""
    return RenewCall(inv.key, inv.token, inv.lease_ms)


def still_held(held: Sequence[Invocation], answers: Sequence[bool | Exception]) -> list[Invocation]:
    """The claims a batch's heartbeat goes on renewing after one beat: not those found lost.

    Args:
        held: The claims the beat renewed.
        answers: Each renewal's answer (``renew_many``).

    Returns:
        The claims renewed; a lost one (another execution took it over, or its
        value is no record) is logged and not renewed again.
    """
    kept: list[Invocation] = []
    for inv, answer in zip(held, answers, strict=True):
        if answer is True:
            kept.append(inv)
        else:
            logger.warning(
                "onceonly: heartbeat found the lease on key %s lost",
                inv.key,
                extra=log_extra(None, inv.key, Event.LEASE_LOST.value),
            )
    return kept


def batch_flow(
    policy: Policy, records: Sequence[Any], invocations: Sequence[Invocation | None]
) -> Generator[BatchStep, Any, BatchResult]:
    """The steps of one batch; returns every record's outcome.

    Args:
        policy: The handler's policy.
        records: The records, in order.
        invocations: Each record's invocation, or None when it has no key.

    Raises:
        IdempotencyStoreError: The claims failed and ``on_store_error`` is "raise".
        BaseException: A KeyboardInterrupt / cancellation inside the handler,
            after the outcomes of the records that finished are stored and
            every other claim of the batch is released.
    """
    first: dict[str, int] = {}  # key -> index of its first record
    for index, inv in enumerate(invocations):
        if inv is not None and inv.key not in first:
            first[inv.key] = index
    claimed_at = list(first.values())
    claimed = [invocations[i] for i in claimed_at]
    assert all(inv is not None for inv in claimed)
    unprotected = False
    try:
        answers: list[ClaimResult | BaseException] = (
            (yield ClaimMany(claimed)) if claimed else []  # type: ignore[arg-type]
        )
    except IdempotencyStoreError:
        policy.count(Event.STORE_ERROR)
        if policy.config.on_store_error is not StoreErrorPolicy.RUN:
            raise
        logger.warning(
            "onceonly: store failed for batch %s; running unprotected",
            policy.name,
            extra=policy.log_extra(None, Event.UNPROTECTED.value),
        )
        # Nothing was claimed: every record runs unprotected, below.
        claimed_at, answers, unprotected = [], [], True

    by_key: dict[str, ItemResult] = {}
    # What a later record of each key meets: the store's record, or this batch's own claim.
    holders: dict[str, Found] = {}
    to_run: list[int] = []
    for index, answer in zip(claimed_at, answers, strict=True):
        inv = invocations[index]
        assert inv is not None
        if isinstance(answer, BaseException):
            policy.count(Event.STORE_ERROR, inv.key)
            by_key[inv.key] = ItemResult(
                records[index], ItemStatus.FAILED, error=answer, key=inv.key
            )
            continue
        decision = decide(answer, inv.fingerprint)
        if isinstance(decision, Run):
            if decision.takeover:
                policy.count(Event.TAKEOVER, inv.key)
            to_run.append(index)
            holders[inv.key] = _own_claim(inv)
        else:
            assert isinstance(answer, Found)
            holders[inv.key] = answer
            by_key[inv.key] = _met(policy, records[index], inv, decision)

    # Run the claimed records in batch order; store the outcomes together.
    renew: tuple[Invocation, ...] = ()
    heartbeat_ms: int | None = None
    if policy.config.heartbeat and to_run:
        # Every claim the batch runs stays held until the outcomes are stored
        # at the end: each is renewed all along, every third of its lease.
        renew = tuple(inv for inv in (invocations[i] for i in to_run) if inv is not None)
        heartbeat_ms = max(1, min(inv.lease_ms for inv in renew) // 3)
    finished: list[tuple[Invocation, bytes]] = []
    to_release: list[Invocation] = []
    ran: dict[str, ItemResult] = {}
    for position, index in enumerate(to_run):
        inv = invocations[index]
        assert inv is not None
        started = started_at(policy)
        try:
            value = yield RunItem(index, renew, heartbeat_ms)
            ran_ms = elapsed_ms(policy, started)
            outcome = encode_result(policy, value)
        except Exception as exc:  # one record's failure is that record's alone
            policy.count(Event.RELEASED, inv.key, elapsed_ms(policy, started))
            to_release.append(inv)
            ran[inv.key] = ItemResult(records[index], ItemStatus.FAILED, error=exc, key=inv.key)
            continue
        except BaseException:
            # Interrupted or cancelled: keep what finished, give back every other claim.
            pending = [invocations[i] for i in to_run[position:]] + to_release
            yield from _settle_interrupted(policy, finished, [p for p in pending if p is not None])
            raise
        policy.count(Event.EXECUTED, inv.key, ran_ms)
        finished.append((inv, outcome))
        ran[inv.key] = ItemResult(records[index], ItemStatus.RUN, value=value, key=inv.key)
    if finished:
        yield from _store_outcomes(policy, finished)
    # The outcomes are stored: a failed release now is logged, not raised (the
    # batch's result is true, and a raise would redeliver records that ran).
    yield from _release_quietly(policy, to_release)
    by_key.update(ran)

    items: list[ItemResult] = []
    for index, (record, inv) in enumerate(zip(records, invocations, strict=True)):
        if inv is None or unprotected:
            items.append((yield from _run_unprotected(policy, record, index)))
        elif first[inv.key] == index:
            items.append(by_key[inv.key])
        else:
            head, holder = by_key[inv.key], holders.get(inv.key)
            items.append(_repeated(policy, record, inv, head, holder, inv.key in ran))
    for index, item in enumerate(items):
        if item.status is ItemStatus.FAILED:
            _log_failed(policy, index, item)
    return BatchResult(items)


def _log_failed(policy: Policy, index: int, item: ItemResult) -> None:
    """One WARNING for a failed record: its position and its exception's type, not its text.

    The exception's message may quote the record; the caller has the exception
    itself in ``ItemResult.error``.
    """
    logger.warning(
        "onceonly: %s: record %d of the batch failed (%s)",
        policy.name,
        index,
        type(item.error).__name__,
        extra=policy.log_extra(item.key, ItemStatus.FAILED.value),
    )


def _own_claim(inv: Invocation) -> Found:
    """This batch's claim on a key, as a later record of the key meets it."""
    return Found(Record(Status.IN_PROGRESS, inv.token, 0, inv.fingerprint), 0)


def _met(
    policy: Policy, record: Any, inv: Invocation, decision: Replay | Mismatch | InProgress
) -> ItemResult:
    """The outcome of a record whose key is held by a stored record."""
    if isinstance(decision, Replay):
        policy.count(Event.REPLAYED, inv.key)
        return _replayed(policy, record, inv.key, decision)
    if isinstance(decision, Mismatch):
        error = key_reuse_error(policy, inv)
        return ItemResult(record, ItemStatus.FAILED, error=error, key=inv.key)
    error = in_progress_error(policy, inv, decision.retry_after_ms)
    return ItemResult(record, ItemStatus.IN_PROGRESS, error=error, key=inv.key)


def _repeated(
    policy: Policy,
    record: Any,
    inv: Invocation,
    head: ItemResult,
    holder: Found | None,
    own: bool,
) -> ItemResult:
    """A later record of a key already seen in this batch: what it would meet on its own.

    Another payload under the key is key reuse, as it is across batches; the
    same payload gets the stored record's answer, or (``own``: this batch
    claimed the key) the outcome of this batch's run.
    """
    if holder is None:  # the claim itself failed: the same failure
        return ItemResult(record, head.status, head.value, head.error, inv.key)
    decision = decide(holder, inv.fingerprint)
    assert not isinstance(decision, Run)  # a Found is never ours to run
    if isinstance(decision, Mismatch) or not own:
        return _met(policy, record, inv, decision)
    status = ItemStatus.REPLAYED if head.status is ItemStatus.RUN else head.status
    return ItemResult(record, status, head.value, head.error, inv.key)


def _replayed(policy: Policy, record: Any, key: str, decision: Replay) -> ItemResult:
    try:
        return ItemResult(
            record, ItemStatus.REPLAYED, replay(policy, decision.record, key), key=key
        )
    except Exception as exc:  # a corrupt outcome fails this record only
        return ItemResult(record, ItemStatus.FAILED, error=exc, key=key)


def _store_outcomes(
    policy: Policy, finished: list[tuple[Invocation, bytes]]
) -> Generator[BatchStep, Any, None]:
    try:
        answers = yield CompleteMany(finished)
    except IdempotencyStoreError as exc:
        answers = [exc] * len(finished)
    for (inv, _), answer in zip(finished, answers, strict=True):
        if answer is True:
            continue
        # The work is done and its result is returned either way (as for one call).
        event = Event.STORE_ERROR if isinstance(answer, BaseException) else Event.LEASE_LOST
        policy.count(event, inv.key)
        logger.warning(
            "onceonly: %s could not store the outcome of key %s (%s)",
            policy.name,
            inv.key,
            type(answer).__name__ if isinstance(answer, BaseException) else "lease lost",
            extra=policy.log_extra(inv.key, event.value),
        )


def _settle_interrupted(
    policy: Policy, finished: list[tuple[Invocation, bytes]], held: list[Invocation]
) -> Generator[BatchStep, Any, None]:
    """Store the outcomes of the records that finished, release every other claim.

    Runs when a record was interrupted (KeyboardInterrupt, cancellation), before
    that is re-raised: the records that ran are not run again on redelivery,
    the others run at once instead of after their lease. A store error here is
    logged, never raised in the interruption's place.
    """
    try:
        if finished:
            yield from _store_outcomes(policy, finished)
    except GeneratorExit:
        raise
    except BaseException:
        # Interrupted again while storing (the async driver lets that write
        # finish): the other claims are still given back.
        yield from _release_quietly(policy, held)
        raise
    yield from _release_quietly(policy, held)


def _release_quietly(policy: Policy, held: list[Invocation]) -> Generator[BatchStep, Any, None]:
    """Give back ``held``; a store error is logged and counted, never raised."""
    if not held:
        return
    try:
        answers: list[bool | BaseException] = yield ReleaseMany(held)
    except IdempotencyStoreError as exc:
        answers = [exc] * len(held)
    failed = [a for a in answers if isinstance(a, BaseException)]
    if failed:
        policy.count(Event.STORE_ERROR)
        logger.warning(
            "onceonly: %s could not release %d claim(s) of a batch (%s); "
            "they are held until their lease ends",
            policy.name,
            len(failed),
            type(failed[0]).__name__,
            extra=policy.log_extra(None, Event.STORE_ERROR.value),
        )


def _run_unprotected(
    policy: Policy, record: Any, index: int
) -> Generator[BatchStep, Any, ItemResult]:
    policy.count(Event.UNPROTECTED)
    try:
        value = yield RunItem(index)
    except Exception as exc:
        return ItemResult(record, ItemStatus.FAILED, error=exc)
    return ItemResult(record, ItemStatus.RUN, value=value)
