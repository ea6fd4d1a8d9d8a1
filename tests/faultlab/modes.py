"""The asyncio and batch ways of calling the same function, for workers in those modes.

A worker in ``async`` mode awaits onceonly's async decorated function, many
deliveries at once; in ``batch`` mode it hands its deliveries to
``process_batch`` ten at a time. Both record what each delivery gave in the
ledger exactly as :meth:`faultlab.targets.Caller.call` does, so the figures
count the three modes alike. Powertools targets have only the sync mode here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faultlab.targets import (
    KEY_PREFIX,
    ONCEONLY,
    Caller,
    Target,
    dynamodb_client,
    onceonly_store,
    redis_options,
)

Delivery = list[Any]  # [key, delivery id, payload fields]


def _config(target: Target) -> Any:
    from onceonly import IdempotencyConfig

    return IdempotencyConfig(
        event_key_jmespath="id",
        key_prefix=KEY_PREFIX,
        lease_seconds=target.lease_ms / 1000,
        heartbeat=target.heartbeat,
    )


def async_store(target: Target) -> Any:
    """onceonly's asyncio store for ``target``."""
    if target.store in ("redis", "sentinel", "cluster"):
        from onceonly.stores.redis import AsyncRedisStore

        return AsyncRedisStore.from_url(target.address, **redis_options(target))
    if target.store == "sqlite":
        from onceonly.stores import AsyncSQLiteStore

        return AsyncSQLiteStore(target.address)
    if target.store == "dynamodb":
        from onceonly.stores.dynamodb import AsyncDynamoDBStore

        return AsyncDynamoDBStore(
            target.table, client=dynamodb_client(target.address, target.socket_timeout_s)
        )
    raise ValueError(f"no async store for {target.store!r}")


def run_async(caller: Caller, deliveries: list[Delivery], concurrency: int = 16) -> None:
    """Deliver with onceonly's asyncio decorator, ``concurrency`` deliveries at a time."""
    if caller.target.library != ONCEONLY:
        raise ValueError("the async mode is onceonly's")
    from onceonly import idempotent_function

    async def body(event: dict[str, Any]) -> dict[str, str]:
        return caller.body(event)

    function = idempotent_function(
        body, store=async_store(caller.target), data="event", config=_config(caller.target)
    )

    async def deliver(gate: asyncio.Semaphore, item: Delivery) -> None:
        key, delivery, payload = item
        event = caller.event(key, payload)
        async with gate:
            try:
                result = await function(event=event)
            except Exception as exc:  # every error is counted, none is lost
                caller.record_error(key, event, exc, ph="load", d=delivery, ms=0)
            else:
                caller.record(key, event, result, ph="load", d=delivery)

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(deliver(gate, item) for item in deliveries))

    asyncio.run(main())


def run_batch(caller: Caller, deliveries: list[Delivery], size: int = 10) -> None:
    """Deliver through ``process_batch``, ``size`` records per batch."""
    if caller.target.library != ONCEONLY:
        raise ValueError("the batch mode is onceonly's")
    from onceonly.batch import process_batch
    from onceonly.batch_engine import ItemStatus

    store = onceonly_store(caller.target)
    config = _config(caller.target)
    for start in range(0, len(deliveries), size):
        chunk = deliveries[start : start + size]
        records = [caller.event(key, payload) for key, _, payload in chunk]
        pairs = zip(records, chunk, strict=True)
        delivery_of = {record["call"]: delivery for record, (_, delivery, _) in pairs}
        try:
            result = process_batch(records, caller.body, store=store, config=config)
        except Exception as exc:  # the whole batch failed: every record is counted
            for record in records:
                where = {"ph": "load", "d": delivery_of[record["call"]], "ms": 0}
                caller.record_error(record["id"], record, exc, **where)
            continue
        for item in result.items:
            record = item.record
            where = {"ph": "load", "d": delivery_of[record["call"]]}
            if item.status in (ItemStatus.RUN, ItemStatus.REPLAYED):
                caller.record(record["id"], record, item.value, **where)
            else:
                error = item.error if item.error is not None else RuntimeError(item.status.value)
                caller.record_error(record["id"], record, error, ms=0, **where)
