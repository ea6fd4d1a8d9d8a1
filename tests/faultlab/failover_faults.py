"""Failovers under load: the primary SIGKILLed, a replica promoted (Sentinel or cluster).

Workers deliver every key twice while, part way through, the primary holding
the keys (Sentinel) or one of the cluster's three primaries is SIGKILLed. The
replica is promoted (Sentinel: ``down-after-milliseconds`` 1000; cluster:
``cluster-node-timeout`` 2000), and the same worker processes, with the same
clients, carry on. Calls made meanwhile fail closed; the heal phase plays
their redelivery. The killed server is then started again (a crashed host
coming back): it rejoins as a replica, so the ``wait1`` targets have a replica
to wait for after the failover.

A write the old primary acknowledged but had not sent to the replica is gone
after the promotion. The notes count what the ledger shows of that:

- ``lost_acknowledged_completions``: keys whose outcome was stored and
  acknowledged (the call returned its own result) before the kill, and whose
  body ran again later.
- ``lost_acknowledged_claims``: keys whose body started (claim acknowledged)
  before the kill, not among the above, and whose body ran again before the
  first claim's lease could have ended: the claim was not there any more.
- ``rerun_after_lease``: keys whose body ran again only after the first
  claim's lease ended (its outcome could not be stored during the failover:
  the claim stayed until its lease ended, by design).

These depend on timing: the runner reports them, no test asserts them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import redis_harness as harness
from faultlab.driver import concluded, finish, make_keys, start_load
from faultlab.lab import Lab
from faultlab.ledger import Tally, now_ms, read_events
from faultlab.scenarios import Params, run_id, scenario, wait_for

DELIVERIES = 2
WORK_MS = 3  # per body: the load outlasts the failover (a failed call returns fast)
PROMOTION_TIMEOUT_S = 60.0


def _sentinel(target: str) -> bool:
    return target in ("onceonly/sentinel", "onceonly/sentinel-wait1")


def _cluster(target: str) -> bool:
    return target in ("onceonly/cluster", "onceonly/cluster-wait1")


NO_FAILOVER = (
    "standalone Redis and Powertools' Redis targets: no replica to fail over to "
    "(redis-wait1's replica is promoted by nothing); SQLite, DynamoDB: no failover to provoke"
)


@scenario(
    "sentinel-failover",
    "Primary SIGKILLed under load, Sentinel promotes a replica (1 000 keys x 2 deliveries)",
    applies=_sentinel,
    not_applicable="Sentinel targets only (the cluster's failover: cluster-failover); "
    + NO_FAILOVER,
)
def sentinel_failover(lab: Lab, p: Params) -> Tally:
    sentinels = lab.sentinels
    assert sentinels is not None, "sentinel-failover needs a Sentinel lab"

    def kill() -> tuple[harness.Server, Callable[[], bool]]:
        _, old_port = sentinels.master_address()
        old = sentinels.server_at(old_port)
        old.kill()
        return old, lambda: sentinels.master_address()[1] != old_port

    return _under_load(lab, p, kill)


@scenario(
    "cluster-failover",
    "One cluster primary SIGKILLed under load, its replica takes over (1 000 keys x 2)",
    applies=_cluster,
    not_applicable="cluster targets only (Sentinel's failover: sentinel-failover); " + NO_FAILOVER,
)
def cluster_failover(lab: Lab, p: Params) -> Tally:
    cluster = lab.cluster
    assert cluster is not None, "cluster-failover needs a cluster lab"
    rng = random.Random(p.seed)
    primary = rng.choice(cluster.primaries())
    replica = replica_of(cluster, primary)

    def kill() -> tuple[harness.Server, Callable[[], bool]]:
        primary.kill()
        return primary, lambda: role(replica) == "master"

    return _under_load(lab, p, kill)


def role(server: harness.Server) -> str:
    """``master`` or ``slave``, as the server says."""
    with server.client(socket_timeout=1) as client:
        return str(client.info("replication")["role"])


def replica_of(cluster: harness.Cluster, primary: harness.Server) -> harness.Server:
    """The cluster node that replicates ``primary`` (the one promoted when it dies)."""
    for node in cluster.nodes:
        if node is primary:
            continue
        with node.client(socket_timeout=1) as client:
            info = client.info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == primary.port:
            return node
    raise RuntimeError(f"no replica follows the primary on port {primary.port}")


def _under_load(
    lab: Lab, p: Params, kill: Callable[[], tuple[harness.Server, Callable[[], bool]]]
) -> Tally:
    """Run the load, kill the primary part way (``kill`` returns it and a promoted-yet check).

    Returns:
        The run's figures; the notes add the failover's duration and what it lost.
    """
    rng = random.Random(p.seed)
    folder = lab.folder / "ledger"
    keys = make_keys(run_id(), p.keys)
    total = len(keys) * DELIVERIES
    at = rng.uniform(0.1, 0.25)  # the share of deliveries concluded when the kill lands
    shape = {"deliveries": DELIVERIES, "workers": p.workers, "seed": p.seed, "work_ms": WORK_MS}
    fleet = start_load(lab.target, folder, keys, **shape)
    try:
        wait_for(lambda: concluded(folder) >= at * total, "load before the kill", 120)
        old, promoted = kill()
        # Stamped once the process is gone: a body that started before had its
        # claim acknowledged by the old primary.
        kill_ms = now_ms()
        harness.wait_until(promoted, "a replica to be promoted", PROMOTION_TIMEOUT_S)
        promoted_ms = now_ms()
        old.start()  # the crashed host comes back; it rejoins as a replica
        fleet.wait(300)
    finally:
        fleet.terminate()
    failover_s = (promoted_ms - kill_ms) / 1000
    cap = max(p.heal_cap_s, lab.target.lease_ms / 1000 + failover_s + 10)
    out = finish(lab.target, folder, keys, heal_cap_s=cap)
    out.notes.update(_failover_notes(folder, kill_ms, promoted_ms, lab.target.lease_ms))
    return out


def _failover_notes(folder: Any, kill_ms: int, promoted_ms: int, lease_ms: int) -> dict[str, Any]:
    """The failover's duration, and the acknowledged writes it lost (see the module doc)."""
    events = read_events(folder)
    runs: dict[str, list[int]] = {}  # key -> when each body started
    acked_before_kill: set[str] = set()
    first_claim_after_kill: int | None = None
    late_errors = [0, 0]  # load-phase store errors > 5 s after the promotion; the last one's t
    after_promotion = 0  # load-phase calls concluded after the promotion (the clients' recovery)
    for ev in events:
        if ev["e"] == "run":
            runs.setdefault(ev["k"], []).append(ev["t"])
            if ev["t"] > kill_ms and first_claim_after_kill is None:
                first_claim_after_kill = ev["t"]
        elif ev["e"] == "got" and ev["own"] and ev["t"] < kill_ms:
            # Returned before the kill: its outcome was stored and acknowledged
            # (a call whose complete fails returns its own result too, but only
            # after the failure, so after the kill).
            acked_before_kill.add(ev["k"])
        if ev["e"] in ("got", "err") and ev["ph"] == "load" and ev["t"] > promoted_ms:
            after_promotion += 1
        if ev["e"] == "err" and ev["kind"] == "store" and ev["ph"] == "load":
            if ev["t"] > promoted_ms + 5_000:
                late_errors[0] += 1
            late_errors[1] = max(late_errors[1], ev["t"])
    completions = claims = after_lease = 0
    for key, started in runs.items():
        if len(started) < 2 or started[0] >= kill_ms:
            continue
        if key in acked_before_kill:
            completions += 1
        elif started[1] < started[0] + lease_ms:
            claims += 1
        else:
            after_lease += 1
    outage = None if first_claim_after_kill is None else (first_claim_after_kill - kill_ms) / 1000
    last_error = late_errors[1]
    # Durations are lists, one entry per run: the matrix joins lists and adds numbers.
    return {
        # kill -> the failover's watcher names the new primary
        "promotion_s": [round((promoted_ms - kill_ms) / 1000, 2)],
        # kill -> the first claim granted after it (the workers' clients are back)
        "outage_s": [None if outage is None else round(outage, 2)],
        "last_load_error_after_kill_s": [
            round((last_error - kill_ms) / 1000, 2) if last_error > kill_ms else None
        ],
        "load_calls_after_promotion": after_promotion,
        "load_errors_5s_after_promotion": late_errors[0],
        "lost_acknowledged_completions": completions,
        "lost_acknowledged_claims": claims,
        "rerun_after_lease": after_lease,
    }
