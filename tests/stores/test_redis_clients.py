"""The Redis stores' clients: bad URLs and options, retries, cluster hash tags.

``from_url`` turns every bad URL or option into ``IdempotencyConfigError``
naming the input (never the password) and gives its client a bounded retry;
a store prefix or a ``key_prefix`` with a hash tag warns on a cluster client.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import warnings
from typing import Any

import pytest
import redis

import redis_harness as harness
from onceonly import (
    IdempotencyConfig,
    IdempotencyConfigError,
    IdempotencyStoreError,
    OnceOnlyWarning,
    idempotent_function,
)
from onceonly.records import Acquired, new_token
from onceonly.stores.redis import AsyncRedisStore, RedisStore, clients
from onceonly.stores.redis.clients import bounded_retry
from testkit import RedisFarm


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# -- from_url: bad input -----------------------------------------------------------------------

BAD_URLS = [
    ("redis://127.0.0.1:abc/0", "abc"),
    ("redis://127.0.0.1:99999/0", "99999"),
    ("redis://[::1:6379/0", r"\[::1:6379"),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ("redis://127.0.0.1:6379/0?no_such_option=1", "no_such_option"),
    ("redis://127.0.0.1:6379/first", "/first"),
    ("redis+sentinel://127.0.0.1:abc/svc", "127.0.0.1:abc"),
    ("redis+sentinel://[::1:26379/svc", r"\[::1:26379"),
    ("http://127.0.0.1:6379", "http"),
]


@pytest.mark.parametrize(("url", "named"), BAD_URLS, ids=[u for u, _ in BAD_URLS])
@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_turns_a_bad_url_into_a_config_error_naming_it(
    cls: Any, url: str, named: str
) -> None:
    with pytest.raises(IdempotencyConfigError, match=named):
        cls.from_url(url)


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_says_a_url_redis_py_cannot_parse_is_a_bad_url(cls: Any) -> None:
    # Checked before the client is built: the message blames the URL, not an option.
    named = r"bad Redis URL redis://127\.0\.0\.1:abc/0: Port"
    with pytest.raises(IdempotencyConfigError, match=named):
        cls.from_url("redis://127.0.0.1:abc/0")


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_never_shows_the_password(cls: Any) -> None:
    for url in (
        "redis://app:s3cret-pw@127.0.0.1:abc/0",
        "redis://:s3cret-pw@[::1:6379/0",
        "redis://127.0.0.1:6379/0?password=s3cret-pw&bogus_option=1",
        "redis+sentinel://app:s3cret-pw@127.0.0.1:abc/svc",
    ):
        with pytest.raises(IdempotencyConfigError) as info:
            cls.from_url(url)
        text = str(info.value)
        assert "s3cret-pw" not in text, text
        assert info.value.__cause__ is None or "s3cret-pw" not in str(info.value.__cause__)
        assert "***" in text or "@" not in url, text


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_turns_bad_arguments_into_config_errors(cls: Any) -> None:
    good = "redis://127.0.0.1:6379/0"
    for url, options, named in (
        (None, {}, "NoneType"),
        (b"redis://127.0.0.1:6379/0", {}, "bytes"),
        (good, {"cluster": "yes"}, "cluster"),
        (good, {"socket_timeout": "x"}, "socket_timeout"),
        (good, {"socket_connect_timeout": -1}, "socket_connect_timeout"),
        (good, {"no_such_option": 1}, "no_such_option"),
    ):
        with pytest.raises(IdempotencyConfigError, match=named):
            cls.from_url(url, **options)


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_refuses_a_zero_socket_timeout_and_reads_the_first_of_a_repeated_one(
    cls: Any,
) -> None:
    with pytest.raises(IdempotencyConfigError, match="socket_timeout"):
        cls.from_url("redis://127.0.0.1:6379/0", socket_timeout=0)
    # redis-py takes the first of a repeated query option; so does the retry budget.
    store = cls.from_url("redis://127.0.0.1:6379/0?socket_timeout=1&socket_timeout=2")
    assert store.client.get_retry().budget == 1.0


SENTINEL_URLS_REFUSED = [
    ("redis+sentinel://127.0.0.1:0/svc", "'127.0.0.1:0'"),
    ("redis+sentinel://127.0.0.1:65536/svc", "'127.0.0.1:65536'"),
    ("redis+sentinel://:26379/svc", "':26379'"),
    ("redis+sentinel://127.0.0.1:26379", "/service_name"),
    ("redis+sentinel://127.0.0.1:26379/svc/x", "/service_name"),
    ("redis+sentinel://127.0.0.1:26379/svc/0/x", "/service_name"),
]


@pytest.mark.parametrize(
    ("url", "named"), SENTINEL_URLS_REFUSED, ids=[u for u, _ in SENTINEL_URLS_REFUSED]
)
@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_refuses_a_sentinel_url_it_cannot_use(cls: Any, url: str, named: str) -> None:
    with pytest.raises(IdempotencyConfigError, match=re.escape(named)):
        cls.from_url(url)


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_builds_a_sentinel_client_from_every_part_of_the_url(cls: Any) -> None:
    # Nothing is sent: a Sentinel client connects at its first call.
    store = cls.from_url("rediss+sentinel://app:pw@127.0.0.1:1,[::1]:65535/svc/3")
    pool = store.client.connection_pool
    assert pool.service_name == "svc"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "pw")
    assert "SSL" in pool.connection_class.__name__  # rediss+: TLS to the primary
    manager = pool.sentinel_manager
    addresses = [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in manager.sentinels
    ]
    assert addresses == [("127.0.0.1", 1), ("::1", 65535)]
    assert manager.sentinel_kwargs["ssl"] is True  # and to the sentinels
    assert (
        cls.from_url("redis+sentinel://127.0.0.1:1/svc").client.connection_pool.connection_kwargs[
            "db"
        ]
        == 0
    )


def test_from_url_with_a_sentinel_url_writes_to_the_primarys_database(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    sentinels = redis_farm.sentinel(redis_engine)
    prefix = _prefix()
    store = RedisStore.from_url(f"{sentinels.url()}/2", prefix=prefix)
    host, port = sentinels.master_address()
    primary = redis.Redis(host=host, port=port, db=2)
    try:
        token = new_token()
        claim = store.claim("k", token=token, lease_ms=60_000, ttl_ms=60_000, fingerprint=None)
        assert claim == Acquired(takeover=False)
        assert primary.exists(f"{prefix}:k") == 1
    finally:
        primary.delete(f"{prefix}:k")
        primary.close()
        store.client.close()


def test_sync_from_url_with_cluster_true_on_a_standalone_server_says_so(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    port = redis_farm.standalone(redis_engine).port
    with pytest.raises(IdempotencyConfigError, match="drop cluster=True"):
        RedisStore.from_url(f"redis://{harness.HOST}:{port}/0", cluster=True)


def test_async_from_url_with_cluster_true_on_a_standalone_server_says_so(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    # The asyncio cluster client meets the server on its first call.
    port = redis_farm.standalone(redis_engine).port
    store = AsyncRedisStore.from_url(f"redis://{harness.HOST}:{port}/0", cluster=True)
    with pytest.raises(IdempotencyStoreError, match="without cluster=True"):
        asyncio.run(store.get("k"))


def test_from_url_clients_retry_and_an_explicit_retry_is_kept(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    url = f"redis://{harness.HOST}:{redis_farm.standalone(redis_engine).port}/0"
    built = RedisStore.from_url(url, socket_timeout=2).client.get_connection_kwargs()["retry"]
    assert built.get_retries() > 0
    assert built.budget == 2.0
    from_query = RedisStore.from_url(url + "?socket_timeout=3").client.get_connection_kwargs()
    assert from_query["retry"].budget == 3.0
    mine = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
    kept = RedisStore.from_url(url, retry=mine).client.get_connection_kwargs()["retry"]
    assert kept.get_retries() == 1
    assert type(kept) is redis.retry.Retry
    assert RedisStore.from_url(url, retry=None).client.get_connection_kwargs()["retry"] is None


# -- cluster hash tags ---------------------------------------------------------------------------


def test_a_prefix_with_a_hash_tag_warns_on_a_cluster_client_only(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    cluster = redis_farm.cluster(redis_engine).client()
    with pytest.warns(OnceOnlyWarning, match=r"hash tag \{tenant\}"):
        RedisStore(cluster, prefix="{tenant}")
    with pytest.warns(OnceOnlyWarning, match="one slot"):
        AsyncRedisStore(
            redis.asyncio.RedisCluster(host=harness.HOST, port=cluster.get_default_node().port),
            prefix="app{tenant}",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RedisStore(cluster, prefix="app{}")  # an empty tag is no tag: the whole key is hashed
        RedisStore(cluster, prefix="plain")
        RedisStore(redis_farm.standalone(redis_engine).client(), prefix="{tenant}")  # no slots
    cluster.close()


def test_a_key_prefix_with_a_hash_tag_warns_when_the_function_is_decorated(
    redis_engine: harness.Engine, redis_farm: RedisFarm
) -> None:
    cluster = redis_farm.cluster(redis_engine).client()
    store = RedisStore(cluster, prefix=_prefix())

    def work(order: dict[str, Any]) -> int:
        return 1

    with pytest.warns(OnceOnlyWarning, match=r"key_prefix '\{orders\}'"):
        idempotent_function(
            store=store, data="order", config=IdempotencyConfig(key_prefix="{orders}")
        )(work)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idempotent_function(
            store=store, data="order", config=IdempotencyConfig(key_prefix="orders")
        )(work)
        standalone = RedisStore(redis_farm.standalone(redis_engine).client())
        idempotent_function(
            store=standalone, data="order", config=IdempotencyConfig(key_prefix="{orders}")
        )(work)
    cluster.close()


# -- the retry policy itself -------------------------------------------------------------------


def test_the_bounded_retry_sends_again_after_a_connection_error_within_its_budget() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("reset")
        return "answer"

    assert bounded_retry(60.0, asyncio=False).call_with_retry(flaky, lambda _e: None) == "answer"
    assert len(calls) == 2

    def refused() -> str:
        calls.append(1)
        raise redis.exceptions.ConnectionError("refused")

    # A call whose budget is spent (a timeout uses it all) is not sent again.
    calls.clear()
    with pytest.raises(redis.exceptions.ConnectionError):
        bounded_retry(0.0, asyncio=False).call_with_retry(refused, lambda _e: None)
    assert len(calls) == 1

    def answered_with_an_error() -> str:
        calls.append(1)
        raise redis.exceptions.ResponseError("WRONGTYPE")

    calls.clear()
    with pytest.raises(redis.exceptions.ResponseError):
        bounded_retry(60.0, asyncio=False).call_with_retry(answered_with_an_error, lambda _e: None)
    assert len(calls) == 1


def test_the_async_bounded_retry_sends_again_after_a_connection_error() -> None:
    calls: list[int] = []
    failed: list[str] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("reset")
        return "answer"

    async def on_failure(error: Exception) -> None:
        failed.append(str(error))

    retry = bounded_retry(60.0, asyncio=True)
    assert asyncio.run(retry.call_with_retry(flaky, on_failure)) == "answer"
    assert (len(calls), failed) == (2, ["reset"])
    calls.clear()
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(bounded_retry(0.0, asyncio=True).call_with_retry(flaky, on_failure))
    assert len(calls) == 1


class _Flaky:
    """A call that fails with a connection error ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise redis.exceptions.ConnectionError(f"reset {self.attempts}")
        return "answer"


def _run_retry(
    flavour: str,
    do: _Flaky,
    fail: Any,
    *,
    with_failure_count: bool,
    pauses: list[float],
    is_retryable: Any = None,
) -> str:
    """``bounded_retry(60)``'s call_with_retry, its pauses noted instead of slept.

    Checks too that the call leaves no retry deadline behind in its context.
    """
    retry = bounded_retry(60.0, asyncio=flavour == "asyncio")
    if flavour == "sync":
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "sleep", pauses.append)
            try:
                answer: str = retry.call_with_retry(
                    do, fail, is_retryable, with_failure_count=with_failure_count
                )
            finally:
                assert clients._DEADLINE.get() is None
            return answer

    async def attempt() -> str:
        return do()

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    async def main() -> str:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(asyncio, "sleep", pause)
            try:
                answer: str = await retry.call_with_retry(
                    attempt, fail, is_retryable, with_failure_count=with_failure_count
                )
            finally:
                assert clients._DEADLINE.get() is None  # in the task that made the call
            return answer

    return asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_the_bounded_retry_counts_each_failure_pauses_and_tells_the_failure_hook(
    flavour: str,
) -> None:
    seen: list[tuple[str, int]] = []
    pauses: list[float] = []
    flaky = _Flaky(3)
    answer = _run_retry(
        flavour,
        flaky,
        lambda error, count: seen.append((str(error), count)),
        with_failure_count=True,
        pauses=pauses,
    )
    assert (answer, flaky.attempts) == ("answer", 4)
    assert seen == [("reset 1", 1), ("reset 2", 2), ("reset 3", 3)]
    # A pause before each retry: exponential from 10 ms with full jitter, below its cap.
    assert len(pauses) == 3
    assert all(0 < p <= clients.BACKOFF_BASE_S * 2**n for n, p in enumerate(pauses, start=1))

    plain: list[str] = []
    flaky = _Flaky(2)
    answer = _run_retry(
        flavour, flaky, lambda error: plain.append(str(error)), with_failure_count=False,
        pauses=pauses,
    )  # fmt: skip
    assert (answer, plain) == ("answer", ["reset 1", "reset 2"])


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_the_bounded_retry_gives_up_after_ten_retries(flavour: str) -> None:
    failed: list[str] = []
    pauses: list[float] = []
    always = _Flaky(1_000)
    with pytest.raises(redis.exceptions.ConnectionError, match="reset 11"):
        _run_retry(flavour, always, failed.append, with_failure_count=False, pauses=pauses)
    assert always.attempts == 1 + clients.RETRIES == 11
    assert (len(failed), len(pauses)) == (11, 10)


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_the_bounded_retry_sends_again_only_what_the_caller_calls_retryable(
    flavour: str,
) -> None:
    failed: list[str] = []

    def note(error: Exception) -> None:
        failed.append(str(error))

    pauses: list[float] = []
    refused = _Flaky(1)
    with pytest.raises(redis.exceptions.ConnectionError, match="reset 1"):
        _run_retry(flavour, refused, note, with_failure_count=False, pauses=pauses,
                   is_retryable=lambda _error: False)  # fmt: skip
    assert (refused.attempts, failed, pauses) == (1, [], [])
    allowed = _Flaky(1)
    answer = _run_retry(flavour, allowed, note, with_failure_count=False, pauses=pauses,
                        is_retryable=lambda _error: True)  # fmt: skip
    assert (answer, allowed.attempts, failed) == ("answer", 2, ["reset 1"])


def test_the_next_pause_keeps_to_the_retry_count_and_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from redis.backoff import ConstantBackoff

    monkeypatch.setattr(clients, "_monotonic", lambda: 100.0)
    half = ConstantBackoff(0.5)
    far = 1e9
    assert clients._next_pause(half, 10, 10, far) == 0.5  # the tenth retry is allowed
    assert clients._next_pause(half, 10, 11, far) is None  # an eleventh is not
    assert clients._next_pause(half, 0, 1, far) is None  # no retries at all
    assert clients._next_pause(half, -1, 1_000, far) == 0.5  # a negative count: no limit
    # A pause that would end at the deadline gives up; one that ends before it waits.
    assert clients._next_pause(half, 10, 1, 100.5) is None
    assert clients._next_pause(half, 10, 1, 100.5001) == 0.5


def test_a_retry_inside_a_retry_keeps_to_the_outer_deadline() -> None:
    # redis-py retries a connect inside a command's retry: once the command
    # is being retried, the connect's own loop keeps to the command's deadline
    # instead of starting a budget of its own.
    outer = bounded_retry(60.0, asyncio=False)
    inner = bounded_retry(3600.0, asyncio=False)
    attempts: list[int] = []
    seen: list[float | None] = []

    def connect() -> None:
        seen.append(clients._DEADLINE.get())

    def command() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise redis.exceptions.ConnectionError("stale connection")
        inner.call_with_retry(connect, lambda _e: None)
        return "answer"

    before = time.monotonic()
    assert outer.call_with_retry(command, lambda _e: None) == "answer"
    assert len(seen) == 1
    deadline = seen[0]
    assert deadline is not None
    assert before < deadline <= time.monotonic() + 60.0
    assert clients._DEADLINE.get() is None  # reset when the outer call returned
