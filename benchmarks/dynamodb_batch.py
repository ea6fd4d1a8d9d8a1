"""A batch of 10 new records through process_batch on DynamoDB, beside one conditional PutItem.

Run: .venv/bin/python benchmarks/dynamodb_batch.py [--rounds 5] [--n 30] [--batch 10]
(``bash scripts/bench dynamodb_batch`` installs moto's server first).

Starts moto's DynamoDB server (``python -m moto.server``, werkzeug's threaded
server: one thread per request) in a process of its own on a free loopback
port, so the server's Python does not share this process's GIL. Then, in
interleaved rounds (each round takes every measure in turn, so drift hits
them alike), it times:

- one conditional ``PutItem`` (``attribute_not_exists``) of a new key through
  raw boto3: the unit of the goal row;
- ``process_batch`` of ``--batch`` new records on ``DynamoDBStore`` (default
  ``max_parallel=10``: the claims side by side, then the completions);
- the same with ``max_parallel=1``: the calls one after another, as before.

It prints the medians, the goal row (batch / one PutItem, goal <= 3) and
whether it is met. moto applies requests in Python: how much of the pool's
overlap shows depends on how many requests its server can work on at once
(see the README's "Measured" section for what this machine showed).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from onceonly import IdempotencyConfig
from onceonly.batch import process_batch
from onceonly.stores.dynamodb import DynamoDBStore

GOAL = 3.0
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's server in its own process on a free loopback port; wait until it answers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_PORT": str(port)},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"moto's server exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto's server did not listen within 60 s")


def client_for(url: str) -> Any:
    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "total_max_attempts": 3},
        max_pool_connections=32,
    )
    return boto3.session.Session().client(
        "dynamodb", endpoint_url=url, region_name="us-east-1", config=config, **CREDENTIALS
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Sample:
    """One measure's wall times, and the CPU time the server and this process spent on it."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.walls: list[float] = []
        self.server_cpu = 0.0
        self.client_cpu = 0.0

    def take(self, action: Callable[[], Any]) -> None:
        server, client = cpu_seconds(self.server_pid), own_cpu_seconds()
        start = time.perf_counter()
        action()
        self.walls.append(time.perf_counter() - start)
        self.server_cpu += cpu_seconds(self.server_pid) - server
        self.client_cpu += own_cpu_seconds() - client

    def per_call(self, cpu: float) -> float:
        return cpu / len(self.walls)


def handler(record: dict[str, str]) -> dict[str, str]:
    return {"done": record["id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=30, help="samples of each measure per round")
    parser.add_argument("--batch", type=int, default=10, help="records per batch")
    args = parser.parse_args()

    server, url = start_moto()
    try:
        client = client_for(url)
        table = f"bench-{uuid.uuid4().hex[:8]}"
        DynamoDBStore.create_table(table, client=client)
        parallel = DynamoDBStore(table, client=client)
        sequential = DynamoDBStore(table, client=client, max_parallel=1)
        config = IdempotencyConfig(event_key_jmespath="id", key_prefix="bench")

        def put() -> None:
            client.put_item(
                TableName=table,
                Item={"id": {"S": f"raw:{uuid.uuid4().hex}"}, "v": {"S": "x"}},
                ConditionExpression="attribute_not_exists(id)",
            )

        def batch(store: DynamoDBStore) -> Callable[[], Any]:
            def run() -> None:
                records = [{"id": uuid.uuid4().hex} for _ in range(args.batch)]
                result = process_batch(records, handler, store=store, config=config)
                assert not result.failures(), result.failures()

            return run

        measures: dict[str, Callable[[], Any]] = {
            "one conditional PutItem (raw boto3)": put,
            f"process_batch, {args.batch} new records, max_parallel={parallel.max_parallel}": (
                batch(parallel)
            ),
            f"process_batch, {args.batch} new records, max_parallel=1 (one by one)": (
                batch(sequential)
            ),
        }
        for action in measures.values():  # warm: connections, the table check, code paths
            for _ in range(3):
                action()
        samples = {name: Sample(server.pid) for name in measures}
        for _ in range(args.rounds):
            for _ in range(args.n):
                for name, action in measures.items():
                    samples[name].take(action)
        parallel.close()
        sequential.close()
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    names = list(measures)
    medians = {name: statistics.median(sample.walls) for name, sample in samples.items()}
    width = max(map(len, names))
    print(f"moto server {url}, rounds={args.rounds}, n={args.n} per round, interleaved")
    print(
        f"| {'measure':{width}} | median ms | / PutItem | server CPU ms | client CPU ms |\n"
        f"|{'-' * (width + 2)}|----------:|----------:|--------------:|--------------:|"
    )
    unit = medians[names[0]]
    for name in names:
        sample = samples[name]
        print(
            f"| {name:{width}} | {medians[name] * 1000:9.2f} | {medians[name] / unit:9.2f} "
            f"| {sample.per_call(sample.server_cpu) * 1000:13.2f} "
            f"| {sample.per_call(sample.client_cpu) * 1000:13.2f} |"
        )
    ratio = medians[names[1]] / unit
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"goal row: batch of {args.batch} / one PutItem = {ratio:.2f}, goal <= 3: {verdict}")
    # moto runs each request in Python under one GIL: the server's CPU time per
    # batch is a floor no client-side parallelism can go under.
    batch = samples[names[1]]
    floor = max(batch.per_call(batch.server_cpu), batch.per_call(batch.client_cpu)) / unit
    print(
        f"this server's floor: the batch's server CPU time alone / one PutItem = {floor:.2f} "
        "(moto works on one request at a time: its Python holds one GIL)"
    )


if __name__ == "__main__":
    main()
