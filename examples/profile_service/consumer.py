"""One partition's consumer process: ``python consumer.py --cluster H:P --partition p0 ...``.

``--mode onceonly`` runs a :class:`~onceonly.streams.StreamConsumer` whose
handler returns the event's writes as ``Effects`` (applied with the dedup
record and the XACK in one script). ``--mode plain`` is what a consumer
without onceonly does: read a batch, send each entry's writes, then ``XACK``
the batch. Both first read their own pending entries (those a killed process
under the same name left), then new ones; the onceonly consumer also takes
over, every ``--min-idle-ms``, entries idle that long on any consumer of the
group (a killed one under another name, or its own FAILED ones): its reclaim
scan. Each entry takes ``--work-ms`` of the handler's own work (a sleep
standing for validation, a lookup) before its writes. With ``--stats FILE``
the onceonly consumer writes its counts (``consumer.stats``) there as JSON
after every pass that changed them. Runs until killed; on SIGTERM the
onceonly consumer finishes its pass, writes its counts and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
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
    parser.add_argument(
        "--min-idle-ms", type=int, default=1000, help="reclaim entries idle this long (onceonly)"
    )
    parser.add_argument("--stats", type=Path, help="write the consumer's counts here (onceonly)")
    args = parser.parse_args()
    host, port = args.cluster.rsplit(":", 1)
    client = redis.RedisCluster(
        host=host, port=int(port), username=f"consumer-{args.partition}", password=args.password
    )
    stream = service.stream(args.partition)
    if args.mode == "plain":
        run_plain(client, stream, args.name, args.work_ms)
        return
    from onceonly.streams import StreamConsumer

    store = None
    if args.emails is not None:
        from onceonly.stores import SQLiteStore

        store = SQLiteStore(args.emails.with_suffix(".db"))
    handler = service.onceonly_handler(args.emails, store, args.work_ms)

    consumer = StreamConsumer(
        client,
        stream=stream,
        group=service.GROUP,
        consumer=args.name,
        handler=handler,
        batch_size=BATCH,
        block_ms=500,
        # Small, so that a killed consumer's entries are taken over within the
        # run; a FAILED entry (it stays pending) is retried the same way.
        min_idle_ms=args.min_idle_ms,
        max_deliveries=None,
        event_id_field="event_id",
    )
    stop = []  # SIGTERM: this pass is the last (a flag: nothing else runs in the handler)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    written = None
    while True:
        consumer.run_once()
        stats = consumer.stats
        if args.stats is not None and stats != written:
            # Replaced whole (write, then rename): a kill never leaves half a file.
            partial = args.stats.with_suffix(".tmp")
            partial.write_text(json.dumps(dataclasses.asdict(stats)))
            os.replace(partial, args.stats)
            written = stats
        if stop:
            return


if __name__ == "__main__":
    main()
