"""What a consumer hands its handler and hands back: entries, statuses, results, counts."""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = [
    "EntryResult",
    "EntryStatus",
    "StatsCounter",
    "StreamEntry",
    "StreamStats",
    "StreamStatus",
]


class EntryStatus(enum.Enum):
    """What became of one stream entry in one pass of a consumer."""

    APPLIED = "applied"
    """Its effects, its dedup record and its XACK were written, in one script."""
    DUPLICATE = "duplicate"
    """Its event was applied before (or this commit was, its reply lost): only acknowledged."""
    FENCED = "fenced"
    """Another consumer owns the entry now (it was reclaimed): nothing written."""
    LOST = "lost"
    """The entry was trimmed or deleted while pending: acknowledged, nothing to apply."""
    DEAD = "dead"
    """Delivered more than ``max_deliveries`` times: dead-lettered and acknowledged."""
    FAILED = "failed"
    """The handler raised or its effects were refused: nothing written, the entry stays pending."""


@dataclass(frozen=True)
class StreamEntry:
    """One stream entry as the handler sees it.

    Attributes:
        stream: The stream it was read from.
        id: The stream entry id (``"1700000000000-0"``).
        raw_fields: Its fields as stored, bytes to bytes.
        deliveries: How many times it has been delivered, this time included.
        event_id: The id it is deduplicated by: the ``event_id_field`` value,
            or the entry id.
    """

    stream: str
    id: str
    raw_fields: Mapping[bytes, bytes]
    deliveries: int
    event_id: str

    @property
    def fields(self) -> dict[str, str]:
        """The fields decoded as UTF-8 (raises ``UnicodeDecodeError`` on binary values).

        Use ``raw_fields`` for binary payloads.
        """
        return {k.decode(): v.decode() for k, v in self.raw_fields.items()}

    def __repr__(self) -> str:
        # Never the fields: they are the user's payload.
        return f"StreamEntry(id={self.id!r}, deliveries={self.deliveries})"


@dataclass(frozen=True)
class EntryResult:
    """The outcome of one entry.

    Attributes:
        id: The stream entry id.
        status: What became of it.
        deliveries: Its delivery count when it was handled.
        event_id: The id it was deduplicated by (None for a LOST entry).
        error: Why it FAILED or was FENCED (None otherwise).
        dead_letter_id: The id of its copy in the dead-letter stream (DEAD only).
    """

    id: str
    status: EntryStatus
    deliveries: int
    event_id: str | None = None
    error: str | None = None
    dead_letter_id: str | None = None


@dataclass(frozen=True)
class StreamStats:
    """A consumer's counts since it was built (a snapshot).

    Attributes:
        read: Entries read (own pending, reclaimed and new).
        applied, duplicates, fenced, lost, dead, failed: Entries per status.
        reclaimed: Entries taken over from idle consumers (``XAUTOCLAIM``),
            those deleted while pending included (they are also LOST).
    """

    read: int = 0
    applied: int = 0
    duplicates: int = 0
    fenced: int = 0
    lost: int = 0
    dead: int = 0
    failed: int = 0
    reclaimed: int = 0


@dataclass(frozen=True)
class StreamStatus:
    """A consumer group as the server sees it, with this consumer's counts.

    Attributes:
        pending: Entries of the group read and not acknowledged (all consumers).
        lag: Entries of the stream not yet read by the group (Redis / Valkey
            >= 7; None when the server does not know it, e.g. after deletions).
        consumers: Consumers the group knows (dead ones until removed).
        last_delivered_id: The group's last delivered entry id.
        stats: This consumer's counts.
    """

    pending: int
    lag: int | None
    consumers: int
    last_delivered_id: str
    stats: StreamStats


_FIELD_OF = {
    EntryStatus.APPLIED: "applied",
    EntryStatus.DUPLICATE: "duplicates",
    EntryStatus.FENCED: "fenced",
    EntryStatus.LOST: "lost",
    EntryStatus.DEAD: "dead",
    EntryStatus.FAILED: "failed",
}


class StatsCounter:
    """The counts behind :class:`StreamStats`, safe to bump from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((f.name for f in fields(StreamStats)), 0)

    def add(self, read: int, results: list[EntryResult], reclaimed: int = 0) -> None:
        """Count ``read`` entries read (``reclaimed`` of them reclaimed) and each status."""
        with self._lock:
            self._counts["read"] += read
            self._counts["reclaimed"] += reclaimed
            for result in results:
                self._counts[_FIELD_OF[result.status]] += 1

    def snapshot(self) -> StreamStats:
        """The counts now."""
        with self._lock:
            return StreamStats(**self._counts)
