"""Per-view Idempotency-Key options, shared by the WSGI, Flask and Django adapters.

:func:`idempotency` marks a view (a function, or a view class) with its own
options; an adapter finds the view that will answer a request, reads the mark
with :func:`route_of` and takes the gate for it from :class:`RouteGates`
(one per set of options, all on the middleware's counters). No framework is
imported here.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import IdempotencyConfigError
from ..metrics import Stats
from .config import HttpConfig
from .core import Gate

__all__ = [
    "NO_VIEW",
    "Route",
    "RouteGates",
    "build_config",
    "check_sync_store",
    "idempotency",
    "route_of",
]

V = TypeVar("V")

ROUTE_ATTRIBUTE = "__onceonly_http__"
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(HttpConfig) if f.init)


class Route:
    """A view's own Idempotency-Key options, set on it by :func:`idempotency`.

    Attributes:
        exempt: The view is never covered.
        options: ``HttpConfig`` options that replace the middleware's for it.
    """

    __slots__ = ("exempt", "options")

    def __init__(self, exempt: bool, options: dict[str, Any]) -> None:
        self.exempt = exempt
        self.options = options

    def __repr__(self) -> str:
        return f"Route(exempt={self.exempt}, options={sorted(self.options)})"


# What a framework's route lookup gives when no view matches (a 404, a 405, a
# redirect): nothing can run, so nothing is claimed.
NO_VIEW = Route(True, {})


def idempotency(*, exempt: bool = False, **options: Any) -> Callable[[V], V]:
    """Give a view its own Idempotency-Key options (Flask and Django views, or their classes).

    ``@idempotency(required=True)`` answers ``400`` to a covered request
    without a key; ``@idempotency(exempt=True)`` leaves the view uncovered;
    any other :class:`HttpConfig` option (``lease_seconds=``,
    ``methods=``, ...) replaces the middleware's for this view. The view is
    returned as it is, marked; the order among other decorators does not
    matter (``functools.wraps`` carries the mark to a wrapper).

    Args:
        exempt: Never cover this view.
        **options: ``HttpConfig`` options for this view.

    Returns:
        A decorator that marks a view function or a view class.

    Raises:
        IdempotencyConfigError: An unknown option, ``exempt`` with options, or
            an option out of range.
    """
    if not isinstance(exempt, bool):
        raise IdempotencyConfigError(f"exempt must be True or False, got {exempt!r}")
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise IdempotencyConfigError(f"unknown Idempotency-Key options: {', '.join(unknown)}")
    if exempt and options:
        raise IdempotencyConfigError("an exempt view takes no other options")
    HttpConfig(**options)  # checked here, so a bad value fails at import, not at a request
    route = Route(exempt, dict(options))

    def mark(view: V) -> V:
        try:
            setattr(view, ROUTE_ATTRIBUTE, route)
        except (AttributeError, TypeError):
            raise IdempotencyConfigError(f"cannot mark {view!r} as a view") from None
        return view

    return mark


def route_of(view: object) -> Route | None:
    """The options :func:`idempotency` set on a view (or on its ``view_class``), or None."""
    route = getattr(view, ROUTE_ATTRIBUTE, None)
    if route is None:
        route = getattr(getattr(view, "view_class", None), ROUTE_ATTRIBUTE, None)
    return route if isinstance(route, Route) else None


def build_config(config: HttpConfig | None, options: dict[str, Any]) -> HttpConfig:
    """The middleware's options: ``config`` or keyword options, never both.

    Raises:
        IdempotencyConfigError: Both given, an unknown option, or a bad value.
    """
    if config is not None:
        if options:
            raise IdempotencyConfigError(
                "pass either config=HttpConfig(...) or options, not both: "
                f"got config and {', '.join(sorted(options))}"
            )
        if not isinstance(config, HttpConfig):
            raise IdempotencyConfigError(f"config must be an HttpConfig, got {config!r}")
        return config
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise IdempotencyConfigError(f"unknown Idempotency-Key options: {', '.join(unknown)}")
    return HttpConfig(**options)


def check_sync_store(store: object, where: str) -> None:
    """Refuse a missing or async store where a sync one is needed."""
    claim = getattr(store, "claim", None)
    if claim is None:
        raise IdempotencyConfigError(f"{where} needs store=, a onceonly store, got {store!r}")
    if inspect.iscoroutinefunction(claim):
        raise IdempotencyConfigError(
            f"{where} runs in threads and needs a sync store (MemoryStore, SQLiteStore, "
            f"RedisStore, DynamoDBStore), got {type(store).__name__}"
        )


class RouteGates:
    """The middleware's gate and one per view with its own options, all on one set of counters.

    Args:
        config: The middleware's options.
        store: The sync store.
        name: For log lines.
        stats: Counters to add to, or None for new ones.
    """

    def __init__(self, config: HttpConfig, store: Any, name: str, stats: Stats | None) -> None:
        self.default = Gate(config, store, name, stats=stats)
        self.stats = self.default.stats
        self._store = store
        self._name = name
        self._lock = threading.Lock()
        self._by_route: dict[Route, Gate] = {}

    def gate(self, route: Route | None) -> Gate | None:
        """The gate of a view's options (None: the view is exempt)."""
        if route is None:
            return self.default
        if route.exempt:
            return None
        gate = self._by_route.get(route)
        if gate is None:
            with self._lock:
                gate = self._by_route.get(route)
                if gate is None:
                    config = self.default.config.replace(**route.options)
                    gate = Gate(config, self._store, self._name, stats=self.stats)
                    self._by_route[route] = gate
        return gate
