"""``onceonly doctor --stream S --group G``: a stream consumer group as the server sees it.

:func:`collect_stream` asks the stream's node (a cluster client routes each
command by its key) ``XLEN``, ``XINFO GROUPS``, ``XPENDING`` (the summary,
and the oldest :data:`OLDEST` pending entries) and the dead-letter stream's
``XLEN``, and writes the replies down; a refused or failed command is noted,
not raised. :func:`judge_stream` turns the replies into report lines without
I/O. The group's numbers come from ``core.group_info``, the parser behind
``consumer.status()``.

The ACL user needs ``+xlen +xinfo|groups +xpending`` (:data:`STREAM_ACL_COMMANDS`)
and read access to the stream's keys (``%R~{tag}:*`` or ``~{tag}:*``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import IdempotencyStoreError
from .streams.config import ConsumerConfig
from .streams.core import group_info

__all__ = [
    "OLDEST",
    "STALE_FACTOR",
    "STREAM_ACL_COMMANDS",
    "StreamAnswers",
    "collect_stream",
    "judge_stream",
    "stream_target",
]

#: The commands ``doctor --stream`` sends (besides the doctor's own).
STREAM_ACL_COMMANDS = ("XLEN", "XINFO|GROUPS", "XPENDING")
#: How many pending entries (the lowest ids) are looked at for the longest idle time.
OLDEST = 100
#: A pending entry idle this many times ``min_idle_ms`` is one no consumer reclaims:
#: a live consumer scans every ``min_idle_ms`` for entries idle that long, so it
#: takes one within about twice that (plus a pass).
STALE_FACTOR = 3

# (name, status, reason): a doctor Check's fields (doctor imports this module, not the reverse).
Line = tuple[str, Literal["ok", "warning", "unknown", "error"], str]


@dataclass
class StreamAnswers:
    """What the stream's node answered; ``refused`` maps a command to why it failed."""

    stream: str
    group: str
    dead_letters: str
    min_idle_ms: int
    node: str = ""  # the server that answered (a cluster's: the stream's slot owner)
    routed: bool = False  # a cluster client chose the node by the stream's key
    length: int | None = None
    groups: object = None  # the XINFO GROUPS reply
    summary: Mapping[str, Any] | None = None  # XPENDING stream group
    oldest: list[Mapping[str, Any]] | None = None  # XPENDING stream group - + OLDEST
    dead_length: int | None = None
    refused: dict[str, str] = field(default_factory=dict)


def stream_target(
    stream: str | None, group: str | None, dead_letters: str | None, min_idle_ms: int | None
) -> StreamAnswers | None:
    """Check the command line's stream options; None when no stream is asked about.

    Args:
        stream, group: ``--stream`` and ``--group``: both or neither.
        dead_letters: ``--dead-letters``; default the consumer's own rule
            (``<stream base>:<group>:dead``, as ``ConsumerConfig`` names it).
        min_idle_ms: ``--min-idle-ms``; default the consumer's default.

    Raises:
        IdempotencyConfigError: One of ``--stream`` / ``--group`` without the
            other, stream options without them, or a name the consumer refuses.
    """
    from .errors import IdempotencyConfigError

    if stream is None and group is None:
        if dead_letters is not None or min_idle_ms is not None:
            raise IdempotencyConfigError(
                "--dead-letters and --min-idle-ms need --stream STREAM --group GROUP"
            )
        return None
    if stream is None or group is None:
        given, missing = ("--stream", "--group") if group is None else ("--group", "--stream")
        raise IdempotencyConfigError(f"{given} needs {missing}: give both, or neither")
    # The consumer's own checks and naming rule; same_slot off: the doctor reports,
    # a dead-letter stream in another slot is the consumer's to refuse.
    config = ConsumerConfig(
        stream=stream,
        group=group,
        consumer="doctor",
        dead_letter_stream=dead_letters,
        same_slot=False,
        min_idle_ms=ConsumerConfig.min_idle_ms if min_idle_ms is None else min_idle_ms,
    )
    assert config.min_idle_ms is not None  # the default is a number, and None is not given
    return StreamAnswers(stream, group, config.dead_letters, config.min_idle_ms)


# -- the I/O half ---------------------------------------------------------------------


def collect_stream(target: StreamAnswers, client: Any, address: str, refusal: Any) -> None:
    """Ask the stream's node about ``target``; a refused or failed command is noted.

    Args:
        target: Filled in place.
        client: The doctor's redis-py client (standalone, Sentinel master or cluster).
        address: Where a non-cluster client is connected.
        refusal: The exception classes to note rather than raise (redis-py's errors).
    """
    stream, group = target.stream, target.group
    target.node = address
    if hasattr(client, "get_node_from_key"):  # a cluster: the node that holds the stream
        target.node, target.routed = client.get_node_from_key(stream).name, True

    def ask(command: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except refusal as exc:
            target.refused[command] = " ".join(str(exc).split())
        return None

    target.length = ask("XLEN", lambda: int(client.xlen(stream)))
    target.groups = ask("XINFO GROUPS", lambda: client.xinfo_groups(stream))
    if isinstance(target.groups, list):  # else the stream is not there, or XINFO is refused
        target.summary = ask("XPENDING", lambda: client.xpending(stream, group))
        if target.summary is not None:
            rows = ask("XPENDING", lambda: client.xpending_range(stream, group, "-", "+", OLDEST))
            target.oldest = None if rows is None else list(rows)
    target.dead_length = ask("XLEN dead", lambda: int(client.xlen(target.dead_letters)))


# -- the pure checks ---------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _refused(target: StreamAnswers, command: str) -> str:
    return f"{command.removesuffix(' dead')} failed: {target.refused[command]}"


def _version_major(node: Any) -> int | None:
    """The server's major version as Redis numbers it (Valkey 7.2+ reports 7.2 here)."""
    if node is None:
        return None
    value = (node.info or {}).get("redis_version") or (node.hello or {}).get("version")
    found = re.match(r"(\d+)\.", str(value or ""))
    return None if found is None else int(found[1])


def _group_line(target: StreamAnswers) -> tuple[Line, tuple[int, int | None, int, str] | None]:
    """The ``group`` line, and the group's numbers when it exists."""
    stream, group = target.stream, target.group
    create = (
        f"a StreamConsumer creates it (with the stream) on its first pass, or run "
        f"XGROUP CREATE {stream} {group} 0 MKSTREAM"
    )
    if "XINFO GROUPS" in target.refused:
        why = target.refused["XINFO GROUPS"]
        if "no such key" in why.lower():
            return ("group", "warning", f"no group {group!r} (no stream): {create}"), None
        return ("group", "unknown", _refused(target, "XINFO GROUPS")), None
    try:
        found = group_info(target.groups, group)
    except IdempotencyStoreError as exc:
        if "no consumer group" not in str(exc):
            return ("group", "error", str(exc)), None
        return ("group", "warning", f"stream {stream} has no group {group!r}: {create}"), None
    _, _, consumers, last = found
    plural = "s" * (consumers != 1)
    return ("group", "ok", f"{group}: {consumers} consumer{plural}, last delivered {last}"), found


def _lag_line(lag: int | None, major: int | None) -> Line:
    if lag is not None:
        return ("lag", "ok", f"{_entries(lag)} not yet delivered to the group")
    if major is not None and major < 7:
        return ("lag", "warning", "unknown: the server reports lag from Redis / Valkey 7 on")
    return (
        "lag",
        "warning",
        "unknown: entries were deleted (XDEL) or trimmed (XTRIM) after the group's last "
        "delivered id, so the server cannot count the unread ones; it knows again once the "
        "group has read past them",
    )


def _pending_line(target: StreamAnswers, pending: int) -> Line:
    if "XPENDING" in target.refused:
        return ("pending", "unknown", f"{_entries(pending)}; {_refused(target, 'XPENDING')}")
    if pending == 0 or target.summary is None:
        return ("pending", "ok", "none")
    holders = sorted(
        ((_text(c["name"]), int(c["pending"])) for c in target.summary.get("consumers") or []),
        key=lambda item: (-item[1], item[0]),
    )
    shown = ", ".join(f"{name} {count}" for name, count in holders[:5])
    more = f", {len(holders) - 5} more" if len(holders) > 5 else ""
    plural = "s" * (len(holders) != 1)
    said = f"{_entries(pending)} on {len(holders)} consumer{plural} ({shown}{more})"
    if not target.oldest:
        return ("pending", "ok", said)
    idle = max(target.oldest, key=lambda row: int(row["time_since_delivered"]))
    idle_ms = int(idle["time_since_delivered"])
    deliveries = max(int(row["times_delivered"]) for row in target.oldest)
    looked = "" if pending <= OLDEST else f" of the {OLDEST} oldest"
    said += (
        f"; longest idle{looked} {_duration(idle_ms)} ({_text(idle['message_id'])} on "
        f"{_text(idle['consumer'])}), most deliveries {deliveries}"
    )
    limit = STALE_FACTOR * target.min_idle_ms
    if idle_ms >= limit:
        why = (
            f"idle over {STALE_FACTOR} x min_idle_ms ({_duration(limit)}): no consumer is "
            "reclaiming them (none running, or their min_idle_ms is None or larger; see "
            "--min-idle-ms)"
        )
        return ("pending", "warning", f"{said}; {why}")
    return ("pending", "ok", said)


def _dead_line(target: StreamAnswers) -> Line:
    where = target.dead_letters
    if target.dead_length is None:
        return ("dead-letters", "unknown", f"{where}: {_refused(target, 'XLEN dead')}")
    if target.dead_length == 0:
        return ("dead-letters", "ok", f"{where}: none")
    return (
        "dead-letters",
        "warning",
        f"{where}: {_entries(target.dead_length)}, events not applied after max_deliveries "
        "(read them with XRANGE; each holds the entry's fields, deliveries and last error)",
    )


def judge_stream(target: StreamAnswers, node: Any = None) -> list[Line]:
    """The stream's report lines, as (name, status, reason), in report order.

    Args:
        target: What the stream's node answered.
        node: The doctor's answers of a server (its INFO / HELLO tell the
            version, which says why a lag is unknown), or None.

    Returns:
        ``stream``, ``group``, and when the group exists ``lag`` and
        ``pending``; then ``dead-letters``.
    """
    where = f" (on {target.node})" if target.routed else ""
    missing = "no such key" in target.refused.get("XINFO GROUPS", "").lower()
    if target.length is None:
        lines: list[Line] = [("stream", "unknown", f"{target.stream}: {_refused(target, 'XLEN')}")]
    elif missing:
        lines = [("stream", "warning", f"no stream {target.stream}{where}")]
    else:
        lines = [("stream", "ok", f"{target.stream}: {_entries(target.length)}{where}")]
    group_line, found = _group_line(target)
    lines.append(group_line)
    if found is not None:
        pending, lag, _, _ = found
        lines += [_lag_line(lag, _version_major(node)), _pending_line(target, pending)]
    lines.append(_dead_line(target))
    return lines
