"""What ``import onceonly`` loads: nothing optional until it is used (issue 14, cold start).

Each check runs in a fresh interpreter (a subprocess with this test's
``sys.path``) and looks at ``sys.modules`` afterwards: a behaviour, not a
timing. The public names stay importable from where they always were.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Loaded only by the features that need them: asyncio by the async drivers and
# stores, sqlite3 by SQLiteStore, concurrent.futures by the threaded stores,
# jmespath by a configuration that selects a key.
NOT_AT_IMPORT = [
    "asyncio",
    "sqlite3",
    "concurrent.futures",
    "jmespath",
    "onceonly._async",
    "onceonly.decorators",
    "onceonly.config",
    "onceonly.batch",
    "onceonly.stores.sqlite",
    "onceonly.stores.redis.async_store",
    "redis",
]
NOT_IN_A_SYNC_PROGRAM = [
    "asyncio",
    "sqlite3",
    "concurrent.futures",
    "onceonly._async",
    "onceonly.stores.sqlite",
    "onceonly.stores.redis.async_store",
]


def _loaded(code: str, names: list[str]) -> list[str]:
    """Run ``code`` in a fresh interpreter; the ones of ``names`` then in sys.modules."""
    script = (
        f"import sys\nsys.path[:0] = {[p for p in sys.path if p]!r}\n{code}\n"
        f"import json\nprint(json.dumps(sorted(set({names!r}) & set(sys.modules))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_importing_onceonly_and_the_redis_store_loads_nothing_optional() -> None:
    assert _loaded("import onceonly, onceonly.stores.redis", NOT_AT_IMPORT) == []


def test_a_sync_program_never_loads_asyncio_or_sqlite() -> None:
    code = """
from onceonly import IdempotencyConfig, idempotent_function
from onceonly.batch import process_batch
from onceonly.stores.memory import MemoryStore
store = MemoryStore()
@idempotent_function(store=store, data="order", config=IdempotencyConfig(event_key_jmespath="id"))
def handle(order):
    return order["id"]
assert handle({"id": "a"}) == "a" and handle({"id": "a"}) == "a"
def one(record):
    return record["id"]
result = process_batch([{"id": "b"}, {"id": "c"}], one, store=store,
                       config=IdempotencyConfig(event_key_jmespath="id"))
assert [item.value for item in result.items] == ["b", "c"]
"""
    assert _loaded(code, NOT_IN_A_SYNC_PROGRAM) == []


def test_an_async_function_loads_the_async_driver_when_decorated_and_run() -> None:
    code = """
import asyncio
from onceonly import idempotent_function
from onceonly.stores import AsyncMemoryStore
@idempotent_function(store=AsyncMemoryStore(), key=lambda x: str(x))
async def double(x):
    return 2 * x
assert asyncio.run(double(4)) == 8
"""
    assert _loaded(code, ["onceonly._async"]) == ["onceonly._async"]


MODULES = ["onceonly", "onceonly.stores", "onceonly.stores.redis"]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_imports_from_where_it_always_did(module: str) -> None:
    # Each name in a fresh interpreter, so no earlier import has loaded its module.
    names = __import__(module, fromlist=["__all__"]).__all__
    code = "\n".join(f"from {module} import {name}" for name in names)
    assert _loaded(code, []) == []
    for name in names:
        assert _loaded(f"from {module} import {name}", []) == []


@pytest.mark.parametrize("module", MODULES)
def test_the_lazy_names_are_the_defining_modules_objects(module: str) -> None:
    import importlib

    package = importlib.import_module(module)
    for name in package.__all__:
        value = getattr(package, name)
        home = getattr(value, "__module__", None)
        if home is not None and home != "typing" and home.startswith("onceonly"):
            assert getattr(importlib.import_module(home), name) is value
        assert name in dir(package)
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018 - the attribute lookup is the test


def test_from_onceonly_import_star_gives_every_name() -> None:
    code = """
from onceonly import *
names = dir()
missing = [n for n in __import__("onceonly").__all__ if n not in names]
assert not missing, missing
"""
    assert _loaded(code, []) == []
