"""Per-route options of the ASGI middleware, found by matching a request against the app's routes.

A route says what it wants with a :class:`RouteOptions` marker: on its
endpoint through :func:`idempotency_options` / :func:`idempotency_exempt`
(Starlette, FastAPI, anything whose routes carry an ``endpoint``), or as a
FastAPI dependency (``onceonly.http.fastapi.IdempotencyKey``, found in the
route's dependency tree, router-level dependencies included). The middleware
sits in front of the router, so it asks the app's own routes which one the
request is for (``route.matches(scope)``, Starlette's routing protocol, on a
copy of the scope), and reads the markers of the route that matches in full.

No framework is imported here: the routes are read by their attributes
(``routes``, ``matches``, ``endpoint``, ``dependant``). FastAPI releases
that keep included routers apart (``fastapi.routing.iter_route_contexts``)
are read through that function when FastAPI is already loaded.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, TypeVar

from ..errors import IdempotencyConfigError
from .config import HttpConfig

__all__ = [
    "MARKER_ATTRIBUTE",
    "RouteOptions",
    "candidates",
    "find_route",
    "idempotency_exempt",
    "idempotency_options",
    "markers_of",
    "merged_options",
]

F = TypeVar("F")

MARKER_ATTRIBUTE = "__onceonly_http__"
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(HttpConfig) if f.init)
# Mounts inside mounts: deeper than this is a loop, not an app.
_MAX_DEPTH = 16


class RouteOptions:
    """What one route wants of the middleware: its options, or to be left alone.

    Args:
        exempt: The middleware passes this route's requests through untouched.
        **options: :class:`HttpConfig` fields that replace the middleware's own
            for this route (``required=True``, ``lease_seconds=300``, ...).

    Raises:
        IdempotencyConfigError: An unknown option, a value the options refuse,
            or options given with ``exempt``.
    """

    __slots__ = ("exempt", "options")
    # How many markers this process made: none made means no route can carry one,
    # and the middleware skips matching routes at all.
    made = 0

    def __init__(self, *, exempt: bool = False, **options: Any) -> None:
        if not isinstance(exempt, bool):
            raise IdempotencyConfigError(f"exempt must be True or False, got {exempt!r}")
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise IdempotencyConfigError(
                f"unknown idempotency option(s) {', '.join(unknown)}; the options are "
                f"HttpConfig's: {', '.join(sorted(_OPTION_NAMES))}"
            )
        if exempt and options:
            raise IdempotencyConfigError("an exempt route takes no other idempotency options")
        HttpConfig(**options)  # refuse a bad value where the route is declared, not per request
        self.exempt = exempt
        self.options: Mapping[str, Any] = MappingProxyType(dict(options))
        RouteOptions.made += 1

    def __repr__(self) -> str:
        if self.exempt:
            return f"{type(self).__name__}(exempt=True)"
        inner = ", ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"{type(self).__name__}({inner})"


def idempotency_options(**options: Any) -> Callable[[F], F]:
    """Decorate an endpoint (function or class) with its own idempotency options.

    ``@idempotency_options(required=True)`` under ``@app.post(...)`` (FastAPI)
    or on the endpoint given to ``Route`` (Starlette). The endpoint is
    returned as it was, with the marker attached.

    Args:
        **options: :class:`HttpConfig` fields for this route.

    Returns:
        The decorator.

    Raises:
        IdempotencyConfigError: As :class:`RouteOptions` does.
    """
    marker = RouteOptions(**options)

    def attach(endpoint: F) -> F:
        setattr(endpoint, MARKER_ATTRIBUTE, marker)
        return endpoint

    return attach


def idempotency_exempt(endpoint: F) -> F:
    """Decorate an endpoint whose requests the middleware passes through untouched.

    Returns:
        The endpoint, with the marker attached.
    """
    setattr(endpoint, MARKER_ATTRIBUTE, RouteOptions(exempt=True))
    return endpoint


def candidates(routes: Iterable[Any]) -> Iterable[Any]:
    """The routes as the app's router tries them (FastAPI's included routers opened up)."""
    # FastAPI keeps an included router as one route that hides its routes;
    # where it does, its own iterator gives each route with its full path and
    # the include's dependencies. Only read when FastAPI is loaded already.
    iterate = getattr(sys.modules.get("fastapi.routing"), "iter_route_contexts", None)
    return iterate(list(routes)) if iterate is not None else routes


def _match(routes: Iterable[Any], scope: MutableMapping[str, Any], depth: int) -> Any | None:
    for route in candidates(routes):
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        if getattr(match, "name", None) != "FULL":
            continue
        inner = getattr(route, "routes", None)
        if inner and depth < _MAX_DEPTH:
            # A mount or host: the route inside decides (a mount answers 404 itself).
            return _match(inner, {**scope, **child}, depth + 1)
        return route
    return None


def find_route(scope: MutableMapping[str, Any]) -> Any | None:
    """The route of the app in ``scope["app"]`` that ``scope`` matches in full, or None.

    The app's routes are asked on a copy of the scope, in order, as its router
    asks them; a route matched only by path (another method) is not one.
    """
    app = scope.get("app")
    routes = getattr(getattr(app, "router", app), "routes", None)
    if not routes:
        return None
    return _match(routes, dict(scope), 0)


def _from_dependencies(dependant: Any, found: list[RouteOptions], depth: int) -> None:
    for sub in getattr(dependant, "dependencies", None) or ():
        call = getattr(sub, "call", None)
        if isinstance(call, RouteOptions):
            found.append(call)
        if depth < _MAX_DEPTH:
            _from_dependencies(sub, found, depth + 1)


def markers_of(route: Any) -> list[RouteOptions]:
    """A route's markers: its dependencies' (outer first), then its endpoint's."""
    found: list[RouteOptions] = []
    dependant = getattr(route, "dependant", None)
    if dependant is not None:
        _from_dependencies(dependant, found, 0)
    marker = getattr(getattr(route, "endpoint", None), MARKER_ATTRIBUTE, None)
    if isinstance(marker, RouteOptions):
        found.append(marker)
    return found


def merged_options(markers: Iterable[RouteOptions]) -> dict[str, Any] | None:
    """The options of several markers, the later (more specific) ones winning.

    Returns:
        The options, or None when the last word on the route is ``exempt``.
    """
    options: dict[str, Any] = {}
    exempt = False
    for marker in markers:
        if marker.exempt:
            exempt, options = True, {}
        else:
            exempt = False
            options.update(marker.options)
    return None if exempt else options
