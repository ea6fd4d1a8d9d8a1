"""The targets the figures name, each on servers of its own started for the run.

``provision(name, folder, engine)`` starts what the target needs (a Redis
server with the named persistence, a primary and replica, a Sentinel set, a
cluster, moto's server in its own process, an SQLite file) and yields a
:class:`Lab`: the target, and handles on the servers for the faults.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis_harness as harness
from faultlab.targets import ONCEONLY, POWERTOOLS, Target, dynamodb_client

# name -> (library, store, persistence / topology, wait_replicas)
TARGETS: dict[str, tuple[str, str, str, int]] = {
    "onceonly/redis-aof-everysec": (ONCEONLY, "redis", "everysec", 0),
    "onceonly/redis-aof-always": (ONCEONLY, "redis", "always", 0),
    "onceonly/redis-wait1": (ONCEONLY, "redis", "replica", 1),
    "onceonly/sentinel": (ONCEONLY, "sentinel", "sentinel", 0),
    "onceonly/sentinel-wait1": (ONCEONLY, "sentinel", "sentinel", 1),
    "onceonly/cluster": (ONCEONLY, "cluster", "cluster", 0),
    "onceonly/cluster-wait1": (ONCEONLY, "cluster", "cluster", 1),
    "onceonly/sqlite": (ONCEONLY, "sqlite", "file", 0),
    "onceonly/dynamodb": (ONCEONLY, "dynamodb", "moto", 0),
    "powertools/redis-aof-everysec": (POWERTOOLS, "redis", "everysec", 0),
    "powertools/redis-aof-always": (POWERTOOLS, "redis", "always", 0),
    "powertools/dynamodb": (POWERTOOLS, "dynamodb", "moto", 0),
}


@dataclass
class MotoProcess:
    """moto's server in a child process (see :mod:`faultlab.moto_process`)."""

    process: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls, folder: Path) -> MotoProcess:
        tests = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, path]))}
        log = open(folder / "moto.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "faultlab.moto_process"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        log.close()
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            proc.kill()
            raise RuntimeError(f"moto's server did not start: {(folder / 'moto.log').read_text()}")
        return cls(proc, url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()  # the pipe its URL came on


@dataclass
class Lab:
    """A target and the servers under it."""

    target: Target
    folder: Path
    server: harness.Server | None = None  # the standalone server, or the primary
    replicas: list[harness.Server] = field(default_factory=list)
    sentinels: harness.SentinelSet | None = None
    cluster: harness.Cluster | None = None
    moto: MotoProcess | None = None

    def with_heartbeat(self) -> Lab:
        """The same lab, its target with onceonly's heartbeat on."""
        return replace(self, target=self.target.with_(heartbeat=True))

    def pid(self) -> int:
        """The process the server faults hit (the Redis server or moto's)."""
        if self.server is not None and self.server.process is not None:
            return self.server.process.pid
        if self.moto is not None:
            return self.moto.process.pid
        raise RuntimeError(f"{self.target.name} has no server process to fault")


def _wait_replica(primary: harness.Server, replica: harness.Server) -> None:
    harness.wait_until(
        lambda: replica.client().info("replication").get("master_link_status") == "up",
        "the replica to sync",
    )
    del primary


@contextlib.contextmanager
def provision(
    name: str, folder: Path, engine: harness.Engine, *, lease_ms: int = 2_000, **changes: Any
) -> Iterator[Lab]:
    """Start the servers ``name`` needs; yield its lab; stop them all at the end."""
    library, store, topology, wait = TARGETS[name]
    folder.mkdir(parents=True, exist_ok=True)
    target = Target(name=name, library=library, store=store, wait_replicas=wait, lease_ms=lease_ms)
    lab = Lab(target, folder)
    stoppable: list[Any] = []
    try:
        if topology in ("everysec", "always", "replica"):
            extra = ["appendfsync always"] if topology == "always" else []
            lab.server = harness.standalone(engine, folder / "primary", extra=extra)
            stoppable.append(lab.server)
            if topology == "replica":
                follow = [f"replicaof {harness.HOST} {lab.server.port}"]
                replica = harness.standalone(engine, folder / "replica", extra=follow)
                stoppable.append(replica)
                lab.replicas.append(replica)
                _wait_replica(lab.server, replica)
            lab.target = target.with_(address=f"redis://{harness.HOST}:{lab.server.port}/0")
        elif topology == "sentinel":
            lab.sentinels = harness.sentinel_set(engine, folder / "sentinel")
            stoppable.append(lab.sentinels)
            lab.server = lab.sentinels.primary
            lab.replicas = list(lab.sentinels.replicas)
            lab.target = target.with_(address=lab.sentinels.url())
        elif topology == "cluster":
            lab.cluster = harness.cluster(engine, folder / "cluster")
            stoppable.append(lab.cluster)
            port = lab.cluster.nodes[0].port
            lab.target = target.with_(address=f"redis://{harness.HOST}:{port}/0")
        elif topology == "file":
            lab.target = target.with_(address=str(folder / "store.sqlite3"))
        elif topology == "moto":
            lab.moto = MotoProcess.start(folder)
            stoppable.append(lab.moto)
            table = f"faults-{uuid.uuid4().hex[:8]}"
            client = dynamodb_client(lab.moto.url, 10)
            if library == ONCEONLY:
                from onceonly.stores.dynamodb import DynamoDBStore

                DynamoDBStore.create_table(table, client=client)
            else:
                client.create_table(
                    TableName=table,
                    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            client.close()
            lab.target = target.with_(address=lab.moto.url, table=table)
        lab.target = lab.target.with_(**changes)
        yield lab
    finally:
        for item in reversed(stoppable):
            with contextlib.suppress(Exception):
                if isinstance(item, harness.Server) and item.process is not None:
                    item.process.send_signal(signal.SIGCONT)
                item.stop()
        time.sleep(0)
