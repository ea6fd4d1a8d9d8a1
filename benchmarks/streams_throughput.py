"""Stream entries consumed per second: plain consumers beside onceonly's, sync and asyncio.

Run: bash scripts/bench streams_throughput [--n 20000] [--rounds 5] [--batch 100]

One local server, one process. Each row consumes ``--n`` entries of its own
stream (written beforehand, not timed) in batches of ``--batch``, with the
same writes per entry: ``HINCRBY {b}:user:<u> points <p>`` and ``ZINCRBY
{b}:leaderboard <p> <u>``.

- plain: ``XREADGROUP``, then one pipeline per batch with the two writes and
  the ``XACK`` of each entry (no transaction: a crash between a write and
  its XACK applies the entry twice after redelivery).
- onceonly sync: ``StreamConsumer.run_once()`` with the writes as ``Effects``
  (owner check, dedup record, the writes and XACK of each entry, atomically;
  the batch's commits in one script call).
- plain asyncio / onceonly asyncio: the same two with ``redis.asyncio``
  (``AsyncStreamConsumer``, ``--concurrency`` handlers at a time).

Rounds are interleaved (the order turns every round) and medians printed,
with the round trips per batch each row made (counted at the socket: one
packed send is one round trip) and the server's time per entry two ways:
``cmd``, the ``INFO commandstats`` time of the commands the client sent
(a script's inner commands are also counted in their own rows, so only the
commands sent are summed), and ``cpu``, the server's CPU time
(``INFO cpu``: parsing, replies and I/O too); and this process's CPU time
per entry (the client's work). On a busy machine the rates move with the
load; the CPU times per entry move much less. The goal, printed and not
asserted, is at least 0.7 x the plain (sync) consumer's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from redis_vs_powertools import find_server, running_server

from onceonly.streams import AsyncStreamConsumer, Effects, StreamConsumer, StreamEntry

USERS = 1000
GOAL = 0.7
PLAIN = "plain (XREADGROUP, pipeline, XACK)"
SYNC = "onceonly StreamConsumer (sync)"
PLAIN_ASYNC = "plain, asyncio"
ASYNC = "onceonly AsyncStreamConsumer"

_sends = 0  # packed sends of both connection classes: one each per round trip
_sent: set[str] = set()  # the names of the commands sent (commandstats rows to sum)


def _names(commands: Iterable[Iterable[Any]]) -> None:
    for command in commands:
        name = next(iter(command))
        _sent.add((name.decode() if isinstance(name, bytes) else str(name)).lower())


class CountingConnection(redis.Connection):
    """A redis-py connection that counts its sends and notes the commands' names."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Count, then send as redis-py does."""
        global _sends
        _sends += 1
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        """Note the name, then send as redis-py does."""
        _names([args])
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        """Note the names (a pipeline's), then pack as redis-py does."""
        commands = list(commands)
        _names(commands)
        return super().pack_commands(commands)


class AsyncCountingConnection(aredis.Connection):
    """The asyncio twin of :class:`CountingConnection`."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Count, then send as redis-py does."""
        global _sends
        _sends += 1
        await super().send_packed_command(command, check_health)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        """Note the name, then send as redis-py does."""
        _names([args])
        await super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        """Note the names, then pack as redis-py does."""
        commands = list(commands)
        _names(commands)
        return super().pack_commands(commands)


@dataclass(frozen=True)
class Row:
    """One row's figures from one round."""

    rate: float  # entries per second
    trips: float  # round trips per batch
    cmd_us: float  # commandstats microseconds per entry, commands sent only
    cpu_us: float  # server CPU microseconds per entry
    client_us: float  # this process's CPU microseconds per entry


class Meter:
    """Round trips, commandstats and server CPU of the timed part of one row."""

    def __init__(self, port: int) -> None:
        self._admin = redis.Redis(port=port)

    def __enter__(self) -> Meter:
        self._admin.config_resetstat()
        _sent.clear()
        self._sends = _sends
        self._cpu = self._cpu_seconds()
        self._client = time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.client = time.process_time() - self._client
        self.cpu = self._cpu_seconds() - self._cpu
        self.sends = _sends - self._sends
        stats = self._admin.info("commandstats")
        self.usec = sum(int(v["usec"]) for k, v in stats.items() if k[8:] in _sent)
        self._admin.close()

    def _cpu_seconds(self) -> float:
        cpu = self._admin.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def row(self, done: int, batches: int) -> Row:
        """The figures of ``done`` entries in ``batches`` batches."""
        return Row(
            done / self.seconds,
            self.sends / batches,
            self.usec / done,
            self.cpu * 1e6 / done,
            self.client * 1e6 / done,
        )


def _stream() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return tag, f"{{{tag}}}:events"


def _fill(port: int, stream: str, n: int) -> None:
    """Append n entries (user, points) to the stream and create the group; not timed."""
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"user": str(i % USERS), "points": str(1 + i % 7), "n": str(i)})
        if len(pipe) == 1000:
            pipe.execute()
    pipe.execute()
    client.xgroup_create(stream, "g", id="0")
    client.close()


def _effects(tag: str) -> Callable[[StreamEntry], Effects]:
    def handler(entry: StreamEntry) -> Effects:
        # The same decoding as the plain rows' (two fields, not all of them).
        user, points = entry.raw_fields[b"user"].decode(), int(entry.raw_fields[b"points"])
        return (
            Effects()
            .hincrby(f"{{{tag}}}:user:{user}", "points", points)
            .zincrby(f"{{{tag}}}:leaderboard", points, user)
        )

    return handler


def plain(port: int, n: int, batch: int) -> Row:
    """Plain redis-py: read a batch, then writes and XACKs in one pipeline."""
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    tag, stream = _stream()
    _fill(port, stream, n)
    client.ping()  # connect (and its handshake) before the timed part, as the others do
    batches = done = 0
    with Meter(port) as meter:
        while done < n:
            reply = client.xreadgroup("g", "c1", {stream: ">"}, count=batch)
            entries = reply[0][1] if reply else []
            pipe = _plain_writes(client.pipeline(transaction=False), tag, stream, entries)
            pipe.execute()
            done += len(entries)
            batches += 1
    client.close()
    return meter.row(done, batches)


def _plain_writes(pipe: Any, tag: str, stream: str, entries: list[Any]) -> Any:
    """Queue the plain consumer's writes of a batch: HINCRBY, ZINCRBY, XACK per entry."""
    for entry_id, fields in entries:
        user, points = fields[b"user"].decode(), int(fields[b"points"])
        pipe.hincrby(f"{{{tag}}}:user:{user}", "points", points)
        pipe.zincrby(f"{{{tag}}}:leaderboard", points, user)
        pipe.xack(stream, "g", entry_id)
    return pipe


def onceonly_sync(port: int, n: int, batch: int) -> Row:
    """StreamConsumer.run_once() with the same writes as Effects."""
    pool = redis.ConnectionPool(port=port, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    tag, stream = _stream()
    _fill(port, stream, n)
    consumer = StreamConsumer(
        client, stream=stream, group="g", consumer="c1", handler=_effects(tag), batch_size=batch,
        block_ms=0, event_id_field="n",
    )  # fmt: skip
    consumer.ensure_group()  # the group exists: this is the one-time BUSYGROUP round trip
    consumer.run_once()  # drains its (empty) pending list, loads the script: warm-up
    applied = consumer.stats.applied
    batches = 0
    with Meter(port) as meter:
        while consumer.stats.applied < n:
            consumer.run_once()
            batches += 1
    client.close()
    return meter.row(consumer.stats.applied - applied, batches)


async def _plain_async(port: int, n: int, batch: int) -> Row:
    pool = aredis.ConnectionPool(port=port, connection_class=AsyncCountingConnection)
    client = aredis.Redis(connection_pool=pool)
    tag, stream = _stream()
    _fill(port, stream, n)
    await client.ping()
    batches = done = 0
    with Meter(port) as meter:
        while done < n:
            reply = await client.xreadgroup("g", "c1", {stream: ">"}, count=batch)
            entries = reply[0][1] if reply else []
            pipe = _plain_writes(client.pipeline(transaction=False), tag, stream, entries)
            await pipe.execute()
            done += len(entries)
            batches += 1
    await client.aclose()
    return meter.row(done, batches)


async def _onceonly_async(port: int, n: int, batch: int, concurrency: int) -> Row:
    pool = aredis.ConnectionPool(port=port, connection_class=AsyncCountingConnection)
    client = aredis.Redis(connection_pool=pool)
    tag, stream = _stream()
    _fill(port, stream, n)
    consumer = AsyncStreamConsumer(
        client, stream=stream, group="g", consumer="c1", handler=_effects(tag), batch_size=batch,
        block_ms=0, event_id_field="n", concurrency=concurrency,
    )  # fmt: skip
    await consumer.ensure_group()
    await consumer.run_once()  # warm-up, as in the sync row
    applied = consumer.stats.applied
    batches = 0
    with Meter(port) as meter:
        while consumer.stats.applied < n:
            await consumer.run_once()
            batches += 1
    await client.aclose()
    return meter.row(consumer.stats.applied - applied, batches)


def plain_async(port: int, n: int, batch: int) -> Row:
    """Plain redis.asyncio: as :func:`plain`, awaited."""
    return asyncio.run(_plain_async(port, n, batch))


def onceonly_async(port: int, n: int, batch: int, concurrency: int) -> Row:
    """AsyncStreamConsumer.run_once() with the same writes (a plain handler, not awaited)."""
    return asyncio.run(_onceonly_async(port, n, batch, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="entries per row and round")
    parser.add_argument("--batch", type=int, default=100, help="entries per read and commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="of the asyncio consumer")
    args = parser.parse_args()
    binary, how = find_server()
    rows: dict[str, list[Row]] = {}
    with running_server(binary) as port:
        info = redis.Redis(port=port).info("server")
        name = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version", info["redis_version"])
        print(
            f"server: {name} {version} ({how}), one process, {args.n} entries per row, "
            f"batches of {args.batch}, {args.rounds} rounds, asyncio concurrency {args.concurrency}"
        )
        n, batch = args.n, args.batch
        runs: list[tuple[str, Callable[[], Row]]] = [
            (PLAIN, lambda: plain(port, n, batch)),
            (SYNC, lambda: onceonly_sync(port, n, batch)),
            (PLAIN_ASYNC, lambda: plain_async(port, n, batch)),
            (ASYNC, lambda: onceonly_async(port, n, batch, args.concurrency)),
        ]
        for r in range(args.rounds):
            # Turn the order every round, so drift hits every row alike.
            shift = r % len(runs)
            for label, run in runs[shift:] + runs[:shift]:
                rows.setdefault(label, []).append(run())
                redis.Redis(port=port).flushall()
    base = statistics.median(row.rate for row in rows[PLAIN])
    width = max(map(len, rows))
    print(
        f"\n{'entries per second':{width}}  {'median':>8}  {'x plain':>8}  {'trips/batch':>11}"
        f"  {'server cmd us/entry':>19}  {'server cpu us/entry':>19}  {'client cpu us/entry':>19}"
    )
    for label, values in rows.items():
        rate = statistics.median(v.rate for v in values)
        trips = statistics.median(v.trips for v in values)
        cmd = statistics.median(v.cmd_us for v in values)
        cpu = statistics.median(v.cpu_us for v in values)
        client = statistics.median(v.client_us for v in values)
        print(
            f"{label:{width}}  {rate:8.0f}  {rate / base:8.2f}  {trips:11.2f}"
            f"  {cmd:19.1f}  {cpu:19.1f}  {client:19.1f}"
        )
    ours = statistics.median(row.rate for row in rows[SYNC]) / base
    print(f"\ngoal: >= {GOAL} x plain: {'met' if ours >= GOAL else 'NOT met'} ({ours:.2f} x)")


if __name__ == "__main__":
    main()
