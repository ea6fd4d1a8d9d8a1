"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import redis_harness as harness
from dynamodb_harness import MotoServer
from onceonly.runtime import LAMBDA_CONTEXT
from testkit import ManualClock, RedisFarm

# -- Hypothesis ----------------------------------------------------------------------

# The examples stay as many and as large as the properties need; what no profile
# does is judge wall time, which a busy machine (a benchmark beside the suite, a
# loaded CI runner) stretches without anything being wrong. ``ci`` is the
# default and what scripts/test selects; ``thorough`` is for a long local run.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A run started as a background job (``bash .ci/run &`` in a script) inherits
# SIGINT ignored, and Python then keeps it ignored: the Ctrl-C tests would see
# no KeyboardInterrupt, and the processes they start would inherit the ignoring.
# The run takes Ctrl-C as an interpreter started in a terminal does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def no_lambda_context_left() -> Iterator[None]:
    """Fail a test that leaves a Lambda context registered in the main thread.

    ``config.register_lambda_context`` lasts until the next registration, as in
    Powertools; a test that leaves one behind gives every later test's claims
    that context's (by then run down) remaining time.
    """
    yield
    if LAMBDA_CONTEXT.get() is not None:
        LAMBDA_CONTEXT.set(None)
        pytest.fail(
            "this test left a Lambda context registered: run the invocation in "
            "contextvars.copy_context().run(...)"
        )


@pytest.fixture(autouse=True)
def sigint_kept() -> Iterator[None]:
    """Fail a test that leaves the test process's Ctrl-C handler changed.

    A process started later inherits an ignored SIGINT, and a handler other
    than Python's own turns a later test's Ctrl-C into something else.
    """
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"this test left SIGINT's handler changed ({before!r} -> {after!r})")


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


# A node id that holds an object's address (``<object object at 0x7f...>``) differs
# from run to run: ``pytest <node id>`` (a rerun, a mutation pass) cannot find it.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unstable = [item.nodeid for item in items if _ADDRESS.search(item.nodeid)]
    if unstable:
        raise pytest.UsageError(
            f"test ids that change from run to run (give them ids=): {', '.join(unstable)}"
        )


# -- DynamoDB through moto's server ------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's server on a free loopback port, shared by the whole session."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()
