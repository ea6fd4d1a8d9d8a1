"""One commit script call per batch: every entry still committed on its own.

A batch's commits go in one script call (cut into bounded calls when large),
beside the batch's dead letters, error records and LOST XACKs, all in one
pipeline. Each entry keeps its own outcome: APPLIED, DUPLICATE, FENCED,
REFUSED, an error of one of its commands (an ACL refusal) next to entries
that apply; and the script's shortcuts (one XPENDING for the batch, the
XACKs and error-record DELs sent once at the end, a TYPE not read again)
change no outcome.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from streams_support import names, pending_ids, points, tag

import redis_harness as harness
from faults.proxy import ReplyDropProxy
from onceonly.streams import ConsumerConfig, Effects, EntryStatus, StreamConsumer, StreamEntry
from onceonly.streams import scripts as stream_scripts
from onceonly.streams.config import CONSUMER_ACL_COMMANDS
from onceonly.streams.redis_io import run_call
from testkit import RedisFarm

APPLIED, DUPLICATE, FENCED = EntryStatus.APPLIED, EntryStatus.DUPLICATE, EntryStatus.FENCED
FAILED, DEAD, LOST = EntryStatus.FAILED, EntryStatus.DEAD, EntryStatus.LOST
HANDSHAKE = {"HELLO", "CLIENT", "AUTH", "SELECT"}  # what redis-py sends on a new connection


def _consumer(client: Any, stream: str, group: str, handler: Any, **options: Any) -> StreamConsumer:
    options = {"consumer": "c1", "block_ms": 0, "event_id_field": "id", **options}
    return StreamConsumer(client, stream=stream, group=group, handler=handler, **options)


@pytest.fixture
def proxy(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[ReplyDropProxy]:
    """A proxy in front of the engine's standalone server (it records the commands sent)."""
    with ReplyDropProxy(redis_farm.standalone(redis_engine).port) as p:
        yield p


# -- mixed outcomes in one call ----------------------------------------------------------


def _mixed_batch(client: Any, admin: Any) -> tuple[StreamConsumer, list[str], list[Any]]:
    """Eight entries pending on c1 whose commits end eight ways; the consumer's results."""
    stream, user, lb, group = names()
    rows = [("a", "u0"), ("a", "u1"), ("b", "bad"), ("c", "u3"), ("d", "u4"), ("e", "u5"),
            ("f", "u6"), ("g", "u7")]  # fmt: skip
    ids = [admin.xadd(stream, {"id": e, "user": u}).decode() for e, u in rows]
    admin.xgroup_create(stream, group, id="0")
    admin.xreadgroup(group, "c1", {stream: ">"})  # all pending on c1, delivery 1
    admin.xclaim(stream, group, "c1", 0, [ids[4]])  # delivery 2: the next read makes it 3
    admin.xdel(stream, ids[5])  # deleted while pending: LOST
    admin.set(user + "bad", "a string, not a hash")  # its HINCRBY is refused

    def handler(entry: StreamEntry) -> Effects:
        who = entry.fields["user"]
        if who == "u3":  # another consumer reclaims it while it is being handled
            admin.xclaim(stream, group, "other", 0, [entry.id])
        if who == "u6":
            raise ValueError("bad event")
        return Effects().hincrby(user + who, "points", 1).zincrby(lb, 1, who)

    consumer = _consumer(client, stream, group, handler, max_deliveries=2)
    return consumer, ids, [user, lb, group, stream]


def _check_mixed(admin: Any, consumer: StreamConsumer, ids: list[str], rest: list[Any]) -> None:
    user, lb, group, stream = rest
    results = consumer.run_once()
    assert [r.id for r in results] == ids
    assert [r.status for r in results] == [
        APPLIED, DUPLICATE, FAILED, FENCED, DEAD, LOST, FAILED, APPLIED,
    ]  # fmt: skip
    assert results[2].error == (f"HINCRBY needs a hash at {user}bad, which holds a string")
    assert str(results[3].error).startswith("pending on other")
    assert results[6].error == "ValueError: bad event"
    # Written: the two applied entries only; the duplicate of "a" acknowledged only.
    assert [points(admin, user, u) for u in ("u0", "u1", "u3", "u7")] == [1, 0, 0, 1]
    assert admin.get(user + "bad") == b"a string, not a hash"
    assert {m.decode() for m in admin.zrange(lb, 0, -1)} == {"u0", "u7"}
    # Pending: the two FAILED on c1, the FENCED one on "other".
    assert pending_ids(admin, stream, group) == [ids[2], ids[3], ids[6]]
    config = consumer.config
    assert admin.get(config.error_key(ids[2])) == (
        b"effects refused: HINCRBY needs a hash at " + user.encode() + b"bad, which holds a string"
    )
    assert admin.get(config.error_key(ids[6])) == b"ValueError: bad event"
    assert admin.xlen(config.dead_letters) == 1
    assert (consumer.stats.applied, consumer.stats.failed) == (2, 2)


def test_mixed_outcomes_in_one_batch_each_as_if_alone(client: Any) -> None:
    consumer, ids, rest = _mixed_batch(client, client)
    _check_mixed(client, consumer, ids, rest)


def test_the_mixed_batch_sends_its_commits_as_one_script_call(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    client = redis.Redis(host=harness.HOST, port=proxy.port)
    consumer, ids, rest = _mixed_batch(client, standalone)
    consumer.ensure_group()
    proxy.commands_seen.clear()
    _check_mixed(standalone, consumer, ids, rest)
    # The pending read; then one pipeline: the five commits in one call, the dead
    # letter, the LOST entry's XACK, the failed entry's error record.
    seen = [c for c in proxy.commands_seen if c not in HANDSHAKE]
    assert seen == ["EVALSHA", "EVALSHA", "EVALSHA", "XACK", "SET"]
    client.close()


# -- bounded calls -------------------------------------------------------------------------


def test_a_large_batch_is_cut_into_bounded_calls_in_one_pipeline(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, user, lb, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port)
    count = 2 * stream_scripts.MAX_CALL_ENTRIES + 10
    fenced = stream_scripts.MAX_CALL_ENTRIES + 5  # in the second call

    def handler(entry: StreamEntry) -> Effects:
        n = int(entry.fields["id"])
        if n == fenced:
            standalone.xclaim(stream, group, "other", 0, [entry.id])
        return Effects().hincrby(user + str(n % 7), "points", 1).zincrby(lb, 1, str(n))

    consumer = _consumer(client, stream, group, handler, batch_size=1000)
    consumer.run_once()  # makes the group; nothing to read yet
    pipe = standalone.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"id": str(n)})
    pipe.execute()
    proxy.commands_seen.clear()
    results = consumer.run_once()
    statuses = [r.status for r in results]
    assert statuses == [FENCED if n == fenced else APPLIED for n in range(count)]
    seen = [c for c in proxy.commands_seen if c not in HANDSHAKE]
    assert seen == ["XREADGROUP", "EVALSHA", "EVALSHA", "EVALSHA"]  # 128 + 128 + 10
    assert sum(points(standalone, user, str(u)) for u in range(7)) == count - 1
    assert pending_ids(standalone, stream, group) == [results[fenced].id]
    client.close()


def test_entries_with_many_effects_go_in_calls_of_at_most_the_effect_bound(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, user, _, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port)
    per_entry = 200  # five entries fit the bound (1024), the sixth goes in a second call

    def handler(entry: StreamEntry) -> Effects:
        effects = Effects()
        for i in range(per_entry):
            effects.hincrby(f"{user}{i % 3}", f"f{i}", 1)
        return effects

    consumer = _consumer(client, stream, group, handler)
    consumer.run_once()
    for n in range(7):
        standalone.xadd(stream, {"id": str(n)})
    proxy.commands_seen.clear()
    assert {r.status for r in consumer.run_once()} == {APPLIED}
    seen = [c for c in proxy.commands_seen if c not in HANDSHAKE]
    assert seen == ["XREADGROUP", "EVALSHA", "EVALSHA"]
    assert standalone.hget(f"{user}0", "f0") == b"7"
    client.close()


def test_commit_chunks_close_at_each_bound() -> None:
    config = ConsumerConfig(stream="{p}:events", group="g", consumer="c1")

    def share(n: int, effects: int = 1, value: bytes = b"v") -> stream_scripts.Commit:
        fx = Effects()
        for i in range(effects):
            fx.set(f"{{p}}:k{i}", value)
        return stream_scripts.commit_entry(config, f"{n}-0", 1, str(n), fx)

    def sizes(commits: list[stream_scripts.Commit]) -> list[int]:
        return [len(chunk) for chunk in stream_scripts.commit_chunks(commits)]

    assert sizes([share(n) for n in range(300)]) == [128, 128, 44]
    assert sizes([share(n, effects=256) for n in range(9)]) == [4, 4, 1]
    big = b"x" * (stream_scripts.MAX_CALL_BYTES // 3)
    assert sizes([share(n, value=big) for n in range(4)]) == [2, 2]
    huge = b"x" * stream_scripts.MAX_CALL_BYTES  # over the bound alone: a call of its own
    assert sizes([share(0), share(1, value=huge), share(2)]) == [1, 1, 1]
    assert stream_scripts.commit_chunks([]) == []


# -- the script cache ---------------------------------------------------------------------


def test_a_flushed_script_cache_costs_one_eval_then_evalsha_again(
    proxy: ReplyDropProxy, standalone: redis.Redis
) -> None:
    stream, user, lb, group = names()
    client = redis.Redis(host=harness.HOST, port=proxy.port)

    def handler(entry: StreamEntry) -> Effects:
        return Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a")

    consumer = _consumer(client, stream, group, handler)
    standalone.xadd(stream, {"id": "1"})
    assert [r.status for r in consumer.run_once()] == [APPLIED]
    standalone.script_flush()
    for n in range(2, 5):
        standalone.xadd(stream, {"id": str(n)})
    proxy.commands_seen.clear()
    assert [r.status for r in consumer.run_once()] == [APPLIED] * 3
    # The batch's one call: NOSCRIPT, then sent once more as EVAL (which caches it).
    assert [c for c in proxy.commands_seen if c not in HANDSHAKE] == [
        "XREADGROUP",
        "EVALSHA",
        "EVAL",
    ]
    standalone.xadd(stream, {"id": "5"})
    proxy.commands_seen.clear()
    assert [r.status for r in consumer.run_once()] == [APPLIED]
    assert [c for c in proxy.commands_seen if c not in HANDSHAKE] == ["XREADGROUP", "EVALSHA"]
    assert points(standalone, user, "a") == 5
    client.close()


def test_a_flushed_script_cache_on_every_topology(client: Any) -> None:
    stream, user, lb, group = names()

    def handler(entry: StreamEntry) -> Effects:
        return Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a")

    consumer = _consumer(client, stream, group, handler)
    client.xadd(stream, {"id": "1"})
    assert [r.status for r in consumer.run_once()] == [APPLIED]
    client.script_flush()
    client.xadd(stream, {"id": "2"})
    client.xadd(stream, {"id": "1"})  # a duplicate in the same call
    assert [r.status for r in consumer.run_once()] == [APPLIED, DUPLICATE]
    assert points(client, user, "a") == 2


# -- one entry's error is its own ----------------------------------------------------------


@pytest.fixture
def acl(redis_engine: harness.Engine, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A server of its own with a consumer allowed HINCRBY and ZINCRBY but not SADD."""
    t = tag()
    allowed = " ".join("+" + c.lower() for c in (*CONSUMER_ACL_COMMANDS, "HINCRBY", "ZINCRBY"))
    rule = f"user c on >pw-c ~{{{t}}}:* resetchannels -@all {allowed}"
    server = harness.standalone(
        redis_engine, tmp_path / "acl", extra=["user default on nopass ~* &* +@all", rule]
    )
    try:
        yield server.port, t
    finally:
        server.stop()


def test_an_error_of_one_entrys_command_fails_that_entry_only(acl: tuple[int, str]) -> None:
    port, t = acl
    stream, user, lb, group = names(t)
    admin = redis.Redis(host=harness.HOST, port=port)
    short = redis.Redis(host=harness.HOST, port=port, username="c", password="pw-c")
    try:
        for n in range(4):
            admin.xadd(stream, {"id": str(n)})

        def handler(entry: StreamEntry) -> Effects:
            n = entry.fields["id"]
            if n == "1":  # SADD: the ACL refuses it inside the script
                return Effects().hincrby(user + "b", "points", 1).sadd(f"{{{t}}}:tags", "x")
            if n == "3":  # INCRBY, sent first unread: its ACL refusal is not a refusal
                return Effects().incrby(f"{{{t}}}:n", 1).zincrby(lb, 1, n)
            return Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, n)

        results = _consumer(short, stream, group, handler).run_once()
        assert [r.status for r in results] == [APPLIED, FAILED, APPLIED, FAILED]
        for failed in (results[1], results[3]):
            error = str(failed.error)
            assert "(ACL)" in error
            assert "+xpending" in error
            assert "pw-" not in error
        assert points(admin, user, "a") == 2
        assert admin.exists(f"{{{t}}}:n") == 0
        assert {m.decode() for m in admin.zrange(lb, 0, -1)} == {"0", "2"}
        assert pending_ids(admin, stream, group) == [results[1].id, results[3].id]
    finally:
        admin.close()
        short.close()


# -- the script's shortcuts change no outcome ------------------------------------------------


def _pending(client: Any, stream: str, group: str, count: int) -> list[str]:
    ids = [client.xadd(stream, {"n": str(n)}).decode() for n in range(count)]
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "c1", {stream: ">"})
    return ids


def _commit(client: Any, config: ConsumerConfig, shares: list[tuple[str, Effects]]) -> list[Any]:
    commits = [stream_scripts.commit_entry(config, i, 1, i, fx) for i, fx in shares]
    reply = run_call(client, stream_scripts.commits_call(config, commits))
    return [code for code, _ in stream_scripts.commit_reply(reply, len(commits))]


def test_a_key_emptied_by_one_entry_takes_another_type_in_the_next(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, user, _, group = names()
    key = user + "k"
    client.hset(key, "f", "1")
    a, b, c = _pending(client, stream, group, 3)
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    codes = _commit(
        client,
        config,
        [(a, Effects().hdel(key, "f")), (b, Effects().set(key, "x")), (c, Effects().incrby(key))],
    )
    # b finds the key gone (not the hash a typed it as); c finds a string, not an integer.
    Code = stream_scripts.Code
    assert codes == [Code.APPLIED, Code.APPLIED, Code.REFUSED]
    assert client.get(key) == b"x"


def test_an_integer_check_reads_a_key_of_another_type_as_a_refusal(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, user, _, group = names()
    key = user + "k"
    a, b = _pending(client, stream, group, 2)
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    commits = [
        stream_scripts.commit_entry(config, a, 1, a, Effects().hincrby(key, "f", 1)),
        stream_scripts.commit_entry(config, b, 1, b, Effects().incrby(key, 1)),
    ]
    reply = run_call(client, stream_scripts.commits_call(config, commits))
    Code = stream_scripts.Code
    assert stream_scripts.commit_reply(reply, 2) == [
        (Code.APPLIED, ""),
        (Code.REFUSED, f"INCRBY needs a string at {key}, which holds a hash"),
    ]


def test_an_effect_on_an_earlier_entrys_error_record_sees_it_cleared_first(
    standalone_or_cluster: Any,
) -> None:
    client = standalone_or_cluster
    stream, _, _, group = names()
    a, b = _pending(client, stream, group, 2)
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    record = config.error_key(a)
    client.set(record, "an error of an earlier delivery")
    # a's commit clears its error record; b then writes that very key (odd, but allowed).
    codes = _commit(client, config, [(a, Effects()), (b, Effects().set(record, "b's value"))])
    assert codes == [stream_scripts.Code.APPLIED] * 2
    assert client.get(record) == b"b's value"
    assert pending_ids(client, stream, group) == []


def test_entries_not_in_the_batchs_pending_range_are_checked_alone(
    standalone_or_cluster: Any,
) -> None:
    # c1 holds other entries between the batch's ids: the one XPENDING of the
    # range (count: the batch's size) misses some; each is then read alone.
    client = standalone_or_cluster
    stream, _, _, group = names()
    ids = _pending(client, stream, group, 6)
    config = ConsumerConfig(stream=stream, group=group, consumer="c1")
    codes = _commit(client, config, [(i, Effects()) for i in (ids[0], ids[5])])
    assert codes == [stream_scripts.Code.APPLIED] * 2
    assert pending_ids(client, stream, group) == ids[1:5]
    client.xclaim(stream, group, "c1", 0, [ids[4]])  # delivery 2; the commit read 1
    codes = _commit(client, config, [(i, Effects()) for i in (ids[1], ids[4])])
    assert codes == [stream_scripts.Code.APPLIED, stream_scripts.Code.FENCED]
    assert pending_ids(client, stream, group) == ids[2:5]


# (what the key holds before, the increment sent first, the words of the refusal)
FIRST: dict[str, tuple[Any, Any, str]] = {
    "hincrby-on-a-string": (
        lambda c, k: c.set(k, "x"),
        lambda e, k: e.hincrby(k, "f", 1),
        "HINCRBY needs a hash at {k}, which holds a string",
    ),
    "hincrby-on-a-float-field": (
        lambda c, k: c.hset(k, "f", "1.5"),
        lambda e, k: e.hincrby(k, "f", 1),
        "HINCRBY at {k}: the field holds a value that is not a 64-bit integer",
    ),
    "hincrby-overflow": (
        lambda c, k: c.hset(k, "f", (1 << 63) - 2),
        lambda e, k: e.hincrby(k, "f", 5),
        "HINCRBY at {k}: the field would overflow a 64-bit integer",
    ),
    "incrby-on-a-set": (
        lambda c, k: c.sadd(k, "m"),
        lambda e, k: e.incrby(k, 1),
        "INCRBY needs a string at {k}, which holds a set",
    ),
    "incrby-on-a-leading-zero": (
        lambda c, k: c.set(k, "007"),
        lambda e, k: e.incrby(k, 1),
        "INCRBY at {k}: the key holds a value that is not a 64-bit integer",
    ),
    "incrby-underflow": (
        lambda c, k: c.set(k, -(1 << 63) + 1),
        lambda e, k: e.incrby(k, -2),
        "INCRBY at {k}: the key would overflow a 64-bit integer",
    ),
}


@pytest.mark.parametrize("case", list(FIRST))
def test_an_increment_sent_first_unread_is_refused_in_the_checks_words(
    standalone_or_cluster: Any, case: str
) -> None:
    client = standalone_or_cluster
    before, first, words = FIRST[case]
    stream, user, lb, group = names()
    key = stream.replace(":events", ":target")
    before(client, key)
    held = client.dump(key)
    client.xadd(stream, {"id": "1"})
    client.xadd(stream, {"id": "2"})

    def handler(entry: StreamEntry) -> Effects:
        if entry.fields["id"] == "1":  # the increment first, then writes that would succeed
            return first(Effects(), key).hincrby(user + "a", "points", 1).zincrby(lb, 1, "a")
        return Effects().hincrby(user + "b", "points", 1)

    consumer = _consumer(client, stream, group, handler)
    refused, applied = consumer.run_once()
    assert (refused.status, refused.error) == (FAILED, words.format(k=key))
    assert applied.status is APPLIED
    assert client.dump(key) == held
    assert client.exists(user + "a", lb) == 0
    assert points(client, user, "b") == 1
    assert client.get(consumer.config.error_key(refused.id)) == (
        f"effects refused: {refused.error}".encode()
    )


def test_an_increment_sent_first_is_refused_after_a_later_effect_that_would_fail(
    standalone_or_cluster: Any,
) -> None:
    # Both would fail: the first one's refusal is the one given, as the check walks in order.
    client = standalone_or_cluster
    stream, user, lb, group = names()
    client.set(user + "a", "x")
    client.set(lb, "y")
    client.xadd(stream, {"id": "1"})
    effects = Effects().hincrby(user + "a", "points", 1).zincrby(lb, 1, "a")
    (result,) = _consumer(client, stream, group, lambda entry: effects).run_once()
    assert result.error == f"HINCRBY needs a hash at {user}a, which holds a string"
    client.delete(user + "a")
    (result,) = _consumer(client, stream, group, lambda entry: effects).run_once()  # again
    assert result.error == f"ZINCRBY needs a zset at {lb}, which holds a string"
    assert client.exists(user + "a") == 0
