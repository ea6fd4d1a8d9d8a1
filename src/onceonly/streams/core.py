"""The consumer's decisions, without I/O: what to read, what to send per entry, what came of it.

A pass of a consumer (sync now, asyncio later) is:

1. read: its own pending entries after a cursor (at start, and after a
   failed commit) until there are none, then a page of entries reclaimed
   from idle consumers when one is due (:class:`ReadState`), else new ones
   (``>``);
2. per entry, :func:`classify`: LOST (deleted while pending), DEAD (past
   ``max_deliveries``), FAILED (no event id), or handle it;
3. the driver calls the handler; :func:`commit_plan` / :func:`failed_plan`
   turn its outcome into what that entry needs: its share of a commit call,
   or a call or command of its own;
4. :func:`batch` puts the commits in as few script calls as their bounds
   allow (see ``scripts.MAX_CALL_ENTRIES``) beside the other calls and
   commands; the driver sends them in one pipeline; :func:`results` reads
   the replies into one :class:`EntryResult` per entry.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import IdempotencyConfigError, IdempotencyStoreError
from ..stores.redis.common import chained, import_redis
from . import scripts
from .config import MAX_EVENT_ID_BYTES, ConsumerConfig, check_same_slot
from .effects import Effects
from .model import EntryResult, EntryStatus, StreamEntry
from .scripts import Call, Code, Command, Commit

__all__ = [
    "MAX_ERROR_CHARS",
    "Batch",
    "Plan",
    "RawEntry",
    "ReadState",
    "Step",
    "batch",
    "classify",
    "commit_plan",
    "error_text",
    "failed_plan",
    "group_info",
    "new_entries",
    "results",
]

MAX_ERROR_CHARS = 1000  # of a handler's error kept for the dead letter

# (id, fields or None when the entry was deleted while pending, delivery count)
RawEntry = tuple[str, "Mapping[bytes, bytes] | None", int]


class ReadState:
    """Which entries a consumer reads next: its own pending ones, reclaimed ones, or new ones.

    A consumer starts by draining its pending entries (a restarted process
    that keeps its name finds what it had read before it stopped), page by
    page; once a page comes back empty it reads new entries. Entries that
    FAILED stay pending: they are not read again in this pass (the cursor is
    past them) but are redelivered by a restart or the reclaim scan.

    The reclaim scan (``XAUTOCLAIM`` pages from a cursor) starts at the first
    pass after the drain and again ``min_idle_ms`` after each full scan; a
    scan under way goes on one page per pass until its cursor is back at
    ``0-0``. Times are the caller's monotonic clock, in seconds.
    """

    def __init__(self) -> None:
        self.draining = True
        self.cursor = "0"
        self.reclaim_cursor = "0-0"
        self.reclaim_at = 0.0

    def restart(self) -> None:
        """Drain again from the start (after a commit whose outcome is unknown)."""
        self.draining, self.cursor = True, "0"

    def drained(self, entries: Sequence[RawEntry]) -> bool:
        """Note a page of own pending entries; True when there were none left."""
        if not entries:
            self.draining = False
            return True
        self.cursor = entries[-1][0]
        return False

    def reclaim_due(self, now: float) -> bool:
        """Whether this pass reads a reclaim page (a scan under way, or one due)."""
        return self.reclaim_cursor != "0-0" or now >= self.reclaim_at

    def reclaimed(self, cursor: str, now: float, min_idle_ms: int) -> None:
        """Note a reclaim page's next cursor; a full scan schedules the next one."""
        self.reclaim_cursor = cursor
        if cursor == "0-0":
            self.reclaim_at = now + min_idle_ms / 1000


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def group_info(reply: object, group: str) -> tuple[int, int | None, int, str]:
    """(pending, lag, consumers, last delivered id) of ``group`` in an ``XINFO GROUPS`` reply.

    Raises:
        IdempotencyStoreError: The group is not in the reply (not created yet,
            or deleted), or the reply has another shape.
    """
    if not isinstance(reply, list):
        raise IdempotencyStoreError(f"unexpected XINFO GROUPS reply: {type(reply).__name__}")
    for row in reply:
        if isinstance(row, list):  # RESP2 pairs, when not parsed by redis-py
            row = {row[i]: row[i + 1] for i in range(0, len(row), 2)}
        info = {_str(k): v for k, v in dict(row).items()}
        if _str(info.get("name")) == group:
            lag = info.get("lag")
            return (
                int(info["pending"]),
                None if lag is None else int(lag),
                int(info["consumers"]),
                _str(info["last-delivered-id"]),
            )
    raise IdempotencyStoreError(f"the stream has no consumer group {group!r}")


def new_entries(reply: object) -> list[RawEntry]:
    """``XREADGROUP ... >`` as redis-py hands it back: delivery 1 each.

    redis-py's shape depends on its version and protocol: ``[[stream,
    entries]]`` (RESP2) or ``{stream: entries}``, entries possibly wrapped
    in one more list (RESP3), each entry ``(id, {field: value})`` or
    ``[id, [field, value, ...]]``. All of them are read here.
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        entries: Any = next(iter(reply.values()))
    elif isinstance(reply, list) and isinstance(reply[0], (list, tuple)) and len(reply[0]) == 2:
        entries = reply[0][1]
    else:
        raise IdempotencyStoreError(f"unexpected XREADGROUP reply: {type(reply).__name__}")
    wrapped = entries and len(entries) == 1 and isinstance(entries[0], list) and entries[0]
    if wrapped and isinstance(entries[0][0], (list, tuple)):
        entries = entries[0]  # RESP3: [entries]
    out: list[RawEntry] = []
    for raw_id, fields in entries or []:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        out.append((entry_id, _field_map(fields), 1))
    return out


def _field_map(fields: object) -> Mapping[bytes, bytes] | None:
    if fields is None or isinstance(fields, dict):
        return fields
    if isinstance(fields, list) and len(fields) % 2 == 0:
        return {bytes(fields[i]): bytes(fields[i + 1]) for i in range(0, len(fields), 2)}
    raise IdempotencyStoreError("unexpected entry fields in an XREADGROUP reply")


class Step(enum.Enum):
    """What one read entry's call in the batch is."""

    COMMIT = "commit"
    LOST = "lost"
    DEAD = "dead"
    FAILED = "failed"


class Plan(NamedTuple):
    """One entry's call in the batch and how to read its reply.

    Attributes:
        entry_id, deliveries, event_id: The entry.
        step: COMMIT (the handler returned), LOST, DEAD or FAILED.
        item: Its share of a commit call (COMMIT), else the script call or
            command sent for it.
        error: For FAILED: why (sent as the entry's error record).
    """

    entry_id: str
    deliveries: int
    event_id: str | None
    step: Step
    item: Call | Command | Commit
    error: str | None = None


def error_text(exc: BaseException) -> str:
    """A handler's exception as kept for the dead letter: ``Type: message``, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def failed_plan(
    config: ConsumerConfig,
    entry_id: str,
    deliveries: int,
    error: str,
    event_id: str | None = None,
) -> Plan:
    """An entry that stays pending: its error is recorded (``SET ... PX``) for its dead letter."""
    item: Command = ("SET", config.error_key(entry_id), error, "PX", config.dedup_ttl_ms)
    return Plan(entry_id, deliveries, event_id, Step.FAILED, item, error)


def classify(config: ConsumerConfig, raw: RawEntry) -> StreamEntry | Plan:
    """The entry to hand to the handler, or the plan of one that must not be handled."""
    entry_id, fields, deliveries = raw
    if fields is None:
        # Trimmed or deleted while pending: nothing to apply; acknowledge it.
        return Plan(
            entry_id, deliveries, None, Step.LOST, ("XACK", config.stream, config.group, entry_id)
        )
    if config.max_deliveries is not None and deliveries > config.max_deliveries:
        call = scripts.dead_letter_call(config, entry_id, deliveries)
        return Plan(entry_id, deliveries, None, Step.DEAD, call)
    if config.event_id_field is None:
        event_id = entry_id
    else:
        value = fields.get(config.event_id_field.encode())
        if not value:
            return failed_plan(
                config, entry_id, deliveries, f"the entry has no {config.event_id_field!r} field"
            )
        if len(value) > MAX_EVENT_ID_BYTES:
            return failed_plan(
                config, entry_id, deliveries, f"its event id is over {MAX_EVENT_ID_BYTES} bytes"
            )
        try:
            event_id = value.decode()
        except UnicodeDecodeError:
            return failed_plan(config, entry_id, deliveries, "its event id is not UTF-8")
    return StreamEntry(config.stream, entry_id, dict(fields), deliveries, event_id)


def _tagged(config: ConsumerConfig, effects: Effects) -> bool:
    """Whether every key of ``effects`` starts with the stream's hash tag (so is in its slot)."""
    prefix, keys = config.tag_prefix, effects.keys()
    return prefix is not None and all(key.startswith(prefix) for key in keys)


def commit_plan(config: ConsumerConfig, entry: StreamEntry, outcome: object) -> Plan:
    """The commit of an entry whose handler returned ``outcome`` (Effects or None).

    A wrong return type or a key outside the stream's slot (with
    ``same_slot``) makes it FAILED before anything is sent for it.
    """
    if outcome is not None and not isinstance(outcome, Effects):
        return failed_plan(
            config,
            entry.id,
            entry.deliveries,
            f"TypeError: the handler must return Effects or None, got {type(outcome).__name__}",
            entry.event_id,
        )
    if outcome is not None and config.same_slot and not _tagged(config, outcome):
        try:
            check_same_slot(outcome.keys(), config.stream, what="the effects' key")
        except IdempotencyConfigError as exc:
            return failed_plan(config, entry.id, entry.deliveries, error_text(exc), entry.event_id)
    commit = scripts.commit_entry(config, entry.id, entry.deliveries, entry.event_id, outcome)
    return Plan(entry.id, entry.deliveries, entry.event_id, Step.COMMIT, commit)


@dataclass(frozen=True)
class Batch:
    """What a batch sends in its pipeline, and where each plan's answer is.

    Attributes:
        items: The script calls and commands, in the order sent.
        where: Per plan: the index of its item, and its place in that item's
            reply (a commit call's entries share one), or -1 for all of it.
        sizes: Per item: how many entries a commit call holds, else 0.
    """

    items: list[Call | Command]
    where: list[tuple[int, int]]
    sizes: list[int]


def batch(config: ConsumerConfig, plans: Sequence[Plan]) -> Batch:
    """The pipeline of ``plans``: their commits in as few bounded script calls as can be.

    The commit calls go where their first entry was read; each entry of them is
    still committed on its own (see ``lua/commit.lua``).
    """
    items: list[Call | Command] = []
    sizes: list[int] = []
    where: list[tuple[int, int]] = [(-1, -1)] * len(plans)
    commits = [(i, plan.item) for i, plan in enumerate(plans) if isinstance(plan.item, Commit)]
    calls: dict[int, list[tuple[int, Commit]]] = {}  # a call's first plan -> its plans
    done = 0
    for chunk in scripts.commit_chunks([commit for _, commit in commits]):
        calls[commits[done][0]] = commits[done : done + len(chunk)]
        done += len(chunk)
    for i, plan in enumerate(plans):
        shares = calls.get(i)
        if shares is not None:
            for j, (k, _) in enumerate(shares):
                where[k] = (len(items), j)
            items.append(scripts.commits_call(config, [commit for _, commit in shares]))
            sizes.append(len(shares))
        elif not isinstance(plan.item, Commit):
            where[i] = (len(items), -1)
            items.append(plan.item)
            sizes.append(0)
    return Batch(items, where, sizes)


_STATUS = {
    Code.APPLIED: EntryStatus.APPLIED,
    Code.DUPLICATE: EntryStatus.DUPLICATE,
    Code.FENCED: EntryStatus.FENCED,
    Code.REFUSED: EntryStatus.FAILED,
    Code.DEAD: EntryStatus.DEAD,
    Code.LOST: EntryStatus.LOST,
}


def _failed(plan: Plan, error: object) -> EntryResult:
    return EntryResult(
        plan.entry_id, EntryStatus.FAILED, plan.deliveries, plan.event_id, str(error)
    )


def _result(plan: Plan, reply: object) -> EntryResult:
    if isinstance(reply, IdempotencyStoreError):  # a commit call's reply of another shape
        return _failed(plan, reply)
    if isinstance(reply, BaseException):
        return _failed(plan, chained(scripts.stream_error(reply, plan.entry_id), reply))
    if plan.step is Step.FAILED:
        return _failed(plan, plan.error)
    if plan.step is Step.LOST:
        return EntryResult(plan.entry_id, EntryStatus.LOST, plan.deliveries)
    try:
        code, detail = reply if isinstance(reply, tuple) else scripts.script_reply(reply)
    except IdempotencyStoreError as exc:
        return _failed(plan, exc)
    if code is Code.ERROR:
        # Redis answered one of this entry's commands with an error: read as if
        # the entry's own call had been answered so.
        return _result(plan, import_redis().exceptions.ResponseError(detail))
    status = _STATUS[code]
    if status is EntryStatus.DEAD:
        return EntryResult(plan.entry_id, status, plan.deliveries, dead_letter_id=detail)
    why = detail if status in (EntryStatus.FAILED, EntryStatus.FENCED) else None
    return EntryResult(plan.entry_id, status, plan.deliveries, plan.event_id, why)


def results(plans: Sequence[Plan], sent: Batch, replies: Sequence[object]) -> list[EntryResult]:
    """One result per plan, from its reply (or the error the server answered for it)."""
    read: list[object] = []
    for reply, size in zip(replies, sent.sizes, strict=True):
        if size and not isinstance(reply, BaseException):
            try:
                reply = scripts.commit_reply(reply, size)
            except IdempotencyStoreError as exc:
                reply = [exc] * size
        read.append(reply)
    out = []
    for plan, (item, place) in zip(plans, sent.where, strict=True):
        reply = read[item]
        if place >= 0 and isinstance(reply, list):
            reply = reply[place]
        out.append(_result(plan, reply))
    return out
