"""The batch flow: the I/O-free decisions for a batch of records, beside ``engine.py``.

A batch is an SQS / Kinesis / DynamoDB-streams event, or Redis Stream entries.

All records' keys are claimed together (one round trip per store node on
Redis), the records whose claim was taken run one by one, and their outcomes
are stored together (one more round trip). Each record gets its own outcome:
run, replayed, in progress or failed, so that a Lambda handler can report a
partial batch failure and let only those records come back. Records of the
same key inside one batch run once; the others replay that run's result.

``batch_flow`` decides (no I/O); the drivers' ``drive_batch`` carry it out for
``batch.process_batch`` and ``batch.process_batch_async``, as they carry out
the single-call ``engine.flow`` for the decorators.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import StoreErrorPolicy
from .engine import (
    Invocation,
    Mismatch,
    Policy,
    Replay,
    Run,
    decide,
    encode_result,
    in_progress_error,
    key_reuse_error,
    replay,
)
from .errors import IdempotencyStoreError
from .metrics import Event
from .records import ClaimResult

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
    """Run the handler on record ``index``; send back its value or throw its exception."""

    index: int


@dataclass(frozen=True)
class CompleteMany:
    """Complete each (invocation, outcome); send back a list of bool or exception."""

    items: list[tuple[Invocation, bytes]]


@dataclass(frozen=True)
class ReleaseMany:
    """Release each invocation's claim; send back a list of bool or exception."""

    invocations: list[Invocation]


BatchStep = ClaimMany | RunItem | CompleteMany | ReleaseMany


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
            after every claim of the batch is released.
    """
    stats = policy.stats
    first: dict[str, int] = {}  # key -> index of its first record
    for index, inv in enumerate(invocations):
        if inv is not None and inv.key not in first:
            first[inv.key] = index
    claimed = [invocations[i] for i in first.values()]
    assert all(inv is not None for inv in claimed)
    unprotected = False
    try:
        answers: list[ClaimResult | BaseException] = (
            (yield ClaimMany(claimed)) if claimed else []  # type: ignore[arg-type]
        )
    except IdempotencyStoreError:
        stats.add(Event.STORE_ERROR)
        if policy.config.on_store_error is not StoreErrorPolicy.RUN:
            raise
        logger.warning("onceonly: store failed for batch %s; running unprotected", policy.name)
        answers, unprotected = [], True

    by_key: dict[str, ItemResult] = {}
    to_run: list[int] = []
    for index, answer in zip(first.values(), answers, strict=True):
        inv = invocations[index]
        assert inv is not None
        record = records[index]
        if isinstance(answer, BaseException):
            stats.add(Event.STORE_ERROR)
            by_key[inv.key] = ItemResult(record, ItemStatus.FAILED, error=answer, key=inv.key)
            continue
        decision = decide(answer, inv.fingerprint)
        if isinstance(decision, Run):
            if decision.takeover:
                stats.add(Event.TAKEOVER)
            to_run.append(index)
        elif isinstance(decision, Replay):
            stats.add(Event.REPLAYED)
            by_key[inv.key] = _replayed(policy, record, inv.key, decision)
        elif isinstance(decision, Mismatch):
            error = key_reuse_error(policy, inv)
            by_key[inv.key] = ItemResult(record, ItemStatus.FAILED, error=error, key=inv.key)
        else:
            error = in_progress_error(policy, inv, decision.retry_after_ms)
            by_key[inv.key] = ItemResult(record, ItemStatus.IN_PROGRESS, error=error, key=inv.key)

    # Run the claimed records in batch order; store the outcomes together.
    finished: list[tuple[Invocation, bytes]] = []
    to_release: list[Invocation] = []
    ran: dict[str, ItemResult] = {}
    for position, index in enumerate(to_run):
        inv = invocations[index]
        assert inv is not None
        try:
            value = yield RunItem(index)
            outcome = encode_result(policy, value)
        except Exception as exc:  # one record's failure is that record's alone
            stats.add(Event.RELEASED)
            to_release.append(inv)
            ran[inv.key] = ItemResult(records[index], ItemStatus.FAILED, error=exc, key=inv.key)
            continue
        except BaseException:
            # Interrupted or cancelled: give back every claim not yet finished.
            pending = [invocations[i] for i in to_run[position:]] + to_release
            yield ReleaseMany([p for p in pending if p is not None])
            raise
        stats.add(Event.EXECUTED)
        finished.append((inv, outcome))
        ran[inv.key] = ItemResult(records[index], ItemStatus.RUN, value=value, key=inv.key)
    if finished:
        yield from _store_outcomes(policy, finished)
    if to_release:
        yield ReleaseMany(to_release)
    by_key.update(ran)

    items: list[ItemResult] = []
    for index, (record, inv) in enumerate(zip(records, invocations, strict=True)):
        if inv is None or unprotected:
            items.append((yield from _run_unprotected(policy, record, index)))
        elif first[inv.key] == index:
            items.append(by_key[inv.key])
        else:
            # A later record of a key already seen in this batch: same outcome.
            head = by_key[inv.key]
            status = ItemStatus.REPLAYED if head.status is ItemStatus.RUN else head.status
            items.append(ItemResult(record, status, head.value, head.error, inv.key))
    return BatchResult(items)


def _replayed(policy: Policy, record: Any, key: str, decision: Replay) -> ItemResult:
    try:
        return ItemResult(record, ItemStatus.REPLAYED, replay(policy, decision.record), key=key)
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
        policy.stats.add(
            Event.STORE_ERROR if isinstance(answer, BaseException) else Event.LEASE_LOST
        )
        logger.warning(
            "onceonly: %s could not store the outcome of key %s (%s)",
            policy.name,
            inv.key,
            type(answer).__name__ if isinstance(answer, BaseException) else "lease lost",
        )


def _run_unprotected(
    policy: Policy, record: Any, index: int
) -> Generator[BatchStep, Any, ItemResult]:
    policy.stats.add(Event.UNPROTECTED)
    try:
        value = yield RunItem(index)
    except Exception as exc:
        return ItemResult(record, ItemStatus.FAILED, error=exc)
    return ItemResult(record, ItemStatus.RUN, value=value)
