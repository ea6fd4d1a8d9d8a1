"""Support for the port of Powertools' functional idempotency tests (imported by name).

The ported tests talk to two seams, so that the same tests can run on
onceonly's own API and, later, on ``onceonly.compat.powertools``:

- an :class:`Api` adapter: ``api.idempotent(store=..., config=..., **kw)``,
  ``api.idempotent_function(store=..., data=..., config=..., **kw)``,
  ``api.key_for(wrapped, *args, **kwargs)`` and ``api.errors.<Powertools name>``;
- a store built by the ``pt_store`` fixture (``conftest.py``) on a manual clock.

To run the tests on the compatibility module, add an ``Api`` for it to
``APIS`` (its ``idempotent`` takes ``persistence_store=``, its
``idempotent_function`` ``data_keyword_argument=``); the tests stay as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import onceonly
from onceonly import IdempotencyConfig
from onceonly.compat import powertools
from onceonly.errors import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigError,
    IdempotencyKeyError,
    IdempotencyKeyReuseError,
    IdempotencyStoreError,
)


class Context:
    """A Lambda context double whose remaining time stays where the test put it.

    onceonly's ``testing.LambdaContext`` counts down on the real clock; these
    tests move a manual clock instead, so the remaining time is fixed.
    """

    function_name = "test-func"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:test-func"

    def __init__(self, remaining_ms: int = 30_000) -> None:
        self.remaining_ms = remaining_ms
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class AsyncRunner:
    """An async store and the event loop its test runs coroutines on."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine to its end on this loop."""
        return self.loop.run_until_complete(coroutine)


@dataclasses.dataclass(frozen=True)
class Api:
    """One way of spelling the decorators, with Powertools' error names mapped to its errors.

    Attributes:
        name: The parameter id.
        idempotent: ``idempotent(store=, config=, **kw)`` returning a decorator.
        idempotent_function: ``idempotent_function(store=, data=, config=, **kw)``.
        key_for: ``key_for(wrapped, *args, **kwargs)``: the key a call uses, only
            to delete its record in a test (its format is not asserted).
        errors: ``IdempotencyAlreadyInProgressError``, ``IdempotencyValidationError``,
            ``IdempotencyKeyError``, ``IdempotencyPersistenceLayerError`` and
            ``IdempotencyConfigError``.
    """

    name: str
    idempotent: Callable[..., Any]
    idempotent_function: Callable[..., Any]
    key_for: Callable[..., Any]
    errors: SimpleNamespace


def _with_prefix(config: IdempotencyConfig | None, key_prefix: str | None) -> Any:
    # Powertools takes key_prefix on the decorator; onceonly takes it in the config.
    if key_prefix is None:
        return config
    return dataclasses.replace(config or IdempotencyConfig(), key_prefix=key_prefix)


def _ours_idempotent(
    *,
    store: Any,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
    **kw: Any,
) -> Any:
    return onceonly.idempotent(store=store, config=_with_prefix(config, key_prefix), **kw)


def _ours_idempotent_function(
    *,
    store: Any,
    data: str,
    config: IdempotencyConfig | None = None,
    key_prefix: str | None = None,
    **kw: Any,
) -> Any:
    return onceonly.idempotent_function(
        store=store, data=data, config=_with_prefix(config, key_prefix), **kw
    )


def _ours_key_for(wrapped: Any, *args: Any, **kwargs: Any) -> Any:
    return wrapped.key_for(*args, **kwargs)


ONCEONLY = Api(
    name="onceonly",
    idempotent=_ours_idempotent,
    idempotent_function=_ours_idempotent_function,
    key_for=_ours_key_for,
    errors=SimpleNamespace(
        IdempotencyAlreadyInProgressError=IdempotencyAlreadyInProgressError,
        IdempotencyValidationError=IdempotencyKeyReuseError,
        IdempotencyKeyError=IdempotencyKeyError,
        IdempotencyPersistenceLayerError=IdempotencyStoreError,
        IdempotencyConfigError=IdempotencyConfigError,
    ),
)

APIS: dict[str, Api] = {"onceonly": ONCEONLY}


def _compat_idempotent(*, store: Any, **kw: Any) -> Any:
    return powertools.idempotent(persistence_store=store, **kw)


def _compat_idempotent_function(*, store: Any, data: str, **kw: Any) -> Any:
    return powertools.idempotent_function(persistence_store=store, data_keyword_argument=data, **kw)


COMPAT = Api(
    name="compat",
    idempotent=_compat_idempotent,
    idempotent_function=_compat_idempotent_function,
    key_for=_ours_key_for,
    errors=SimpleNamespace(
        IdempotencyAlreadyInProgressError=powertools.IdempotencyAlreadyInProgressError,
        IdempotencyValidationError=powertools.IdempotencyValidationError,
        IdempotencyKeyError=powertools.IdempotencyKeyError,
        IdempotencyPersistenceLayerError=powertools.IdempotencyPersistenceLayerError,
        IdempotencyConfigError=powertools.IdempotencyPersistenceConfigError,
    ),
)

APIS["compat"] = COMPAT
