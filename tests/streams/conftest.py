"""Fixtures of the stream tests: a real client per topology (standalone, cluster, Sentinel)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import redis_harness as harness
from testkit import RedisFarm

TOPOLOGIES = ("standalone", "cluster", "sentinel")


def make_client(topology: str, engine: harness.Engine, farm: RedisFarm) -> Any:
    """A sync redis-py client of the farm's server of that topology."""
    if topology == "standalone":
        server = farm.standalone(engine)
        return redis.Redis(host=server.client_host(), port=server.port)
    if topology == "cluster":
        node = farm.cluster(engine).nodes[0]
        return redis.RedisCluster(host=node.client_host(), port=node.port)
    sentinel = redis.Sentinel(farm.sentinel(engine).addresses(), socket_timeout=5)
    return sentinel.master_for(harness.SERVICE, socket_timeout=5)


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    """Each Redis topology in turn."""
    return str(request.param)


@pytest.fixture
def client(topology: str, redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[Any]:
    """A sync client of that topology on that engine."""
    c = make_client(topology, redis_engine, redis_farm)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def standalone(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[redis.Redis]:
    """A sync client of the engine's shared standalone server."""
    c = make_client("standalone", redis_engine, redis_farm)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(redis_engine: harness.Engine, redis_farm: RedisFarm) -> Iterator[redis.RedisCluster]:
    """A sync client of the engine's shared 3-primary cluster."""
    c = make_client("cluster", redis_engine, redis_farm)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=("standalone", "cluster"))
def standalone_or_cluster(
    request: pytest.FixtureRequest, redis_engine: harness.Engine, redis_farm: RedisFarm
) -> Iterator[Any]:
    """A sync client of the standalone server, then of the cluster."""
    c = make_client(str(request.param), redis_engine, redis_farm)
    try:
        yield c
    finally:
        c.close()
