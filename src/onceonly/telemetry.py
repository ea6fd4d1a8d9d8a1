"""OpenTelemetry for idempotent calls: a span per call, a counter per outcome, store latency.

Optional (``pip install 'onceonly[otel]'``, the API package only). onceonly
never imports OpenTelemetry itself: its calls are traced once the program has
imported ``opentelemetry.trace`` (setting up an SDK, or an auto-instrumentation
agent, does), and a program that has not pays one dictionary lookup per call.

Each call through ``idempotent``, ``idempotent_function`` or an HTTP
middleware gets a span ``onceonly.call``, current while the function runs
(its own spans are children of it), with:

- attributes ``onceonly.function``, ``onceonly.store`` (the store's class
  name), ``onceonly.key_digest`` (the key's last 16 characters: a hash, never
  payload), and when it ends ``onceonly.outcome`` (an :class:`Outcome` value),
  ``onceonly.takeover`` and ``onceonly.round_trips`` (the store operations of
  the call: claim, complete, release);
- an event per step: ``claim`` (``onceonly.claimed``, ``onceonly.takeover``
  or ``onceonly.found``), ``run``, ``complete`` (``onceonly.stored``),
  ``release`` (``onceonly.released``), ``wait`` (``onceonly.wait_ms``); a step
  that raised carries ``error.type``;
- status ERROR, and the exception recorded, when the call raises.

Metrics (meter ``onceonly``): the counter ``onceonly.calls`` by
``onceonly.function``, ``onceonly.outcome`` and ``onceonly.store``; the
histogram ``onceonly.store.duration`` (seconds) of each store operation by
``onceonly.operation``, ``onceonly.store`` and, when it raised, ``error.type``.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Generator
from types import TracebackType
from typing import Any, TypeVar

from .engine import Claim, Complete, Execute, Release, Sleep, Step
from .errors import (
    IdempotencyAlreadyInProgressError,
    IdempotencyKeyReuseError,
    IdempotencyStoreError,
)
from .metrics import key_digest
from .records import Acquired, Found, Status

__all__ = ["CallWatch", "Outcome", "Telemetry", "Watcher", "telemetry_for"]

T = TypeVar("T")

# The module whose presence means the program uses OpenTelemetry.
_TRACE_MODULE = "opentelemetry.trace"
_SCOPE = "onceonly"


class Outcome(enum.Enum):
    """How an idempotent call ended, as the span and the ``onceonly.calls`` counter say."""

    EXECUTED = "executed"  # ran under its claim and returned
    REPLAYED = "replayed"  # got the stored outcome (from the store or the local cache)
    IN_PROGRESS = "in_progress"  # refused: another execution holds the key
    KEY_REUSE = "key_reuse"  # refused: the key was used with another payload
    STORE_ERROR = "store_error"  # the store failed before the function could run
    UNPROTECTED = "unprotected"  # ran without a claim (no key, or the store down with "run")
    RELEASED = "released"  # the function raised (or its result could not be stored): released
    ERROR = "error"  # anything else raised before the function ran (a cancellation)


class _Instruments:
    """The tracer and the two instruments, made once per process (lazily)."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, trace  # the program has imported it

        version = _version()
        self.trace = trace
        self.context = context
        self.tracer = trace.get_tracer(_SCOPE, version)
        meter = metrics.get_meter(_SCOPE, version)
        self.calls = meter.create_counter(
            "onceonly.calls", unit="{call}", description="Idempotent calls, by outcome"
        )
        self.store_duration = meter.create_histogram(
            "onceonly.store.duration",
            unit="s",
            description="How long each store operation of an idempotent call took",
        )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onceonly")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return ""


_instruments: _Instruments | None = None


def telemetry_for(function: str, store: str) -> Telemetry | None:
    """The telemetry of one function's calls, or None while OpenTelemetry is not in use.

    Args:
        function: The function's (or middleware's) name.
        store: The store's class name.

    Returns:
        A :class:`Telemetry`, once ``opentelemetry.trace`` has been imported; else None.
    """
    global _instruments
    if _TRACE_MODULE not in sys.modules:
        return None
    if _instruments is None:
        _instruments = _Instruments()
    return Telemetry(_instruments, function, store)


class Watcher:
    """One function's (or middleware's) way to its telemetry, found on the first call that can.

    Until the program imports OpenTelemetry, :meth:`watch` costs one dict
    lookup and returns None.
    """

    __slots__ = ("function", "store", "telemetry")

    def __init__(self, function: str, store: str) -> None:
        self.function = function
        self.store = store
        self.telemetry: Telemetry | None = None

    def watch(self, key: str | None) -> CallWatch | None:
        """A call's span (a context manager), or None while OpenTelemetry is not in use.

        Args:
            key: The call's idempotency key, or None when it runs without one.
        """
        telemetry = self.telemetry
        if telemetry is None:
            telemetry = self.telemetry = telemetry_for(self.function, self.store)
            if telemetry is None:
                return None
        return CallWatch(telemetry, key)

    def flow(self, steps: Generator[Step, Any, T], key: str) -> Generator[Step, Any, T]:
        """``steps`` as they are while OpenTelemetry is not in use, else watched (a span).

        Args:
            steps: A call's flow (``engine.flow``).
            key: Its idempotency key.
        """
        watch = self.watch(key)
        return steps if watch is None else watch.flow(steps)


class Telemetry:
    """The tracer, instruments and attributes of one function's (or middleware's) calls."""

    def __init__(self, instruments: _Instruments, function: str, store: str) -> None:
        self._instruments = instruments
        self.function = function
        self.store = store
        # Attribute dicts made once: the SDK copies what it keeps.
        self._operation_attributes = {
            name: {"onceonly.operation": name, "onceonly.store": store}
            for name in ("claim", "complete", "release")
        }
        self._outcome_attributes = {
            outcome: {
                "onceonly.function": function,
                "onceonly.outcome": outcome.value,
                "onceonly.store": store,
            }
            for outcome in Outcome
        }


class CallWatch:
    """One call's span: :meth:`flow` opens it, follows the steps and ends it with the outcome.

    A call that runs without a key (no flow) uses it as a context manager instead.
    """

    __slots__ = ("_key", "_ran", "_round_trips", "_span", "_takeover", "_telemetry", "_token")

    def __init__(self, telemetry: Telemetry, key: str | None) -> None:
        self._telemetry = telemetry
        self._key = key
        self._ran: bool | None = None  # None: the function did not run; else protected or not
        self._takeover = False
        self._round_trips = 0
        self._span: Any = None
        self._token: Any = None

    def _open(self) -> None:
        # Started and made current where the driver runs the flow (its thread or
        # task), so the function's own spans are children of this one.
        telemetry = self._telemetry
        instruments = telemetry._instruments
        attributes: dict[str, Any] = {
            "onceonly.function": telemetry.function,
            "onceonly.store": telemetry.store,
        }
        if self._key is not None:
            attributes["onceonly.key_digest"] = key_digest(self._key)
        self._span = instruments.tracer.start_span("onceonly.call", attributes=attributes)
        self._token = instruments.context.attach(instruments.trace.set_span_in_context(self._span))

    def __enter__(self) -> CallWatch:
        self._open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close(error)

    def flow(self, steps: Generator[Step, Any, T]) -> Generator[Step, Any, T]:
        """A flow's steps, passed through to the driver, each step and its reply noted.

        The time between a step leaving and its reply coming back is the
        driver carrying it out: for claim, complete and release, the store's.
        The span is open from the first step to the flow's end.
        """
        self._open()
        failure: BaseException | None = None
        try:
            reply: Any = None
            error: BaseException | None = None
            while True:
                try:
                    step = steps.send(reply) if error is None else steps.throw(error)
                except StopIteration as stop:  # the flow's return value is the call's
                    return stop.value  # type: ignore[no-any-return]
                started = time.perf_counter()
                try:
                    reply, error = (yield step), None
                except GeneratorExit:
                    steps.close()
                    raise
                except BaseException as exc:
                    reply, error = None, exc
                self._note(step, reply, error, time.perf_counter() - started)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._close(failure)

    def _note(self, step: Step, reply: Any, error: BaseException | None, seconds: float) -> None:
        span = self._span
        recording = span.is_recording()
        failed = {} if error is None else {"error.type": type(error).__qualname__}
        if isinstance(step, Execute):
            self._ran = step.protected
            if recording:
                span.add_event("run", {"onceonly.protected": step.protected, **failed})
            return
        if isinstance(step, Sleep):
            if recording:
                span.add_event("wait", {"onceonly.wait_ms": step.ms})
            return
        if isinstance(step, Claim):
            operation = "claim"
            attributes: dict[str, Any] = {}
            if isinstance(reply, Acquired):
                self._takeover = self._takeover or reply.takeover
                attributes = {"onceonly.claimed": True, "onceonly.takeover": reply.takeover}
            elif isinstance(reply, Found):
                found = "completed" if reply.record.status is Status.COMPLETED else "in_progress"
                attributes = {"onceonly.claimed": False, "onceonly.found": found}
        elif isinstance(step, Complete):
            operation = "complete"
            attributes = {} if error is not None else {"onceonly.stored": reply is True}
        elif isinstance(step, Release):
            operation = "release"
            attributes = {} if error is not None else {"onceonly.released": reply is True}
        else:  # pragma: no cover - every step kind is above
            return
        self._round_trips += 1
        telemetry = self._telemetry
        measured = telemetry._operation_attributes[operation]
        if error is not None:
            measured = {**measured, **failed}
        telemetry._instruments.store_duration.record(seconds, measured)
        if recording:
            span.add_event(operation, {**attributes, **failed})

    def _outcome(self, error: BaseException | None) -> Outcome:
        if self._key is None:
            return Outcome.UNPROTECTED
        if error is None:
            if self._ran is None:
                return Outcome.REPLAYED
            return Outcome.EXECUTED if self._ran else Outcome.UNPROTECTED
        if isinstance(error, IdempotencyAlreadyInProgressError):
            return Outcome.IN_PROGRESS
        if isinstance(error, IdempotencyKeyReuseError):
            return Outcome.KEY_REUSE
        if self._ran is not None:
            return Outcome.RELEASED
        if isinstance(error, IdempotencyStoreError):
            return Outcome.STORE_ERROR
        return Outcome.ERROR

    def _close(self, error: BaseException | None) -> None:
        telemetry = self._telemetry
        instruments = telemetry._instruments
        outcome = self._outcome(error)
        span = self._span
        try:
            if span.is_recording():
                span.set_attributes(
                    {
                        "onceonly.outcome": outcome.value,
                        "onceonly.takeover": self._takeover,
                        "onceonly.round_trips": self._round_trips,
                    }
                )
                if error is not None:
                    span.record_exception(error)
                    status = instruments.trace.Status(
                        instruments.trace.StatusCode.ERROR, type(error).__qualname__
                    )
                    span.set_status(status)
            instruments.calls.add(1, telemetry._outcome_attributes[outcome])
        finally:
            span.end()
            instruments.context.detach(self._token)
