"""The profile service's shared parts: partitions, keys, events, ACL rules, the handlers.

Keys are partitioned by a hash tag, so that one consumer's keys (its stream,
the users' hashes, the leaderboard, onceonly's dedup records) are in one
Redis Cluster slot::

    {p0}:profile-events   the partition's stream (one per partition)
    {p0}:user:42          user 42's hash: name, updates, score
    {p0}:leaderboard      the partition's leaderboard (member: user id, score: points)

A user lives in one partition (``user % PARTITIONS``), so a global top N is
the merge of each partition's top N (:func:`top`): read at most N from each,
sort the union, keep N.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from onceonly import IdempotencyConfig, idempotent_function
from onceonly.streams import Effects, StreamEntry
from onceonly.streams.config import CONSUMER_ACL_COMMANDS, PUBLISH_ACL_COMMANDS

PARTITIONS = 3
GROUP = "profiles"
EFFECT_COMMANDS = ("HSET", "HINCRBY", "ZINCRBY")
# A RedisCluster client asks for the slot map and the command table when it starts.
CLUSTER_CLIENT_COMMANDS = ("CLUSTER|SLOTS", "CLUSTER|SHARDS", "COMMAND", "PING")


def partition(user: int) -> str:
    """The hash tag of a user's partition: ``p0`` .. ``p{PARTITIONS-1}``."""
    return f"p{user % PARTITIONS}"


def stream(part: str) -> str:
    """The partition's stream."""
    return f"{{{part}}}:profile-events"


def user_key(user: int) -> str:
    """The user's hash, in the user's partition."""
    return f"{{{partition(user)}}}:user:{user}"


def leaderboard(part: str) -> str:
    """The partition's leaderboard sorted set."""
    return f"{{{part}}}:leaderboard"


def acl_rule(name: str, password: str, patterns: Iterable[str], commands: Iterable[str]) -> str:
    """An ``ACL SETUSER`` argument list (as one string) allowing only these keys and commands."""
    keys = " ".join(f"~{p}" for p in patterns)
    allowed = " ".join("+" + c.lower() for c in (*commands, *CLUSTER_CLIENT_COMMANDS))
    return f"{name} reset on >{password} {keys} resetchannels -@all {allowed}"


def consumer_rule(part: str, password: str) -> str:
    """The consumer of one partition: its tag's keys, the consumer's and its effects' commands."""
    commands = (*CONSUMER_ACL_COMMANDS, *EFFECT_COMMANDS)
    return acl_rule(f"consumer-{part}", password, [f"{{{part}}}:*"], commands)


def plain_consumer_rule(part: str, password: str) -> str:
    """The plain consumer of one partition: read, write, acknowledge."""
    commands = ("XGROUP|CREATE", "XREADGROUP", "XACK", *EFFECT_COMMANDS)
    return acl_rule(f"consumer-{part}", password, [f"{{{part}}}:*"], commands)


def producer_rule(password: str) -> str:
    """The API's user: only the streams and publish's event-id records."""
    patterns = [f"{{p{i}}}:profile-events*" for i in range(PARTITIONS)]
    return acl_rule("producer", password, patterns, (*PUBLISH_ACL_COMMANDS, "XADD"))


def apply_event(fields: dict[str, str], effects: Any) -> None:
    """Add one event's writes to ``effects`` (an :class:`Effects` or a redis-py pipeline).

    A profile event sets the name and counts the update; a score event adds
    its points to the user's hash and to the partition's leaderboard.
    """
    user = int(fields["user"])
    key = user_key(user)
    if fields["type"] == "profile":
        effects.hset(key, mapping={"name": fields["name"]})
        effects.hincrby(key, "updates", 1)
    else:
        points = int(fields["points"])
        effects.hincrby(key, "score", points)
        effects.zincrby(leaderboard(partition(user)), points, str(user))


def onceonly_handler(emails: Path | None, store: Any | None, work_ms: float = 0.0) -> Any:
    """The consumer's handler: the event's Redis writes as :class:`Effects`.

    With ``emails`` and ``store``, a user's first profile event (``"new":
    "1"``) also sends a welcome e-mail (a line appended to ``emails``): an
    effect outside Redis, so it is made once per event id by an
    ``idempotent_function`` keyed by the event id. If the consumer dies after
    the e-mail and before the commit, the entry comes again and the e-mail
    is not sent again (the function's recorded outcome is returned).
    ``work_ms`` stands for the handler's own work per entry (a sleep).
    """
    send_welcome = None
    if emails is not None and store is not None:

        @idempotent_function(
            store=store,
            data="event_id",
            config=IdempotencyConfig(
                key_prefix="welcome",
                lease_seconds=2,
                on_in_progress="wait",
                wait_timeout_seconds=10,
            ),
        )
        def send_welcome(event_id: str, user: str) -> str:
            with emails.open("a") as out:
                out.write(f"welcome user {user} (event {event_id})\n")
            return "sent"

    def handle(entry: StreamEntry) -> Effects:
        fields = entry.fields
        time.sleep(work_ms / 1000)
        if send_welcome is not None and fields.get("new") == "1":
            send_welcome(event_id=entry.event_id, user=fields["user"])
        effects = Effects()
        apply_event(fields, effects)
        return effects

    return handle


def expected_state(
    events: Iterable[dict[str, str]],
) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """What applying each event once, in order, gives: users' hashes and the merged leaderboard."""
    users: dict[str, dict[str, str]] = {}
    board: dict[str, float] = {}
    for fields in events:
        user = int(fields["user"])
        record = users.setdefault(user_key(user), {})
        if fields["type"] == "profile":
            record["name"] = fields["name"]
            record["updates"] = str(int(record.get("updates", "0")) + 1)
        else:
            points = int(fields["points"])
            record["score"] = str(int(record.get("score", "0")) + points)
            board[str(user)] = board.get(str(user), 0.0) + points
    return users, board


def top(client: Any, n: int) -> list[tuple[str, float]]:
    """The global top ``n``: each partition's top ``n`` (a user is in one), merged at read time."""
    rows: list[tuple[str, float]] = []
    for i in range(PARTITIONS):
        for member, score in client.zrevrange(leaderboard(f"p{i}"), 0, n - 1, withscores=True):
            rows.append((member.decode() if isinstance(member, bytes) else member, score))
    return heapq.nlargest(n, rows, key=lambda row: (row[1], row[0]))
