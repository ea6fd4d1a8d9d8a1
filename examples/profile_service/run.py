"""Drive the profile service under crashes and compare its state with exactly-once.

    python examples/profile_service/run.py                      # starts a 3-primary cluster
    python examples/profile_service/run.py --cluster 127.0.0.1:7000 --events 600 --kills 6

Twice, on the same cluster: the onceonly service (API with the Idempotency-Key
middleware and ``publish``; consumers with ``StreamConsumer`` and ``Effects``),
then the plain one (bare ``XADD``; consumers that write, then ``XACK``). Each
run sends ``--events`` events to the API (1 in 5 sent a second time with the
same ``Idempotency-Key``: a client retry), starts the consumers halfway (the
first half waits as a backlog), SIGKILLs a random consumer process ``--kills``
times while it holds entries (mid-batch) and starts a new one: the onceonly
consumer under a new name (its predecessor's entries are reclaimed once idle
``--min-idle-ms``), the plain one under the same name (it has no reclaim: only
its own name gets its pending entries again). Then it waits until every entry
is acknowledged and compares every user's hash and the merged leaderboard,
key by key, with what applying each event once gives. Prints a table; exits
non-zero if the onceonly run differs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service
from api import build_app
from cluster import local_cluster

HERE = Path(__file__).resolve().parent
MODES = ("onceonly", "plain")


def make_events(n: int, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` events as (idempotency key, path, body): profile updates and scores of 200 users."""
    rng = random.Random(seed)
    seen: set[int] = set()
    events = []
    for _ in range(n):
        user = rng.randrange(200)
        key = str(uuid.UUID(int=rng.getrandbits(128)))
        if user not in seen or rng.random() < 0.2:
            body = {
                "user": user,
                "name": f"user-{user}-{rng.randrange(1000)}",
                "new": user not in seen,
            }
            seen.add(user)
            events.append((key, "/profile", body))
        else:
            events.append((key, "/score", {"user": user, "points": rng.randrange(1, 50)}))
    return events


def with_retries(events: list[Any], seed: int) -> list[Any]:
    """The sending order: every event, and 1 in 5 again a little later (the same key)."""
    rng = random.Random(seed + 1)
    order = list(events)
    for event in events:
        if rng.random() < 0.2:
            at = min(len(order), order.index(event) + rng.randrange(1, 20))
            order.insert(at, event)
    return order


def admin_setup(admin: Any, mode: str, passwords: dict[str, str]) -> None:
    """Delete the previous run's keys; (re)make the ACL users on every node."""
    for i in range(service.PARTITIONS):
        for key in admin.scan_iter(match=f"{{p{i}}}:*", count=1000):
            admin.delete(key)
    rules = [service.producer_rule(passwords["producer"])]
    make = service.consumer_rule if mode == "onceonly" else service.plain_consumer_rule
    rules += [make(f"p{i}", passwords[f"p{i}"]) for i in range(service.PARTITIONS)]
    for rule in rules:
        admin.execute_command("ACL", "SETUSER", *rule.split(), target_nodes=admin.ALL_NODES)


class Consumers:
    """One consumer process per partition, killed and started again.

    A onceonly consumer comes back under a new name (``c-p0``, ``c-p0.2``, ...:
    as a rescheduled container would), once its predecessor's pending entries
    have been idle ``min_idle_ms``: its first pass then reclaims them, before
    it reads anything new, so each partition's entries are still applied in
    stream order (a profile's name is last-writer-wins). A plain one comes
    back at once under the same name (it drains its own pending entries
    first: without reclaim, nothing else gets them). ``stats`` is where
    onceonly consumers write their counts.
    """

    def __init__(
        self,
        admin: Any,
        args: list[str],
        passwords: dict[str, str],
        emails: Path | None,
        stats: Path | None = None,
        min_idle_ms: int = 1000,
    ) -> None:
        self.admin, self.args, self.passwords, self.emails = admin, args, passwords, emails
        self.stats, self.min_idle_ms = stats, min_idle_ms
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.names: dict[str, str] = {}
        self.starts: dict[str, int] = {}
        self.kills = self.busy_kills = 0

    def start_all(self) -> None:
        """Start one consumer process per partition."""
        for i in range(service.PARTITIONS):
            self.start(f"p{i}")

    def start(self, part: str) -> None:
        """Start (or restart) the partition's consumer process, named after the partition."""
        self.starts[part] = self.starts.get(part, 0) + 1
        name = f"c-{part}"
        if self.stats is not None and self.starts[part] > 1:  # onceonly: a new name
            name += f".{self.starts[part]}"
        self.names[part] = name
        extra = ["--password", self.passwords[part], "--partition", part, "--name", name]
        if self.emails is not None:
            extra += ["--emails", str(self.emails)]
        if self.stats is not None:
            extra += ["--stats", str(self.stats / f"{name}.json")]
        self.processes[part] = subprocess.Popen(
            [sys.executable, str(HERE / "consumer.py"), *self.args, *extra]
        )

    def _pending(self, part: str) -> int:
        """Entries the partition's current consumer has read and not acknowledged."""
        with contextlib.suppress(redis.RedisError):
            rows = self.admin.xpending_range(
                service.stream(part), service.GROUP, "-", "+", 1, consumername=self.names[part]
            )
            return len(rows)
        return 0

    def _wait_idle(self, part: str) -> None:
        """Wait until the current consumer's pending entries are idle ``min_idle_ms``."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                rows = self.admin.xpending_range(
                    service.stream(part), service.GROUP, "-", "+", 1000,
                    consumername=self.names[part],
                )  # fmt: skip
            except redis.ResponseError:  # NOGROUP: killed before it made the group
                return
            if all(row["time_since_delivered"] >= self.min_idle_ms for row in rows):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.names[part]}'s entries were not idle {self.min_idle_ms} ms")

    def reclaimed(self) -> int:
        """Entries taken over from other consumers, summed over every onceonly consumer's stats."""
        if self.stats is None:
            return 0
        return sum(json.loads(f.read_text())["reclaimed"] for f in self.stats.glob("*.json"))

    def kill_randomly(self, kills: int, seed: int) -> None:
        """``kills`` times: SIGKILL a random consumer while it works, and start another.

        The killer waits (up to 2 s) until the consumer holds entries it has
        read and not acknowledged, then 0 to 20 ms more: the kill lands in
        the middle of a batch (its handler, its writes, its commit).
        """
        rng = random.Random(seed)
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.2))
            part = rng.choice(sorted(self.processes))
            deadline = time.monotonic() + 2
            while not self._pending(part) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
            process = self.processes[part]
            process.send_signal(signal.SIGKILL)  # no shutdown of any kind
            process.wait()
            self.kills += 1
            self.busy_kills += self._pending(part) > 0  # it died with entries in hand
            if self.stats is not None:  # onceonly: its successor reclaims them first
                self._wait_idle(part)
            self.start(part)

    def stop(self) -> None:
        """Stop them all (the run is over): SIGTERM, so that each writes its last counts."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def drained(admin: Any) -> bool:
    """Every partition's entries delivered and acknowledged."""
    for i in range(service.PARTITIONS):
        name = service.stream(f"p{i}")
        if not admin.exists(name):
            continue
        last = admin.xinfo_stream(name)["last-generated-id"]
        groups = admin.xinfo_groups(name)
        if not groups or groups[0]["pending"] or groups[0]["last-delivered-id"] != last:
            return False
    return True


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the WSGI app on a free loopback port in a thread; yield its base URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def compare(
    admin: Any, expected: tuple[dict[str, dict[str, str]], dict[str, float]]
) -> dict[str, Any]:
    """Every user's hash and the merged leaderboard beside the exactly-once state."""
    users, board = expected
    wrong_users = 0
    for key, record in users.items():
        got = {k.decode(): v.decode() for k, v in admin.hgetall(key).items()}
        wrong_users += got != record
    got_board: dict[str, float] = {}
    for i in range(service.PARTITIONS):
        for member, score in admin.zrange(service.leaderboard(f"p{i}"), 0, -1, withscores=True):
            got_board[member.decode()] = score
    members = set(board) | set(got_board)
    wrong_members = sum(board.get(m) != got_board.get(m) for m in members)
    extra = sum(got_board.values()) - sum(board.values())
    return {"users": len(users), "wrong_users": wrong_users, "members": len(board),
            "wrong_members": wrong_members, "extra_points": extra}  # fmt: skip


def run_mode(
    mode: str,
    address: str,
    n: int,
    kills: int,
    seed: int,
    folder: Path,
    work_ms: float,
    min_idle_ms: int = 1000,
) -> dict[str, Any]:
    """One run of the service in ``mode``; the comparison's counts."""
    host, port = address.rsplit(":", 1)
    admin = redis.RedisCluster(host=host, port=int(port))
    passwords = {name: secrets.token_hex(8) for name in ("producer", "p0", "p1", "p2")}
    admin_setup(admin, mode, passwords)
    producer = redis.RedisCluster(
        host=host, port=int(port), username="producer", password=passwords["producer"]
    )
    store = None
    emails = stats = None
    options = ["--cluster", address, "--mode", mode, "--work-ms", str(work_ms)]
    if mode == "onceonly":
        from onceonly.stores import SQLiteStore

        store = SQLiteStore(folder / f"http-{mode}.db")
        emails = folder / "emails.txt"
        stats = folder / "stats"
        stats.mkdir()
        options += ["--min-idle-ms", str(min_idle_ms)]
    events = make_events(n, seed)
    sends = with_retries(events, seed)
    consumers = Consumers(admin, options, passwords, emails, stats, min_idle_ms)
    killer = threading.Thread(target=consumers.kill_randomly, args=(kills, seed + 2))
    try:
        with serving(build_app(producer, store)) as url, httpx.Client(base_url=url) as http:
            for i, (key, path, body) in enumerate(sends):
                reply = http.post(path, json=body, headers={"Idempotency-Key": key})
                reply.raise_for_status()
                if i == len(sends) // 2:
                    # Half the events wait as a backlog: the consumers start now,
                    # and are killed at random moments while they work through it.
                    consumers.start_all()
                    killer.start()
        killer.join()
        deadline = time.monotonic() + 120
        while not drained(admin):
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: the consumers did not finish within 120 s")
            time.sleep(0.2)
    finally:
        consumers.stop()
    expected = service.expected_state(
        {
            "type": p[1:],
            "user": str(b["user"]),
            "name": str(b.get("name")),
            "points": str(b.get("points")),
        }
        for _, p, b in events
    )
    out = compare(admin, expected)
    out.update(mode=mode, events=n, sent=len(sends), kills=consumers.kills)
    out["busy_kills"] = consumers.busy_kills
    out["reclaimed"] = consumers.reclaimed() if mode == "onceonly" else None
    # What retried requests alone add (each sent request applied once); the rest of
    # the extra points come from entries applied again after a kill.
    retried = sum(int(b["points"]) for _, p, b in sends if p == "/score")
    out["extra_from_retries"] = retried - sum(expected[1].values())
    out["new_users"] = sum(1 for _, p, b in events if p == "/profile" and b["new"])
    out["emails"] = len(emails.read_text().splitlines()) if emails and emails.exists() else None
    out["top3"] = service.top(admin, 3)
    admin.close()
    producer.close()
    return out


def main() -> None:
    """Run both modes and print the table; exit 1 if onceonly's state is not exactly-once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", help="host:port of a running cluster (default: start one)")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--work-ms", type=float, default=1.0, help="handler work per entry")
    parser.add_argument(
        "--min-idle-ms",
        type=int,
        default=1000,
        help="the onceonly consumers' min_idle_ms: a killed one's entries are reclaimed then",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        address = args.cluster or stack.enter_context(local_cluster())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results = [
            run_mode(
                m, address, args.events, args.kills, args.seed, folder, args.work_ms,
                args.min_idle_ms,
            )
            for m in MODES
        ]  # fmt: skip
    print(f"{'':9} {'sent':>6} {'kills (at work)':>15} {'users wrong':>12} {'board wrong':>12} "
          f"{'extra points':>12} {'e-mails':>8}")  # fmt: skip
    for r in results:
        emails = "-" if r["emails"] is None else f"{r['emails']}/{r['new_users']}"
        users = f"{r['wrong_users']}/{r['users']}"
        kills = f"{r['kills']} ({r['busy_kills']})"
        board = f"{r['wrong_members']}/{r['members']}"
        print(
            f"{r['mode']:9} {r['sent']:6} {kills:>15} {users:>12} {board:>12} "
            f"{r['extra_points']:12.0f} {emails:>8}"
        )
    plain = results[1]
    crashes = plain["extra_points"] - plain["extra_from_retries"]
    print(
        f"\nonceonly: {results[0]['reclaimed']} entries reclaimed from killed consumers by "
        f"their successors under new names (min_idle_ms {args.min_idle_ms}; the consumers' "
        "stats.reclaimed, summed)"
    )
    print(
        f"plain: {plain['extra_from_retries']:.0f} extra points from retried requests, "
        f"{crashes:.0f} from entries applied again after a kill"
    )
    print(f"{args.events} events, 1 in 5 sent twice; top 3 (merged per-partition leaderboards):")
    for r in results:
        print(f"  {r['mode']:9} {r['top3']}")
    if args.json:
        args.json.write_text(json.dumps(results))
    good = results[0]
    if good["wrong_users"] or good["wrong_members"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
