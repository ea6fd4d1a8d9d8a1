"""Record batches: run a handler once per idempotency key over an SQS, Kinesis or
DynamoDB-streams batch (or Redis Stream entries), with Lambda's partial batch response.

All records' keys are claimed together (one round trip per store node on
Redis), the records whose claim was taken run one by one, and their outcomes
are stored together (one more round trip). Each record gets its own outcome:
run, replayed, in progress or failed, so that a Lambda handler can report a
partial batch failure and let only those records come back. Records of the
same key inside one batch run once; the others replay that run's result (or,
with payload validation, fail with IdempotencyKeyReuseError when their payload
differs, as they would in another batch). With ``heartbeat=True`` every claim
the batch holds is renewed (all in one round trip) while its records run. An
interrupted batch (KeyboardInterrupt, cancellation) stores the outcomes of the
records that finished and releases the other claims before it re-raises.

The decisions are ``batch_engine.batch_flow``'s; the drivers carry them out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import _sync
from .batch_engine import BatchResult, ItemResult, ItemStatus, batch_flow, lambda_item_identifier
from .config import IdempotencyConfig
from .decorators import _Guard
from .engine import Invocation
from .errors import IdempotencyConfigError
from .metrics import Stats

__all__ = [
    "BatchResult",
    "ItemResult",
    "ItemStatus",
    "lambda_item_identifier",
    "process_batch",
    "process_batch_async",
]


def _prepare(
    handler: Callable[..., Any],
    records: Iterable[Any],
    store: Any,
    config: IdempotencyConfig | None,
    output_serializer: Any,
    lease_ms: int | None,
    stats: Stats | None,
) -> tuple[Any, list[Any], list[Invocation | None]]:
    if lease_ms is not None and (type(lease_ms) is not int or lease_ms <= 0):
        raise IdempotencyConfigError(f"lease_ms must be a positive integer, got {lease_ms!r}")
    if stats is not None and not isinstance(stats, Stats):
        raise IdempotencyConfigError(f"stats must be a onceonly Stats, got {type(stats).__name__}")
    guard = _Guard(handler, store, config, output_serializer, stats=stats)
    items = list(records)
    if guard.switched_off(stacklevel=4, count=False):
        # Switched off: every record runs unprotected (batch_flow counts each).
        return guard, items, [None] * len(items)
    invocations = [guard.invocation(record, lease_ms=lease_ms) for record in items]
    return guard, items, invocations


def process_batch(
    records: Iterable[Any],
    handler: Callable[[Any], Any],
    *,
    store: Any,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    lease_ms: int | None = None,
    stats: Stats | None = None,
) -> BatchResult:
    """Run ``handler(record)`` once per idempotency key over a batch of records.

    Args:
        records: The records (e.g. ``event["Records"]``).
        handler: Called with one record; its result is stored per key.
        store: A sync store.
        config: Options (``event_key_jmespath`` selects each record's key).
        output_serializer: As for ``idempotent_function``.
        lease_ms: How long the batch's claims hold (e.g. the Lambda's remaining
            time); ``config.lease_seconds`` by default. Every claim is taken
            before the first record runs, so it must cover the whole batch,
            unless ``config.heartbeat`` renews them (every third of it).
        stats: Counters to add the batch's events to (one per record: executed,
            replayed, released...), e.g. one ``Stats`` shared by every batch of
            a Lambda, with its ``on_event`` callbacks; a new one by default.

    Returns:
        Every record's outcome; ``.batch_item_failures()`` is Lambda's response.
        With idempotency switched off (``ONCEONLY_DISABLED``,
        ``POWERTOOLS_IDEMPOTENCY_DISABLED``, ``onceonly.testing.disabled()``)
        every record runs, unprotected, with a warning.

    Raises:
        IdempotencyConfigError: Bad options (``lease_ms``, ``stats`` not a
            ``Stats``), or an async store or handler.
        IdempotencySerializationError: A record cannot be made canonical JSON.
        IdempotencyStoreError: The claims failed (fail closed; nothing ran).
        KeyboardInterrupt: From the handler, after the outcomes of the records
            that finished are stored and the other claims released.
    """
    guard, items, invocations = _prepare(
        handler, records, store, config, output_serializer, lease_ms, stats
    )
    if guard.is_async:
        raise IdempotencyConfigError("process_batch takes a sync handler: use process_batch_async")
    return _sync.drive_batch(batch_flow(guard.policy, items, invocations), store, items, handler)


async def process_batch_async(
    records: Iterable[Any],
    handler: Callable[[Any], Any],
    *,
    store: Any,
    config: IdempotencyConfig | None = None,
    output_serializer: Any = None,
    lease_ms: int | None = None,
    stats: Stats | None = None,
) -> BatchResult:
    """The asyncio twin of :func:`process_batch`: an async handler and an async store.

    The claims go out together (one pipeline on ``AsyncRedisStore``), the
    records run one after the other, and the outcomes go out together. A
    cancelled batch stores the outcomes of the records that finished and
    releases the other claims (shielded: a second cancellation does not stop
    those writes) before the cancellation reaches the caller.
    """
    guard, items, invocations = _prepare(
        handler, records, store, config, output_serializer, lease_ms, stats
    )
    if not guard.is_async:
        raise IdempotencyConfigError("process_batch_async takes an async handler")
    from . import _async  # here: a sync program's cold start never loads asyncio

    return await _async.drive_batch(
        batch_flow(guard.policy, items, invocations), store, items, handler
    )
