"""The ``store`` fixture: every store, sync and async, behind one synchronous driver."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_driver import (
    DYNAMODB_LAYOUTS,
    FACTORIES,
    REDIS_TOPOLOGIES,
    StoreDriver,
    dynamodb_built,
    redis_built,
)

from redis_harness import engines_or_fail as redis_engines

REDIS_PARAMS = {
    f"{kind}redis-{topology}-{engine.id}": (topology, engine, kind == "async-")
    for engine in redis_engines()
    for topology in REDIS_TOPOLOGIES
    for kind in ("", "async-")
}
DYNAMODB_PARAMS = {
    f"{kind}dynamodb-{layout}": (layout, kind == "async-")
    for layout in DYNAMODB_LAYOUTS
    for kind in ("", "async-")
}


@pytest.fixture(params=sorted(FACTORIES) + sorted(REDIS_PARAMS) + sorted(DYNAMODB_PARAMS))
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[StoreDriver]:
    """Every store kind, driven synchronously, on a manual clock."""
    if request.param in REDIS_PARAMS:
        topology, engine, is_async = REDIS_PARAMS[request.param]
        built = redis_built(
            topology, engine, request.getfixturevalue("redis_farm"), clock, is_async=is_async
        )
    elif request.param in DYNAMODB_PARAMS:
        layout, is_async = DYNAMODB_PARAMS[request.param]
        built = dynamodb_built(
            layout, request.getfixturevalue("moto_server"), clock, is_async=is_async
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
