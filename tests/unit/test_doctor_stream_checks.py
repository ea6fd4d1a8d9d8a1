"""``doctor --stream``'s pure half: replies (as redis-py hands them back) in, report lines out."""

from __future__ import annotations

from typing import Any

import pytest

from onceonly.doctor import NodeAnswers
from onceonly.doctor_stream import OLDEST, StreamAnswers, judge_stream, stream_target
from onceonly.errors import IdempotencyConfigError


def _answers(**replies: Any) -> StreamAnswers:
    target = stream_target("{p1}:events", "g", None, None)
    assert target is not None
    target.node, target.length, target.dead_length = "127.0.0.1:6379", 9, 0
    for name, value in replies.items():
        setattr(target, name, value)
    return target


def _group(lag: object = "absent", pending: int = 0) -> dict[bytes, object]:
    row: dict[bytes, object] = {b"name": b"g", b"consumers": 1, b"pending": pending,
                                b"last-delivered-id": b"5-0"}  # fmt: skip
    if lag != "absent":
        row[b"lag"] = lag
    return row


def _lines(target: StreamAnswers, node: NodeAnswers | None = None) -> dict[str, tuple[str, str]]:
    return {name: (status, reason) for name, status, reason in judge_stream(target, node)}


def test_defaults_follow_the_consumers_rules() -> None:
    target = stream_target("plain-events", "g", None, None)
    assert target is not None
    assert (target.dead_letters, target.min_idle_ms) == ("{plain-events}:g:dead", 60_000)
    assert stream_target(None, None, None, None) is None
    with pytest.raises(IdempotencyConfigError, match="min_idle_ms must be an int"):
        stream_target("s", "g", None, 10**12)


def test_a_server_without_lag_is_named_by_its_version() -> None:
    # Redis 6.2 has no lag field at all; 7+ answers nil after a deletion.
    target = _answers(groups=[_group()])
    old = NodeAnswers(info={"redis_version": "6.2.14"})
    assert _lines(target, old)["lag"] == (
        "warning",
        "unknown: the server reports lag from Redis / Valkey 7 on",
    )
    new = NodeAnswers(hello={"version": "7.2.4"})
    assert _lines(_answers(groups=[_group(lag=None)]), new)["lag"][1].startswith(
        "unknown: entries were deleted (XDEL)"
    )
    assert _lines(_answers(groups=[_group(lag=3)]), None)["lag"] == (
        "ok",
        "3 entries not yet delivered to the group",
    )


def test_a_resp2_pair_list_reads_like_a_dict() -> None:
    pairs = [b"name", b"g", b"consumers", 2, b"pending", 0, b"last-delivered-id", b"7-1",
             b"lag", 0]  # fmt: skip
    assert _lines(_answers(groups=[pairs]))["group"] == (
        "ok",
        "g: 2 consumers, last delivered 7-1",
    )


def test_many_holders_and_many_pending_entries_are_summarised() -> None:
    consumers = [{"name": f"c{i}".encode(), "pending": 100 + i} for i in range(7)]
    rows = [
        {
            "message_id": f"{i}-0".encode(),
            "consumer": b"c6",
            "time_since_delivered": 10 * i,
            "times_delivered": 1 + i % 3,
        }
        for i in range(OLDEST)
    ]
    summary = {"pending": 721, "consumers": consumers}
    target = _answers(groups=[_group(lag=0, pending=721)], summary=summary, oldest=rows)
    assert _lines(target)["pending"] == (
        "ok",
        "721 entries on 7 consumers (c6 106, c5 105, c4 104, c3 103, c2 102, 2 more); longest "
        "idle of the 100 oldest 990 ms (99-0 on c6), most deliveries 3",
    )
