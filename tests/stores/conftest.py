"""The ``store`` fixture: every store, sync and async, behind one synchronous driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_driver import FACTORIES, StoreDriver


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[StoreDriver]:
    """Every store kind, driven synchronously, on a manual clock."""
    built = FACTORIES[request.param](tmp_path, clock)
    driver = StoreDriver(request.param, built, clock)
    try:
        yield driver
    finally:
        built.close()
        driver.close()
