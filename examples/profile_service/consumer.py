"""One partition's consumer process: ``python consumer.py --cluster H:P --partition p0 ...``.

``--mode onceonly`` runs a :class:`~onceonly.streams.StreamConsumer` whose
handler returns the event's writes as ``Effects`` (applied with the dedup
record and the XACK in one script). ``--mode plain`` is what a consumer
without onceonly does: read a batch, send each entry's writes, then ``XACK``
the batch. Both first read their own pending entries (those a killed process
under the same name left), then new ones. Each entry takes ``--work-ms`` of
the handler's own work (a sleep standing for validation, a lookup) before
its writes. Runs until killed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service

BATCH = 50


def run_plain(client: Any, stream: str, name: str, work_ms: float) -> None:
    """Read a batch, write each entry's effects, acknowledge the batch.

    An entry written before a crash and not yet acknowledged is delivered
    again after the restart, and applied again.
    """
    try:
        client.xgroup_create(stream, service.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    cursor = "0"  # this consumer's pending entries first, page by page, then new ones
    while True:
        draining = cursor != ">"
        reply = client.xreadgroup(
            service.GROUP, name, {stream: cursor}, count=BATCH, block=None if draining else 500
        )
        entries = reply[0][1] if reply else []
        if draining and not entries:
            cursor = ">"
            continue
        for _, raw in entries:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            time.sleep(work_ms / 1000)
            pipe = client.pipeline(transaction=False)
            service.apply_event(fields, pipe)
            pipe.execute()  # the writes are made ...
        if entries:  # ... and the batch acknowledged after them
            client.xack(stream, service.GROUP, *(entry_id for entry_id, _ in entries))
        if draining:
            cursor = entries[-1][0].decode()


def main() -> None:
    """Parse the options, connect as the partition's ACL user, consume until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="host:port of a cluster node")
    parser.add_argument("--partition", required=True, help="p0, p1, ...")
    parser.add_argument("--name", required=True, help="the consumer's name in the group")
    parser.add_argument("--password", required=True, help="the partition user's password")
    parser.add_argument("--mode", choices=("onceonly", "plain"), default="onceonly")
    parser.add_argument("--work-ms", type=float, default=1.0, help="the handler's work per entry")
    parser.add_argument("--emails", type=Path, help="append welcome e-mails here (onceonly)")
    args = parser.parse_args()
    host, port = args.cluster.rsplit(":", 1)
    client = redis.RedisCluster(
        host=host, port=int(port), username=f"consumer-{args.partition}", password=args.password
    )
    stream = service.stream(args.partition)
    if args.mode == "plain":
        run_plain(client, stream, args.name, args.work_ms)
        return
    from onceonly.streams import EntryStatus, StreamConsumer

    store = None
    if args.emails is not None:
        from onceonly.stores import SQLiteStore

        store = SQLiteStore(args.emails.with_suffix(".db"))
    handler = service.onceonly_handler(args.emails, store, args.work_ms)

    def new_consumer() -> StreamConsumer:
        return StreamConsumer(
            client,
            stream=stream,
            group=service.GROUP,
            consumer=args.name,
            handler=handler,
            batch_size=BATCH,
            block_ms=500,
            max_deliveries=None,
            event_id_field="event_id",
        )

    consumer = new_consumer()
    while True:
        results = consumer.run_once()
        if any(r.status is EntryStatus.FAILED for r in results):
            # A FAILED entry stays pending; until the reclaim loop lands, a new
            # consumer under this name (it drains its own pending first) retries it.
            consumer = new_consumer()


if __name__ == "__main__":
    main()
