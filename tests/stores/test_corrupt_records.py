"""A stored value that is not a valid record is never overwritten by a claim (issue 9, item 11).

Each store has one definition of a valid record: ``codec.decode`` (Redis
values) and ``codec.from_fields`` (SQLite rows, DynamoDB items). The claim of
a key whose value breaks it raises ``CorruptRecordError`` and leaves the value
as it was, whatever its deadline says, exactly as ``get`` raises. Each value
here is planted with the raw client (redis-py, sqlite3, boto3), bypassing the
store, on real servers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import redis_harness as harness
from dynamodb_harness import MotoServer
from onceonly import CorruptRecordError, IdempotencyConfig, codec, idempotent_function
from onceonly.records import Acquired, Found, Record, Status, new_token
from onceonly.stores import SQLiteStore
from onceonly.stores.dynamodb import DynamoDBStore
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from testkit import RedisFarm

TOK = "0123456789abcdef" * 2
LEASE = 60_000
TTL = 60_000
ENDED = 1  # a deadline long past by any clock here
FAR = 9_999_999_999_999  # a deadline far ahead: the record is live


def _claim(store: Any, key: str, token: str | None = None) -> Any:
    return store.claim(
        key, token=token or new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
    )


def _says_what_to_do(error: CorruptRecordError, store_name: str) -> None:
    text = str(error)
    assert store_name in text
    assert "onceonly inspect" in text
    assert "onceonly purge" in text


# -- Redis -------------------------------------------------------------------------


def header(
    status: str = "P",
    token: str = TOK,
    deadline: str = str(ENDED),
    fingerprint: str = "",
    outcome: bytes = b"",
) -> bytes:
    """A value in the record layout with any field as given (ended by default)."""
    return f"o1|{status}|{token}|{deadline}|{fingerprint}|".encode() + outcome


# Every value has a deadline that has passed (or none that parses), so a claim
# that read it as a record would take the key over and write its own.
BAD_VALUES = {
    "deadline-nan": header(deadline="nan"),
    "deadline-negative": header(deadline="-5"),
    "deadline-hex": header(deadline="0x10"),
    "deadline-exponent": header(deadline="1e3"),
    "deadline-spaces": header(deadline=" 1000 "),
    "deadline-17-digits": header(deadline="0" * 16 + "1"),
    "deadline-empty": header(deadline=""),
    "token-upper-case": header(token=TOK.upper()),
    "token-not-hex": header(token="g" * 32),
    "fingerprint-not-hex": header(fingerprint="xyz"),
    "fingerprint-upper-case": header(fingerprint="AB12"),
    "fingerprint-129-digits": header(fingerprint="a" * 129),
    "status-unknown": header(status="X"),
    "status-lower-case": header(status="c", outcome=b"j1"),
    "in-progress-with-outcome": header(outcome=b"j1"),
    "completed-without-outcome": header(status="C"),
}


def _redis_client(farm: RedisFarm, engine: harness.Engine, topology: str) -> Any:
    if topology == "cluster":
        return farm.cluster(engine).client()
    return farm.standalone(engine).client()


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_redis_claim_refuses_a_value_that_is_not_a_record(
    redis_engine: harness.Engine, redis_farm: RedisFarm, topology: str, case: str
) -> None:
    client = _redis_client(redis_farm, redis_engine, topology)
    prefix = f"c{uuid.uuid4().hex[:12]}"
    store = RedisStore(client, prefix=prefix)
    value = BAD_VALUES[case]
    client.set(f"{prefix}:k", value)
    try:
        with pytest.raises(CorruptRecordError) as caught:
            _claim(store, "k")
        _says_what_to_do(caught.value, "Redis")
        assert client.get(f"{prefix}:k") == value
        with pytest.raises(CorruptRecordError) as read:
            store.get("k")
        # The claim says what is wrong with the value as the read does (the decoder's words).
        assert str(caught.value) == str(read.value)
        # Under the holder's own token too (a claim retried after a lost reply).
        with pytest.raises(CorruptRecordError):
            _claim(store, "k", TOK)
        assert client.get(f"{prefix}:k") == value
    finally:
        client.delete(f"{prefix}:k")
        client.close()


@pytest.mark.parametrize("case", ["deadline-nan", "token-upper-case", "fingerprint-not-hex"])
def test_redis_async_claim_refuses_a_value_that_is_not_a_record(
    redis_engine: harness.Engine, redis_farm: RedisFarm, case: str
) -> None:
    server = redis_farm.standalone(redis_engine)
    prefix = f"c{uuid.uuid4().hex[:12]}"
    raw = server.client()
    raw.set(f"{prefix}:k", BAD_VALUES[case])

    async def scenario() -> None:
        store = AsyncRedisStore(
            redis.asyncio.Redis(host=server.client_host(), port=server.port), prefix=prefix
        )
        try:
            with pytest.raises(CorruptRecordError, match="onceonly inspect"):
                await store.claim(
                    "k", token=new_token(), lease_ms=LEASE, ttl_ms=TTL, fingerprint=None
                )
        finally:
            await store.client.aclose()

    try:
        asyncio.run(scenario())
        assert raw.get(f"{prefix}:k") == BAD_VALUES[case]
    finally:
        raw.delete(f"{prefix}:k")
        raw.close()


def test_redis_the_function_does_not_run_over_a_value_that_is_not_a_record(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    client = redis_farm.standalone(redis_engine).client()
    prefix = f"c{uuid.uuid4().hex[:12]}"
    store = RedisStore(client, prefix=prefix)
    runs: list[int] = []

    @idempotent_function(store=store, key=lambda: "x", config=IdempotencyConfig(key_prefix="p"))
    def work() -> int:
        runs.append(1)
        return 1

    full = f"{prefix}:{work.key_for()}"  # type: ignore[attr-defined]
    for value in BAD_VALUES.values():
        client.set(full, value)
        with pytest.raises(CorruptRecordError):
            work()
        assert client.get(full) == value
    assert runs == []
    client.delete(full)
    client.close()


# The claim script and codec.decode must agree on every value: valid means
# the claim takes it (ended) or answers with it (live); not valid means
# CorruptRecordError and the value untouched. The store's clock is put far
# ahead so that every deadline a valid header can hold (16 digits) splits
# into ended and live ones.
NOW = 10**15

AGREEMENT_TABLE = [
    *BAD_VALUES.values(),
    header(),
    header(status="C", outcome=b"j1"),
    header(status="C", outcome=b"|"),
    header(deadline="0"),
    header(deadline="0" * 15 + "1"),
    header(deadline=str(NOW)),
    header(deadline=str(NOW + 1)),
    header(deadline="9" * 16),
    header(fingerprint="a" * 128),
    header(fingerprint="0"),
    header(fingerprint="a" * 127 + "A"),
    header(token=TOK[:-1]),
    header(token=TOK + "0"),
    header(deadline="1.0"),
    header(deadline="+1"),
    header(deadline="1\x00"),
    header(deadline="inf"),
    header(deadline="1 "),
    header(fingerprint="ab", outcome=b"\x00"),
    b"o1|P|" + TOK.encode() + b"|1|",
    b"o1|P|" + TOK.encode() + b"|1",
    b"o2|P|" + TOK.encode() + b"|1||",
    b"O1|P|" + TOK.encode() + b"|1||",
    b"garbage",
    b"",
    b"\x80\x04\x95",
]


@pytest.fixture
def agreement(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[Any]:
    client = redis_farm.standalone(redis_engine).client()
    prefix = f"a{uuid.uuid4().hex[:12]}"
    store = RedisStore(client, prefix=prefix, clock=lambda: NOW)

    def check(value: bytes) -> None:
        full = f"{prefix}:k"
        client.set(full, value)
        try:
            record: Record | None = codec.decode(value)
        except CorruptRecordError:
            record = None
        if record is None:
            with pytest.raises(CorruptRecordError):
                _claim(store, "k")
            assert client.get(full) == value
            return
        result = _claim(store, "k")
        if record.deadline_ms > NOW:
            assert result == Found(record, NOW)
            assert client.get(full) == value
        else:
            assert result == Acquired(takeover=record.status is Status.IN_PROGRESS)
            assert client.get(full) != value

    try:
        yield check
    finally:
        client.delete(f"{prefix}:k")
        client.close()


@pytest.mark.parametrize("value", AGREEMENT_TABLE)
def test_the_claim_script_and_the_decoder_agree_on_a_table(agreement: Any, value: bytes) -> None:
    agreement(value)


# Header bytes are drawn from what a header is made of and what comes close.
_HEADER_BYTES = b"0123456789abcdefABCDEFgxnPCpcO1o|-+. e\x00\xff"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from(["P", "C"]),
    deadline=st.integers(min_value=0, max_value=10**16 - 1),
    fingerprint=st.sampled_from(["", "ab", "a" * 128]),
    outcome=st.sampled_from([b"", b"j1"]),
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=200), st.sampled_from(_HEADER_BYTES)),
        max_size=3,
    ),
    cut=st.integers(min_value=-2, max_value=1),
)
@example(status="P", deadline=1, fingerprint="", outcome=b"", edits=[(5, ord("A"))], cut=0)
def test_the_claim_script_and_the_decoder_agree_on_mutated_headers(
    agreement: Any,
    status: str,
    deadline: int,
    fingerprint: str,
    outcome: bytes,
    edits: list[tuple[int, int]],
    cut: int,
) -> None:
    value = bytearray(header(status, TOK, str(deadline), fingerprint, outcome))
    for index, byte in edits:
        if index < len(value):
            value[index] = byte
        else:
            value.insert(index % (len(value) + 1), byte)
    if cut < 0:
        del value[cut:]
    agreement(bytes(value))


# -- SQLite ------------------------------------------------------------------------

COLUMNS = ("key", "status", "token", "deadline", "fingerprint", "outcome", "took_over")

# Rows with one field broken. "ended" rows have a deadline that has passed (a
# claim that trusted it would take the key over); "own" rows are live and held
# under the claimer's own token (a claim retried after its reply was lost).
BAD_ROWS: dict[str, dict[str, Any]] = {
    "ended-status-unknown": {"status": "X"},
    "ended-status-lower-case": {"status": "p"},
    "ended-status-blob": {"status": b"P"},
    "ended-token-upper-case": {"token": TOK.upper()},
    "ended-token-short": {"token": TOK[:-1]},
    "ended-token-not-hex": {"token": "g" * 32},
    "ended-token-blob": {"token": TOK.encode()},
    "ended-deadline-negative": {"deadline": -5},
    "ended-deadline-real": {"deadline": 1.5},
    "ended-fingerprint-not-hex": {"fingerprint": "xyz"},
    "ended-fingerprint-upper-case": {"fingerprint": "AB12"},
    "ended-fingerprint-empty": {"fingerprint": ""},
    "ended-fingerprint-129-digits": {"fingerprint": "a" * 129},
    "ended-in-progress-with-outcome": {"outcome": b"j1"},
    "ended-completed-without-outcome": {"status": "C"},
    "ended-completed-text-outcome": {"status": "C", "outcome": "j1"},
    "ended-completed-empty-outcome": {"status": "C", "outcome": b""},
    "own-fingerprint-not-hex": {"deadline": FAR, "fingerprint": "xyz"},
    "own-deadline-real": {"deadline": FAR + 0.5},
    "own-in-progress-with-outcome": {"deadline": FAR, "outcome": b"j1"},
}


def _sqlite_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM onceonly ORDER BY key").fetchall()
    finally:
        conn.close()


def _sqlite_insert(db: Path, row: dict[str, Any]) -> None:
    values = {"status": "P", "token": TOK, "deadline": ENDED, "fingerprint": None}
    values |= {"outcome": None, "took_over": 0, **row}
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                f"INSERT OR REPLACE INTO onceonly ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})",
                [values[c] for c in COLUMNS],
            )
    finally:
        conn.close()


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_sqlite_claim_refuses_a_row_that_is_not_a_record(tmp_path: Path, case: str) -> None:
    db = tmp_path / "store.sqlite3"
    store = SQLiteStore(db)
    try:
        _sqlite_insert(db, {"key": "k", **BAD_ROWS[case]})
        before = _sqlite_rows(db)
        with pytest.raises(CorruptRecordError) as caught:
            _claim(store, "k", TOK if case.startswith("own-") else None)
        _says_what_to_do(caught.value, "SQLite")
        assert _sqlite_rows(db) == before
        with pytest.raises(CorruptRecordError):
            store.get("k")
        assert _sqlite_rows(db) == before
    finally:
        store.close()


def test_sqlite_the_function_does_not_run_over_a_row_that_is_not_a_record(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.sqlite3"
    store = SQLiteStore(db)
    runs: list[int] = []

    @idempotent_function(store=store, key=lambda: "x", config=IdempotencyConfig(key_prefix="p"))
    def work() -> int:
        runs.append(1)
        return 1

    try:
        for row in BAD_ROWS.values():
            _sqlite_insert(db, {"key": work.key_for(), **row})  # type: ignore[attr-defined]
            before = _sqlite_rows(db)
            with pytest.raises(CorruptRecordError):
                work()
            assert _sqlite_rows(db) == before
        assert runs == []
    finally:
        store.close()


# The claim's SQL check and codec.from_fields must agree on every row: a row
# from_fields accepts is taken when ended and answered when live; any other
# row raises and stays as it was. Fields are drawn from valid values and near
# misses, of every SQLite storage class.
_FIELDS = {
    "status": st.sampled_from(["P", "C", "p", "X", "", "PP", b"P", 1]),
    "token": st.sampled_from(
        [TOK, TOK.upper(), TOK[:-1], TOK + "0", "g" * 32, "\u00e9" * 32, TOK.encode(), 7]
    ),
    "deadline": st.sampled_from([ENDED, 0, -5, 1.5, "1", "soon", b"1", FAR, FAR + 0.5]),
    "fingerprint": st.sampled_from(
        [None, "", "ab", "0", "a" * 128, "a" * 129, "AB", "a b", b"ab", 12]
    ),
    "outcome": st.sampled_from([None, b"", b"j1", "j1", 0]),
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.fixed_dictionaries(_FIELDS), own=st.booleans())
def test_the_sqlite_claim_and_from_fields_agree(
    tmp_path: Path, row: dict[str, Any], own: bool
) -> None:
    db = tmp_path / "agree.sqlite3"
    store = SQLiteStore(db, clock=lambda: FAR - 1)
    try:
        _sqlite_insert(db, {"key": "k", **row})
        before = _sqlite_rows(db)
        try:
            record: Record | None = codec.from_fields(*before[0][1:6])
        except CorruptRecordError:
            record = None
        tok = TOK if own else new_token()
        if record is None:
            with pytest.raises(CorruptRecordError):
                _claim(store, "k", tok)
            assert _sqlite_rows(db) == before
        elif record.deadline_ms > FAR - 1 and not (own and record.status is Status.IN_PROGRESS):
            assert _claim(store, "k", tok) == Found(record, FAR - 1)
            assert _sqlite_rows(db) == before
        else:
            assert isinstance(_claim(store, "k", tok), Acquired)
            assert _sqlite_rows(db) != before
    finally:
        store.close()


# -- DynamoDB ----------------------------------------------------------------------

_ITEM = {"status": {"S": "P"}, "token": {"S": TOK}, "deadline": {"N": str(ENDED)}}
BAD_ITEMS: dict[str, dict[str, Any]] = {
    "ended-status-unknown": {"status": {"S": "X"}},
    "ended-status-lower-case": {"status": {"S": "p"}},
    "ended-status-missing": {"status": None},
    "ended-token-upper-case": {"token": {"S": TOK.upper()}},
    "ended-token-not-hex": {"token": {"S": "g" * 32}},
    "ended-token-short": {"token": {"S": TOK[:-1]}},
    "ended-token-number": {"token": {"N": "7"}},
    "ended-token-missing": {"token": None},
    "ended-deadline-negative": {"deadline": {"N": "-5"}},
    "ended-deadline-fraction": {"deadline": {"N": "1.5"}},
    "ended-fingerprint-not-hex": {"fingerprint": {"S": "xyz"}},
    "ended-fingerprint-upper-case": {"fingerprint": {"S": "AB12"}},
    "ended-fingerprint-number": {"fingerprint": {"N": "12"}},
    "ended-in-progress-with-outcome": {"outcome": {"B": b"j1"}},
    "ended-completed-without-outcome": {"status": {"S": "C"}},
    "ended-completed-string-outcome": {"status": {"S": "C"}, "outcome": {"S": "j1"}},
    "own-fingerprint-not-hex": {"deadline": {"N": str(FAR)}, "fingerprint": {"S": "xyz"}},
    "own-deadline-fraction": {"deadline": {"N": f"{FAR}.5"}},
    "own-in-progress-with-outcome": {"deadline": {"N": str(FAR)}, "outcome": {"B": b"j1"}},
}


def _item(key: str, case: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": {"S": key}, **_ITEM, **BAD_ITEMS[case]}
    return {name: v for name, v in item.items() if v is not None}


def _dynamodb_raw(client: Any, table: str, key: str) -> Any:
    return client.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True).get("Item")


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_dynamodb_claim_refuses_an_item_that_is_not_a_record(
    moto_server: MotoServer, case: str
) -> None:
    client = moto_server.shared_client
    table = moto_server.shared_table(client, "corrupt-records")
    store = DynamoDBStore(table, client=client)
    key = f"{case}:{uuid.uuid4().hex}"
    item = _item(key, case)
    client.put_item(TableName=table, Item=item)

    with pytest.raises(CorruptRecordError) as caught:
        _claim(store, key, TOK if case.startswith("own-") else None)
    _says_what_to_do(caught.value, "DynamoDB")
    assert _dynamodb_raw(client, table, key) == item
    with pytest.raises(CorruptRecordError):
        store.get(key)
    assert _dynamodb_raw(client, table, key) == item


def test_dynamodb_the_function_does_not_run_over_an_item_that_is_not_a_record(
    moto_server: MotoServer,
) -> None:
    client = moto_server.shared_client
    table = moto_server.shared_table(client, "corrupt-records")
    store = DynamoDBStore(table, client=client)
    runs: list[int] = []
    prefix = f"p{uuid.uuid4().hex[:8]}"

    @idempotent_function(store=store, key=lambda: "x", config=IdempotencyConfig(key_prefix=prefix))
    def work() -> int:
        runs.append(1)
        return 1

    key = work.key_for()  # type: ignore[attr-defined]
    for case in BAD_ITEMS:
        item = _item(key, case)
        client.put_item(TableName=table, Item=item)
        with pytest.raises(CorruptRecordError):
            work()
        assert _dynamodb_raw(client, table, key) == item
    assert runs == []
