"""Process and invocation state the decorators read on each call, at the cost of a lookup.

Two things live here:

- The Lambda context of the current invocation, in a ``ContextVar``: set by
  ``@idempotent`` for the duration of a handler call, or by
  ``IdempotencyConfig.register_lambda_context`` for the calls made after it in
  the same thread or asyncio task. An ``idempotent_function`` called inside
  takes its remaining time as its claim's lease. A context variable, not a
  field of the (frozen, shared) config: two invocations on two threads or
  tasks never see each other's context.
- The switch that turns idempotency off: ``ONCEONLY_DISABLED`` or
  ``POWERTOOLS_IDEMPOTENCY_DISABLED`` set to a true value (``1``, ``true``,
  ``yes``, ``y``, ``on``, ``t``, any case), or ``onceonly.testing.disabled()``.
  The variables are read at import; under pytest they are then followed
  through Python's audit events for ``os.putenv``/``os.unsetenv`` (which every
  change to ``os.environ`` raises, ``monkeypatch.setenv`` included), so a call
  reads one module global instead of the environment.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar
from typing import Any

__all__ = ["DISABLED_VARIABLES", "FOLLOWS_ENVIRONMENT", "LAMBDA_CONTEXT", "is_off", "truthy"]

# Powertools' variable is honoured too, so its documented test recipe works.
DISABLED_VARIABLES = ("ONCEONLY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED")
_TRUE = frozenset({"1", "true", "yes", "y", "on", "t"})  # Powertools' strtobool true set

LAMBDA_CONTEXT: ContextVar[Any] = ContextVar("onceonly_lambda_context", default=None)


def truthy(value: str | None) -> bool:
    """Whether a switch variable's value means "on", as Powertools reads it."""
    return value is not None and value.strip().lower() in _TRUE


class _Switch:
    """Whether idempotency is off; ``off`` is the one attribute a call reads."""

    def __init__(self) -> None:
        self.variables = {name: truthy(os.environ.get(name)) for name in DISABLED_VARIABLES}
        self.by_tests = 0  # depth of nested onceonly.testing.disabled() blocks
        self.off = False
        self._update()

    def _update(self) -> None:
        self.off = any(self.variables.values()) or self.by_tests > 0

    def variable(self, name: str, value: str | None) -> None:
        self.variables[name] = truthy(value)
        self._update()

    def hold(self, delta: int) -> None:
        self.by_tests += delta
        self._update()


SWITCH = _Switch()


def is_off() -> bool:
    """Whether idempotency is switched off right now."""
    return SWITCH.off


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return value if isinstance(value, str) else None


def _follow_environment(event: str, args: tuple[Any, ...]) -> None:
    # An audit hook runs inside every audited operation of the process: it
    # must be cheap and must never raise. The event comes before os.environ
    # changes, so the new value is taken from the event, not from os.environ.
    if event != "os.putenv" and event != "os.unsetenv":
        return
    try:
        name = _text(args[0])
        if name is not None and name in SWITCH.variables:
            SWITCH.variable(name, _text(args[1]) if event == "os.putenv" else None)
    except Exception:  # pragma: no cover - the arguments are documented
        pass


# Only under pytest: the recipe that sets a variable after import
# (monkeypatch.setenv) is a test recipe, and an audit hook cannot be removed
# once added and runs on every audited operation of the process (it makes
# sys._getframe about 100 ns slower here). Elsewhere the variables are read at
# import, and onceonly.testing.disabled() switches idempotency off at any time.
FOLLOWS_ENVIRONMENT = "pytest" in sys.modules or "_pytest" in sys.modules
if FOLLOWS_ENVIRONMENT:
    sys.addaudithook(_follow_environment)
