"""Lost replies: the store acted on a write, and its answer never reached the library.

A proxy runs in the driver, in front of the lab's store, and the workers
connect through it: RESP-aware before a standalone Redis server
(``tests/faults/proxy.py``), HTTP before moto's DynamoDB server
(:mod:`faultlab.http_drop_proxy`). For a seeded choice of keys it forwards
one write of a key (its claim, its completion, or the release after a failed
body), waits for the server's reply, and closes the client's connection
instead of relaying it: the write is done, its answer lost. Each worker
delivers its keys twice, one after the other, so the second delivery shows
what the first left behind (a replay, a run, or an "in progress" that keeps
the key stuck until the lease ends); the heal and check phases go to the
server directly.

Which command is a key's claim, completion or release:

===========  ====================================  ===============================
step         onceonly                              Powertools
===========  ====================================  ===============================
claim        ``SET ... NX PX ... GET`` (the        ``SET key {INPROGRESS...} EX NX``
             native claim) or the claim script
complete     the complete script (EVALSHA / EVAL)  ``SET key {COMPLETED...} EX``
release      the release script                    ``DEL key``
===========  ====================================  ===============================

On DynamoDB both libraries claim with ``PutItem``, complete with
``UpdateItem`` and release with ``DeleteItem`` (onceonly renews with
``UpdateItem`` too, only with its heartbeat on, which these runs leave off).

Only the first such command of a key counts (a retry of a dropped one is never
dropped again); the replies lost are those of the n-th first commands, n drawn
from the seed.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultlab.driver import Delivery, Fleet, finish, make_keys
from faultlab.http_drop_proxy import HttpDropProxy
from faultlab.lab import TARGETS, Lab
from faultlab.ledger import Tally
from faultlab.scenarios import Params, run_id, scenario
from faultlab.targets import ONCEONLY, POWERTOOLS

# The proxy is a tool of tests/faults; the driver imports it from there.
_FAULTS = str(Path(__file__).resolve().parent.parent / "faults")
if _FAULTS not in sys.path:
    sys.path.append(_FAULTS)

from proxy import ReplyDropProxy  # noqa: E402

CLAIM, COMPLETE, RELEASE = "claim", "complete", "release"

# The commands any step above is sent as.
_COMMANDS = {"SET", "EVALSHA", "EVAL", "DEL"}

# A store one proxy can front: a standalone Redis server (a replica behind it
# is fine) or moto's DynamoDB server.
_FRONTED = {"redis-aof-everysec", "redis-aof-always", "redis-wait1", "dynamodb"}

NOT_APPLICABLE = (
    "the proxy fronts one server: SQLite has no network between library and store; "
    "Sentinel and cluster clients find their servers themselves"
)


def applies(target: str) -> bool:
    """Whether the reply-loss scenarios run on ``target`` (see :data:`NOT_APPLICABLE`)."""
    return target in TARGETS and target.split("/", 1)[1] in _FRONTED


def drops_for(keys: int) -> int:
    """How many replies a run loses: one key in ten, at most 20, at least one."""
    return max(1, min(20, keys // 10))


# -- which command is which step ----------------------------------------------------------

# A step's matcher: the store key a command (Redis: its words; DynamoDB: its
# operation and JSON body) writes, or None when it is not the step.
Matcher = Callable[[Any], bytes | None]


def _script(step: str) -> tuple[bytes, bytes]:
    from onceonly.stores.redis import scripts

    chosen = {CLAIM: scripts.CLAIM, COMPLETE: scripts.COMPLETE, RELEASE: scripts.RELEASE}[step]
    return chosen.sha.encode(), chosen.code


def _onceonly_matcher(step: str) -> Matcher:
    sha, code = _script(step)

    def match(words: list[bytes]) -> bytes | None:
        name = words[0].upper()
        if name in (b"EVALSHA", b"EVAL") and len(words) > 3:
            body = words[1]
            if (name == b"EVALSHA" and body.lower() == sha) or (name == b"EVAL" and body == code):
                return words[3]
            return None
        if step == CLAIM and name == b"SET" and {b"NX", b"GET"} <= {w.upper() for w in words[3:]}:
            return words[1]
        return None

    return match


def _powertools_matcher(step: str) -> Matcher:
    def match(words: list[bytes]) -> bytes | None:
        name = words[0].upper()
        if step == RELEASE:
            return words[1] if name == b"DEL" and len(words) == 2 else None
        if name != b"SET" or len(words) < 3 or words[1].endswith(b":lock"):
            return None
        nx = b"NX" in (w.upper() for w in words[3:])
        if step == CLAIM and nx and b'"INPROGRESS"' in words[2]:
            return words[1]
        if step == COMPLETE and not nx and b'"COMPLETED"' in words[2]:
            return words[1]
        return None

    return match


_DYNAMODB_OPERATIONS = {CLAIM: "PutItem", COMPLETE: "UpdateItem", RELEASE: "DeleteItem"}


def dynamodb_matcher(step: str) -> Matcher:
    """The matcher of ``step`` for either library's DynamoDB requests: ``(operation, body)``."""
    wanted = _DYNAMODB_OPERATIONS[step]

    def match(request: tuple[str, bytes]) -> bytes | None:
        operation, body = request
        if operation != wanted:
            return None
        sent = json.loads(body)
        item = sent.get("Key") or sent.get("Item") or {}
        return json.dumps(item.get("id"), sort_keys=True).encode()

    return match


def matcher(library: str, step: str) -> Matcher:
    """The matcher of ``step`` (claim, complete, release) for ``library``'s Redis commands."""
    if library == ONCEONLY:
        return _onceonly_matcher(step)
    if library == POWERTOOLS:
        return _powertools_matcher(step)
    raise ValueError(f"unknown library {library!r}")


@dataclass
class DropPlan:
    """Decides, command by command, whose reply the proxy loses (it keeps state).

    Attributes:
        match: The step's matcher.
        ordinals: Which keys' first step command loses its reply (0: the
            first key the proxy sees take the step, 1: the second...).
        seen: Store keys whose first step command went by.
        dropped_keys: Store keys whose reply was lost.
    """

    match: Matcher
    ordinals: frozenset[int]
    seen: set[bytes] = field(default_factory=set)
    dropped_keys: set[bytes] = field(default_factory=set)

    def __call__(self, command: Any) -> bool:
        key = self.match(command)
        if key is None or key in self.seen:
            return False
        ordinal = len(self.seen)
        self.seen.add(key)
        if ordinal in self.ordinals:
            self.dropped_keys.add(key)
            return True
        return False


def plan(match: Matcher, *, keys: int, drops: int, seed: int) -> DropPlan:
    """A seeded plan that loses ``drops`` replies of ``match``'s step among ``keys`` keys."""
    rng = random.Random(seed)
    return DropPlan(match, frozenset(rng.sample(range(keys), min(drops, keys))))


# -- the run ------------------------------------------------------------------------------


def shards_for(
    keys: list[str], *, workers: int, seed: int, first: dict[str, Any]
) -> list[list[Delivery]]:
    """Each key delivered twice in a row by one worker (``first``: the first delivery's payload).

    The second delivery comes once the first has concluded, as a queue's
    redelivery of a failed or unacknowledged message would.
    """
    rng = random.Random(seed)
    order = list(keys)
    rng.shuffle(order)
    shards: list[list[Delivery]] = [[] for _ in range(workers)]
    for n, key in enumerate(order):
        shard = shards[n % workers]
        shard.append((key, 2 * n, dict(first)))
        shard.append((key, 2 * n + 1, {}))
    return shards


def lose_replies(lab: Lab, p: Params, step: str, *, keys: int | None = None) -> Tally:
    """Run ``p.keys`` keys through a proxy, losing the replies of ``step`` for some of them.

    Args:
        lab: A lab on a standalone Redis server or moto's server.
        p: The run's size and seed.
        step: ``claim``, ``complete`` or ``release`` (the body fails on each
            key's first delivery, so that its claim is released).
        keys: Overrides ``p.keys``.

    Returns:
        The run's figures; ``notes`` holds the replies planned and lost.
    """
    count = p.keys if keys is None else keys
    drops = drops_for(count)
    folder = lab.folder / "ledger"
    names = make_keys(run_id(), count)
    first = {"fail": True} if step == RELEASE else {}
    shards = shards_for(names, workers=p.workers, seed=p.seed, first=first)
    proxy: ReplyDropProxy | HttpDropProxy
    if lab.moto is not None:
        drop_plan = plan(dynamodb_matcher(step), keys=count, drops=drops, seed=p.seed)
        proxy = HttpDropProxy(lab.moto.url)
        proxy.drop_responses(drops, when=lambda operation, body: drop_plan((operation, body)))
    elif lab.server is not None and lab.target.store == "redis":
        drop_plan = plan(matcher(lab.target.library, step), keys=count, drops=drops, seed=p.seed)
        proxy = ReplyDropProxy(lab.server.port)
        proxy.drop_replies(drops, commands=_COMMANDS, when=drop_plan)
    else:
        raise RuntimeError(f"{lab.target.name} has no one server to put a proxy before")
    with proxy:
        fleet = Fleet(lab.target.with_(address=proxy.url()), folder, shards).start()
        try:
            fleet.wait(120)
        finally:
            fleet.terminate()
        dropped = proxy.dropped
    out = finish(lab.target, folder, names, heal_cap_s=p.heal_cap_s)
    out.notes["replies_planned"] = drops
    out.notes["replies_lost"] = dropped
    return out


@scenario(
    "claim-reply-lost",
    "The claim's reply lost after the server took the key",
    applies=applies,
    not_applicable=NOT_APPLICABLE,
)
def claim_reply_lost(lab: Lab, p: Params) -> Tally:
    return lose_replies(lab, p, CLAIM)


@scenario(
    "complete-reply-lost",
    "The completion's reply lost after the server stored the outcome",
    applies=applies,
    not_applicable=NOT_APPLICABLE,
)
def complete_reply_lost(lab: Lab, p: Params) -> Tally:
    return lose_replies(lab, p, COMPLETE)


@scenario(
    "release-reply-lost",
    "The release's reply (after a failed body) lost after the server dropped the claim",
    applies=applies,
    not_applicable=NOT_APPLICABLE,
)
def release_reply_lost(lab: Lab, p: Params) -> Tally:
    return lose_replies(lab, p, RELEASE)
