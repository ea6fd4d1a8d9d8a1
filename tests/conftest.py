"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import redis_harness as harness
from dynamodb_harness import MotoServer
from testkit import ManualClock, RedisFarm


@pytest.fixture
def clock() -> ManualClock:
    """A fresh manual clock, started at a fixed instant."""
    return ManualClock()


# -- real Redis / Valkey servers ---------------------------------------------------


@pytest.fixture(scope="session")
def redis_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFarm]:
    """Lazily started Redis / Valkey topologies shared by the whole session."""
    farm = RedisFarm(tmp_path_factory.mktemp("redis"))
    try:
        yield farm
    finally:
        farm.close()


def redis_engines() -> list[harness.Engine]:
    """The engines of this machine (found once). In CI both must exist; anywhere, one must."""
    return harness.engines_or_fail()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # ``redis_engine``: every engine; ``tls_engine``: every engine built with TLS.
    if "redis_engine" in metafunc.fixturenames:
        engines = redis_engines()
        metafunc.parametrize("redis_engine", engines, ids=[e.id for e in engines])
    if "tls_engine" in metafunc.fixturenames:
        engines = [e for e in redis_engines() if e.tls] or [harness.NO_TLS_ENGINE]
        metafunc.parametrize("tls_engine", engines, ids=[e.id for e in engines])


# -- DynamoDB through moto's server ------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server on a free loopback port, shared by the whole session."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()
