"""A URL's password and query never reach a printed or raised message (issue 10, item 8)."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from onceonly import IdempotencyConfigError
from onceonly.cli import mask_url, render_doctor
from onceonly.doctor import Check
from onceonly.stores.redis import AsyncRedisStore, RedisStore
from onceonly.stores.redis.clients import redacted_url
from onceonly.stores.url import store_from_url


def everything_said(exc: BaseException) -> str:
    """The error as a logger or a traceback would show it: every chained cause and context."""
    return "".join(traceback.format_exception(exc))


# -- item 8: URLs ---------------------------------------------------------------------------

# (url, the password text, what the masked URL shows)
URLS = [
    ("redis://app:p@ss@host:6379/0", "p@ss", "redis://app:***@host:6379/0"),
    ("redis://app:p@ss@word@host", "p@ss@word", "redis://app:***@host"),
    ("redis://app:pa/ss@host:6379/0", "pa/ss", "redis://app:***@host:6379/0"),
    ("redis://app:pa#ss@host:6379/0", "pa#ss", "redis://app:***"),
    ("redis://app:pa?ss@host:6379/0", "pa?ss", "redis://app:***"),
    ("redis://app:pa:ss@host:6379", "pa:ss", "redis://app:***@host:6379"),
    ("redis://app:pa%40s%2Fs@host", "pa%40s%2Fs", "redis://app:***@host"),
    ("redis://:only-pass@host", "only-pass", "redis://:***@host"),
    ("rediss://only-pass@host:6380", "only-pass", "rediss://***@host:6380"),
    (
        "redis+sentinel://app:s/e#c?r@t@a:26379,b:26380,[::1]:26381/mymaster/0",
        "s/e#c?r@t",
        "redis+sentinel://app:***",
    ),
    (
        "redis+sentinel://app:se:cr@t@a:26379,b:26380/mymaster/0",
        "se:cr@t",
        "redis+sentinel://app:***@a:26379,b:26380/mymaster/0",
    ),
    ("redis://host:6379/0?password=qu3ry-pw&db=1", "qu3ry-pw", "redis://host:6379/0?***"),
    ("redis://host/0?password=qu@ry-pw", "qu@ry-pw", "redis://***"),
    ("redis://app:pw-one@host/0?socket_timeout=1#frag", "pw-one", "redis://app:***@host/0?***"),
    ("unix://app:so/ck#pw@/tmp/redis.sock?db=0", "so/ck#pw", "unix://app:***"),
]


@pytest.mark.parametrize(("url", "password", "shown"), URLS, ids=[u for u, _, _ in URLS])
def test_masked_urls_show_no_password_and_no_query(url: str, password: str, shown: str) -> None:
    for mask in (mask_url, redacted_url):
        masked = mask(url)
        assert masked == shown
        assert password not in masked


def test_doctor_header_shows_no_password() -> None:
    checks = [Check("connection", "error", "refused")]
    url = "redis://app:p@ss/w#rd@127.0.0.1:6379/0?password=p@ss/w#rd"
    header = render_doctor(checks, url=url, prefix="p").splitlines()[0]
    assert header == "onceonly doctor: redis://app:*** (prefix p)"
    url = "redis://app:p@ss/w:rd@127.0.0.1:6379/0?password=qu3ry"
    header = render_doctor(checks, url=url, prefix="p").splitlines()[0]
    assert header == "onceonly doctor: redis://app:***@127.0.0.1:6379/0?*** (prefix p)"


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
@pytest.mark.parametrize(
    "url",
    [
        "redis://app:s3c/r3t@127.0.0.1:6379/0",
        "redis://app:9753/r3t@127.0.0.1:6379",  # parses as port 9753 and path /r3t@...
        "redis://app:s3c#r3t@127.0.0.1:abc/0",
        "redis://app:s3c?r3t@127.0.0.1:abc/0",
        "redis+sentinel://app:s3c/r3t@127.0.0.1:26379/svc",
        "redis://127.0.0.1:6379/0?password=s3c@r3t",
    ],
)
def test_from_url_refuses_a_url_split_inside_its_password(cls: Any, url: str) -> None:
    # redis-py would split such a URL inside the password (and connect to a host
    # named after it); the error says what to do and quotes no piece of it.
    with pytest.raises(IdempotencyConfigError, match="percent-encode") as info:
        cls.from_url(url)
    said = everything_said(info.value)
    for piece in ("s3c", "r3t", "9753"):
        assert piece not in said, said


@pytest.mark.parametrize("cls", [RedisStore, AsyncRedisStore], ids=["sync", "async"])
def test_from_url_takes_percent_encoded_and_raw_at_sign_passwords(cls: Any) -> None:
    for url, password in (
        ("redis://app:s3c%2Fr%23e%3Ft%40x@127.0.0.1:6379/0", "s3c/r#e?t@x"),
        ("redis://app:s3c@ret@127.0.0.1:6379/0", "s3c@ret"),  # the last '@' ends it
        ("redis://127.0.0.1:6379/0?password=s3c%40ret", "s3c@ret"),
    ):
        store = cls.from_url(url)
        assert store.client.connection_pool.connection_kwargs["password"] == password


def test_dynamodb_store_url_errors_show_no_query() -> None:
    with pytest.raises(IdempotencyConfigError) as info:
        store_from_url("dynamodb://orders?region=eu-west-1&aws_secret_access_key=s3cret")
    message = str(info.value)
    assert "s3cret" not in message
    assert "aws_secret_access_key" in message
