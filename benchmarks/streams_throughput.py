"""Stream entries consumed per second: a plain consumer beside onceonly's StreamConsumer.

Run: bash scripts/bench streams_throughput [--n 20000] [--rounds 5] [--batch 100]

One local server, one process. Each row consumes ``--n`` entries of its own
stream (written beforehand, not timed) in batches of ``--batch``, with the
same writes per entry: ``HINCRBY {b}:user:<u> points <p>`` and ``ZINCRBY
{b}:leaderboard <p> <u>``.

- plain: ``XREADGROUP``, then one pipeline per batch with the two writes and
  the ``XACK`` of each entry (no transaction: a crash between a write and
  its XACK applies the entry twice after redelivery).
- onceonly sync: ``StreamConsumer.run_once()`` with the writes as ``Effects``
  (per entry one script: owner check, dedup record, the writes, XACK).

Rounds are interleaved (the order flips every round) and medians printed,
with the round trips per batch each row made (counted at the socket: one
packed send is one round trip) and the server's time per entry (``INFO
commandstats``; the rest of an entry's time is the client's). The goal,
printed and not asserted, is at least 0.7 x the plain consumer's rate.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis_vs_powertools import find_server, running_server

from onceonly.streams import Effects, StreamConsumer

USERS = 1000
GOAL = 0.7


class CountingConnection(redis.Connection):
    """A redis-py connection that counts its sends: each is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Count, then send as redis-py does."""
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def _server_usec(client: redis.Redis) -> int:
    """Microseconds the server spent in commands since its last CONFIG RESETSTAT."""
    return sum(int(stat["usec"]) for stat in client.info("commandstats").values())


def _client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


def _fill(client: redis.Redis, stream: str, n: int) -> None:
    """Append n entries (user, points) to the stream and create the group; not timed."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"user": str(i % USERS), "points": str(1 + i % 7), "n": str(i)})
        if len(pipe) == 1000:
            pipe.execute()
    pipe.execute()
    client.xgroup_create(stream, "g", id="0")


def plain(port: int, n: int, batch: int) -> tuple[float, float, float]:
    """Plain redis-py: read a batch, then writes and XACKs in one pipeline.

    Returns:
        Entries per second, round trips per batch, server microseconds per entry.
    """
    client = _client(port)
    tag = uuid.uuid4().hex[:8]
    stream = f"{{{tag}}}:events"
    _fill(client, stream, n)
    client.config_resetstat()
    before = CountingConnection.sends
    batches = done = 0
    start = time.perf_counter()
    while done < n:
        reply = client.xreadgroup("g", "c1", {stream: ">"}, count=batch)
        entries = reply[0][1] if reply else []
        pipe = client.pipeline(transaction=False)
        for entry_id, fields in entries:
            user, points = fields[b"user"].decode(), int(fields[b"points"])
            pipe.hincrby(f"{{{tag}}}:user:{user}", "points", points)
            pipe.zincrby(f"{{{tag}}}:leaderboard", points, user)
            pipe.xack(stream, "g", entry_id)
        pipe.execute()
        done += len(entries)
        batches += 1
    rate = n / (time.perf_counter() - start)
    trips = (CountingConnection.sends - before) / batches
    server = _server_usec(client) / n
    client.close()
    return rate, trips, server


def onceonly_sync(port: int, n: int, batch: int) -> tuple[float, float, float]:
    """StreamConsumer.run_once() with the same writes as Effects.

    Returns:
        Entries per second, round trips per batch, server microseconds per entry.
    """
    client = _client(port)
    tag = uuid.uuid4().hex[:8]
    stream = f"{{{tag}}}:events"
    _fill(client, stream, n)

    def handler(entry: Any) -> Effects:
        user, points = entry.fields["user"], int(entry.fields["points"])
        return (
            Effects()
            .hincrby(f"{{{tag}}}:user:{user}", "points", points)
            .zincrby(f"{{{tag}}}:leaderboard", points, user)
        )

    consumer = StreamConsumer(
        client, stream=stream, group="g", consumer="c1", handler=handler, batch_size=batch,
        block_ms=0, event_id_field="n",
    )  # fmt: skip
    consumer.ensure_group()  # the group exists: this is the one-time BUSYGROUP round trip
    consumer.run_once()  # drains its (empty) pending list, loads the script: warm-up
    client.config_resetstat()
    before = CountingConnection.sends
    applied_before = consumer.stats.applied
    batches = 0
    start = time.perf_counter()
    while consumer.stats.applied < n:
        consumer.run_once()
        batches += 1
    done = consumer.stats.applied - applied_before
    rate = done / (time.perf_counter() - start)
    trips = (CountingConnection.sends - before) / batches
    server = _server_usec(client) / done
    client.close()
    return rate, trips, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="entries per row and round")
    parser.add_argument("--batch", type=int, default=100, help="entries per read and commit")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary, how = find_server()
    rates: dict[str, list[float]] = {}
    trips: dict[str, list[float]] = {}
    server: dict[str, list[float]] = {}
    with running_server(binary) as port:
        info = redis.Redis(port=port).info("server")
        name = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version", info["redis_version"])
        print(
            f"server: {name} {version} ({how}), one process, {args.n} entries per row, "
            f"batches of {args.batch}, {args.rounds} rounds"
        )
        for r in range(args.rounds):
            runs: list[tuple[str, Callable[[], tuple[float, float, float]]]] = [
                ("plain (XREADGROUP, pipeline, XACK)", lambda: plain(port, args.n, args.batch)),
                ("onceonly StreamConsumer (sync)", lambda: onceonly_sync(port, args.n, args.batch)),
            ]
            if r % 2:
                runs.reverse()  # alternate the order, so drift hits every row alike
            for label, run in runs:
                rate, per_batch, usec = run()
                rates.setdefault(label, []).append(rate)
                trips.setdefault(label, []).append(per_batch)
                server.setdefault(label, []).append(usec)
            redis.Redis(port=port).flushall()
    median = {label: statistics.median(values) for label, values in rates.items()}
    base = median["plain (XREADGROUP, pipeline, XACK)"]
    width = max(map(len, median))
    head = f"{'entries per second':{width}}  {'median':>8}  {'x plain':>8}  {'trips/batch':>11}"
    print(f"\n{head}  {'server us/entry':>15}")
    for label, value in median.items():
        per_batch = statistics.median(trips[label])
        usec = statistics.median(server[label])
        row = f"{label:{width}}  {value:8.0f}  {value / base:8.2f}  {per_batch:11.2f}"
        print(f"{row}  {usec:15.1f}")
    ours = median["onceonly StreamConsumer (sync)"] / base
    print(f"\ngoal: >= {GOAL} x plain: {'met' if ours >= GOAL else 'NOT met'} ({ours:.2f} x)")


if __name__ == "__main__":
    main()
