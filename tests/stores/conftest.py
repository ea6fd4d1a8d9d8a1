"""The ``store`` fixture: every store, sync and async, behind one synchronous driver."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_driver import FACTORIES, REDIS_TOPOLOGIES, StoreDriver, redis_built

from redis_harness import engines_or_fail as redis_engines

REDIS_PARAMS = {
    f"{kind}redis-{topology}-{engine.id}": (topology, engine, kind == "async-")
    for engine in redis_engines()
    for topology in REDIS_TOPOLOGIES
    for kind in ("", "async-")
}


@pytest.fixture(params=sorted(FACTORIES) + sorted(REDIS_PARAMS))
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[StoreDriver]:
    """Every store kind, driven synchronously, on a manual clock."""
    if request.param in REDIS_PARAMS:
        topology, engine, is_async = REDIS_PARAMS[request.param]
        built = redis_built(
            topology, engine, request.getfixturevalue("redis_farm"), clock, is_async=is_async
        )
    else:
        built = FACTORIES[request.param](tmp_path, clock)
    driver = StoreDriver(request.param, built, clock)
    try:
        yield driver
    finally:
        closing = built.close()
        if inspect.isawaitable(closing):
            driver.run(closing)
        driver.close()
