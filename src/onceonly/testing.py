"""Helpers for testing your own idempotent handlers and functions, on any store.

A test of an idempotent handler delivers the same event twice, as an
at-least-once queue would, and checks three things: both deliveries got the
same answer, the side effect happened once, and the store holds one completed
record for the key::

    from onceonly.testing import assert_once, assert_one_record, invoke_twice

    def test_charge_runs_once():
        first, second = invoke_twice(handler, event)
        assert first == second
        assert_once(charges)
        assert_one_record(store, handler.key_for(event), result=first)

To test code around a handler without idempotency (every call runs), switch
every decorator off for a block with :func:`disabled`, or set
``ONCEONLY_DISABLED=1`` (or Powertools' ``POWERTOOLS_IDEMPOTENCY_DISABLED=1``),
also after import, e.g. with pytest's ``monkeypatch.setenv``.

Everything here works with every store (memory, SQLite, Redis, DynamoDB
through moto); the ``a``-prefixed twins are for ``async def`` handlers and
async stores.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
import uuid
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .metrics import Event
from .records import Record, Status, decode_outcome
from .runtime import SWITCH

__all__ = [
    "LambdaContext",
    "Twice",
    "aassert_one_record",
    "ainvoke_twice",
    "assert_once",
    "assert_one_record",
    "assert_ran_once",
    "disabled",
    "invoke_twice",
]

_MISSING: Any = object()


@dataclass
class LambdaContext:
    """A stand-in for the context AWS Lambda passes to a handler.

    It has the attributes handlers and Powertools read. The remaining time
    counts down from ``timeout_ms`` on the real clock; onceonly uses it as the
    lease of the claim.

    Attributes:
        function_name: The function's name.
        timeout_ms: Time the invocation has when the context is made.
        memory_limit_in_mb: As Lambda reports it.
        aws_request_id: A fresh UUID unless given.
    """

    function_name: str = "test-function"
    timeout_ms: int = 30_000
    memory_limit_in_mb: int = 128
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/test-function"
    log_stream_name: str = "2024/01/01/[$LATEST]test"
    _started: float = field(default_factory=time.monotonic, init=False, repr=False)

    @property
    def invoked_function_arn(self) -> str:
        """The ARN Lambda would report for this function."""
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before this invocation would time out."""
        spent = int((time.monotonic() - self._started) * 1000)
        return max(0, self.timeout_ms - spent)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Switch idempotency off for every decorator and batch, inside the block.

    Each call runs its function unprotected, with an ``OnceOnlyWarning``, as
    with ``ONCEONLY_DISABLED=1``; nothing is read from or written to a store.
    Blocks nest, and the switch is process-wide (every thread), like the
    variable. As a pytest fixture::

        @pytest.fixture
        def no_idempotency():
            with disabled():
                yield

    Yields:
        None.
    """
    SWITCH.hold(1)
    try:
        yield
    finally:
        SWITCH.hold(-1)


class Twice(NamedTuple):
    """The results of two deliveries of one event."""

    first: Any
    second: Any


def _not_async(handler: Callable[..., Any], name: str) -> None:
    if inspect.iscoroutinefunction(handler):
        raise TypeError(f"{name} is for sync handlers; await a{name}(...) for an async one")


def invoke_twice(handler: Callable[..., Any], event: Any, context: Any = None) -> Twice:
    """Deliver the same event to a handler twice, as a redelivery would; return both results.

    Each delivery gets its own deep copy of ``event``, as a queue hands each
    delivery a freshly decoded message, so a handler that changes its event
    cannot change the second delivery.

    Args:
        handler: A handler ``handler(event, context)`` (``@idempotent``), or
            a one-argument function (``@idempotent_function(data=...)``) when
            ``context`` is None and it takes one argument.
        event: The event or payload.
        context: The Lambda context (e.g. :class:`LambdaContext`), or None.

    Returns:
        ``Twice(first, second)``; unpack it as ``first, second = ...``.

    Raises:
        TypeError: The handler is ``async def`` (use :func:`ainvoke_twice`).
        Exception: Whatever a delivery raised (the second is not made then).
    """
    _not_async(handler, "invoke_twice")
    args = _arguments(handler, context)
    first = handler(copy.deepcopy(event), *args)
    second = handler(copy.deepcopy(event), *args)
    return Twice(first, second)


async def ainvoke_twice(handler: Callable[..., Any], event: Any, context: Any = None) -> Twice:
    """Deliver the same event to an ``async def`` handler twice; return both results.

    Args:
        handler: An async handler or function, as for :func:`invoke_twice`.
        event: The event or payload (deep-copied for each delivery).
        context: The Lambda context, or None.

    Returns:
        ``Twice(first, second)``.

    Raises:
        Exception: Whatever a delivery raised.
    """
    args = _arguments(handler, context)
    first = await handler(copy.deepcopy(event), *args)
    second = await handler(copy.deepcopy(event), *args)
    return Twice(first, second)


def _arguments(handler: Callable[..., Any], context: Any) -> tuple[Any, ...]:
    # A Lambda handler takes (event, context); a function guarded by
    # idempotent_function may take the payload alone.
    if context is not None:
        return (context,)
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return (None,)
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) == 1 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return ()
    return (None,)


def assert_once(side_effects: Any, *, what: str = "side effect") -> None:
    """Assert that a side effect happened exactly once.

    Args:
        side_effects: What the test recorded: a list (or any sized
            collection) of effects, a count, or a ``unittest.mock`` mock.
        what: Names the effect in the failure message.

    Raises:
        AssertionError: It happened never or more than once.
        TypeError: ``side_effects`` is none of those kinds.
    """
    if isinstance(side_effects, bool):
        raise TypeError("assert_once takes a collection, a count or a mock, not a bool")
    if isinstance(side_effects, int):
        count = side_effects
    elif isinstance(getattr(side_effects, "call_count", None), int):
        count = side_effects.call_count
    elif isinstance(side_effects, Sized):
        count = len(side_effects)
    else:
        raise TypeError(
            f"assert_once takes a collection, a count or a mock, got {type(side_effects).__name__}"
        )
    if count != 1:
        shown = f": {side_effects!r}" if isinstance(side_effects, Sized) else ""
        raise AssertionError(f"expected the {what} exactly once, it happened {count} times{shown}")


def assert_ran_once(func: Any) -> None:
    """Assert that an idempotent function ran its body exactly once in this process.

    It reads the decorated function's counters (``func.stats``): replays,
    cache hits and rejected duplicates do not count as runs. The counters
    live as long as the function; reset them between tests with
    ``func.stats.reset()``.

    Args:
        func: A function decorated by ``idempotent`` or ``idempotent_function``.

    Raises:
        AssertionError: It ran never or more than once.
        TypeError: ``func`` is not decorated by onceonly.
    """
    stats = getattr(func, "stats", None)
    if stats is None or not callable(getattr(stats, "snapshot", None)):
        raise TypeError(f"{func!r} is not decorated by onceonly (it has no .stats)")
    ran = stats[Event.EXECUTED]
    if ran != 1:
        raise AssertionError(
            f"expected one execution, counted {ran} (all counters: {stats.snapshot()})"
        )


def _check_record(record: Record | None, key: str, status: Status, result: Any) -> Record:
    if record is None:
        raise AssertionError(f"no live record under key {key}")
    if record.status is not status:
        raise AssertionError(
            f"the record under key {key} is {record.status.name}, expected {status.name}"
        )
    if result is not _MISSING:
        if record.outcome is None:
            raise AssertionError(f"the record under key {key} holds no outcome")
        stored = decode_outcome(record.outcome)
        if stored != result:
            raise AssertionError(
                f"the record under key {key} holds {stored!r}, expected {result!r}"
            )
    return record


def assert_one_record(
    store: Any, key: str, *, status: Status = Status.COMPLETED, result: Any = _MISSING
) -> Record:
    """Assert that a sync store holds one live record under ``key``, in ``status``.

    Args:
        store: Any sync store (``MemoryStore``, ``SQLiteStore``,
            ``RedisStore``, ``DynamoDBStore``...).
        key: The idempotency key: ``handler.key_for(event, context)`` tells it.
        status: The status it must have (COMPLETED by default).
        result: If given, the stored outcome must decode to this JSON value
            (the result as its serializer stores it).

    Returns:
        The record.

    Raises:
        AssertionError: No live record, another status, or another outcome.
        TypeError: The store is async (use :func:`aassert_one_record`).
    """
    answer = store.get(key)
    if inspect.isawaitable(answer):
        close = getattr(answer, "close", None)
        if callable(close):
            close()  # never awaited: do not leave a warning behind
        raise TypeError("this store is async: use `await aassert_one_record(...)`")
    return _check_record(answer, key, status, result)


async def aassert_one_record(
    store: Any, key: str, *, status: Status = Status.COMPLETED, result: Any = _MISSING
) -> Record:
    """Assert that an async store holds one live record under ``key``, in ``status``.

    Args:
        store: Any async store (``AsyncMemoryStore``, ``AsyncDynamoDBStore``...).
        key: As for :func:`assert_one_record`.
        status: As for :func:`assert_one_record`.
        result: As for :func:`assert_one_record`.

    Returns:
        The record.

    Raises:
        AssertionError: No live record, another status, or another outcome.
    """
    return _check_record(await store.get(key), key, status, result)
