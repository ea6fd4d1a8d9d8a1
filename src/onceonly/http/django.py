"""Idempotency-Key for Django: a middleware class driven by settings, and a view decorator.

settings.py::

    MIDDLEWARE = [
        ...
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        ...
        "onceonly.http.django.IdempotencyMiddleware",  # after auth
    ]
    ONCEONLY_HTTP = {
        "store": "myproject.idempotency.store",  # see below
        "lease_seconds": 30,                     # any HttpConfig option
    }

``ONCEONLY_HTTP`` holds :class:`~onceonly.http.HttpConfig` options under
their own names, plus:

- ``"store"`` (required): a sync store, or the dotted path of one, or the
  dotted path of a factory called once with no arguments when Django builds
  its middleware (a store class works: ``"onceonly.stores.MemoryStore"``).
- ``"principal"``: ``principal(request) -> str | None``, or its dotted path.
  By default the principal is ``request.user`` when authenticated, by its
  primary key (stable across renames; ``get_username()`` when it has none),
  so the middleware goes after ``AuthenticationMiddleware``. An API that
  authenticates in the view (Django REST framework) falls back to the hash
  of ``Authorization``.
- ``"scope"`` may be a dotted path too; it receives the ``HttpRequest``.

Per view: ``@idempotency(required=True)``, ``@idempotency(exempt=True)`` or
``@idempotency(lease_seconds=...)`` on a view function, or on a class-based
view's class.

How it runs: ``__call__`` finds the view (``resolve(request.path_info)``),
reads ``request.body`` before anything parses ``POST`` or ``FILES`` (Django
parses them from those bytes later), claims the key and calls the rest of
the chain. Only a response of the view is stored: ``process_view`` notes
that the view was reached, so an answer given before it (a CSRF failure, a
middleware's redirect or 429) goes out unstored and the claim is released.
A view's exception becomes Django's 500, which is not stored either.
Streaming responses (``StreamingHttpResponse``, ``FileResponse``) are
delivered as they stream, not stored, with ``Idempotency-Stored: false``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._sync import drive
from ..engine import Invocation
from ..errors import IdempotencyConfigError
from ..metrics import Event, log_extra
from .config import HttpConfig
from .core import Gate, NotStored, Pass, RequestHead, Response
from .problems import Problem
from .views import NO_VIEW, Route, RouteGates, build_config, check_sync_store, idempotency, route_of
from .wsgi import SAFE_METHODS, environ_headers, wire_bytes

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ["IdempotencyMiddleware", "idempotency"]

logger = logging.getLogger("onceonly")

SETTING = "ONCEONLY_HTTP"


def _django() -> Any:
    try:
        import django
    except ImportError:
        raise IdempotencyConfigError(
            "onceonly.http.django needs Django: pip install 'onceonly[django]'"
        ) from None
    return django


def _imported(value: Any, what: str) -> Any:
    """``value``, or the object its dotted path names."""
    if not isinstance(value, str):
        return value
    from django.utils.module_loading import import_string

    try:
        return import_string(value)
    except ImportError as exc:
        raise IdempotencyConfigError(f"{SETTING}[{what!r}]: cannot import {value!r}") from exc


def _store(value: Any) -> Any:
    value = _imported(value, "store")
    if isinstance(value, type) or (callable(value) and not hasattr(value, "claim")):
        value = value()  # a factory, or a store class
    check_sync_store(value, f"{SETTING}['store']")
    return value


def _options() -> tuple[Any, Callable[[Any], str | None] | None, HttpConfig]:
    """The store, the principal callable and the options from settings."""
    from django.conf import settings

    raw = getattr(settings, SETTING, None)
    if not isinstance(raw, dict) or "store" not in raw:
        raise IdempotencyConfigError(
            f"onceonly.http.django.IdempotencyMiddleware needs settings.{SETTING}, a dict "
            'with at least "store" (a store, or the dotted path of one or of its factory)'
        )
    options = dict(raw)
    store = _store(options.pop("store"))
    principal = _imported(options.pop("principal", None), "principal")
    if principal is not None and not callable(principal):
        raise IdempotencyConfigError(f"{SETTING}['principal'] must be callable(request)")
    if "scope" in options:
        options["scope"] = _imported(options["scope"], "scope")
    return store, principal, build_config(None, options)


def _default_principal(request: Any) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    pk = getattr(user, "pk", None)
    return str(pk) if pk is not None else str(user.get_username())


class _Pending:
    """A covered request on its way to its view: what process_view checks and notes."""

    __slots__ = ("reached", "route")

    def __init__(self, route: Route | None) -> None:
        self.route = route
        self.reached = False


class _Call:
    """The call the engine's flow makes: the rest of the chain, its response captured."""

    def __init__(
        self, middleware: IdempotencyMiddleware, request: Any, gate: Gate, route: Route | None
    ) -> None:
        self.middleware = middleware
        self.request = request
        self.gate = gate
        self.route = route
        self.response: HttpResponseBase | None = None
        self.unstored = False

    def __call__(self) -> Response:
        pending = _Pending(self.route)
        self.request._onceonly_pending = pending
        response = self.response = self.middleware.get_response(self.request)
        headers = [(name.lower(), value) for name, value in response.items()]
        self.unstored = True
        if not pending.reached:
            raise NotStored("answered before the view")
        if response.streaming or self.gate.is_stream(headers):
            raise NotStored("stream")
        # bytes of the whole content: a plain HttpResponse is in memory already
        captured = self.gate.captured(response.status_code, headers, response.content)
        self.unstored = False
        return captured


class IdempotencyMiddleware:
    """Idempotency-Key for Django (see the module docstring for the settings).

    Args:
        get_response: The rest of the middleware chain.

    Raises:
        IdempotencyConfigError: ``ONCEONLY_HTTP`` is missing or wrong, or Django is missing.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        _django()
        self.get_response = get_response
        store, self._principal, config = _options()
        self.gates = RouteGates(config, store, "django", None)
        self.stats = self.gates.stats

    def _route(self, request: HttpRequest) -> Route | None:
        from django.urls import Resolver404, resolve

        try:
            match = resolve(request.path_info, getattr(request, "urlconf", None))
        except Resolver404:
            return NO_VIEW
        return route_of(match.func)

    def principal(self, request: HttpRequest) -> str | None:
        """Who is calling: ``principal(request)`` from settings, else the authenticated user."""
        value = (self._principal or _default_principal)(request)
        if value is not None and not isinstance(value, str):
            raise IdempotencyConfigError(
                f"the principal must be a str or None, got {type(value).__name__}"
            )
        return value or None

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        method = str(request.method).upper()
        if method in SAFE_METHODS:
            return self.get_response(request)
        route = self._route(request)
        gate = self.gates.gate(route)
        if gate is None or method not in gate.config.methods:
            return self.get_response(request)
        meta = request.META
        headers = environ_headers(meta)
        has_key = any(name == gate.config.header for name, _ in headers)
        head = RequestHead(
            method,
            request.path,
            wire_bytes(meta.get("QUERY_STRING", "")),
            headers,
            self.principal(request) if has_key else None,
            request,
        )
        answer = gate.check(head)
        if isinstance(answer, Pass):
            return self.get_response(request)
        if isinstance(answer, Problem):
            return _problem(answer)
        body = self._body(request, gate, head)
        if isinstance(body, Problem):
            return _problem(body)
        inv = gate.invocation(head, answer, body)
        steps, note = gate.flow(inv)
        call = _Call(self, request, gate, route)
        try:
            result = drive(steps, gate.store, inv, call)
        except NotStored as exc:
            if not call.unstored or call.response is None:
                raise
            logger.debug(
                "onceonly: %s response not stored (%s)",
                method,
                exc.reason,
                extra=gate.policy.log_extra(inv.key, Event.NOT_STORED.value),
            )
            return self._fresh(gate, call.response, False, inv)
        except Exception as exc:
            problem = gate.problem_for(exc)
            if problem is None:
                raise
            return _problem(problem)
        if result.replayed:
            return _replay(*gate.replay_headers(result, head), result.status)
        assert call.response is not None
        return self._fresh(gate, call.response, note.stored, inv)

    def _body(self, request: HttpRequest, gate: Gate, head: RequestHead) -> bytes | Problem:
        """``request.body`` read now (so POST and FILES parse from it), or a 413."""
        from django.core.exceptions import RequestDataTooBig

        too_large = gate.declared_too_large(head)
        if too_large is not None:
            return too_large
        try:
            body: bytes = request.body
        except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE
            return gate.body_too_large()
        if len(body) > gate.config.max_body_bytes:
            return gate.body_too_large()
        return body

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        """Note that the view is reached (its response may be stored)."""
        pending = getattr(request, "_onceonly_pending", None)
        if pending is None:
            return
        if route_of(view_func) is pending.route:
            pending.reached = True
        else:
            logger.warning(
                "onceonly: Django called another view than the one resolved before the "
                "middlewares ran (request.urlconf changed?); its response is not stored. "
                "Put onceonly.http.django.IdempotencyMiddleware after the middleware that "
                "sets request.urlconf",
                extra=log_extra("django", None, Event.NOT_STORED.value),
            )

    def _fresh(
        self, gate: Gate, response: HttpResponseBase, stored: bool, inv: Invocation
    ) -> HttpResponseBase:
        if not stored:
            gate.policy.count(Event.NOT_STORED, inv.key)
        for name, value in gate.fresh_headers([], stored):
            response[name] = value
        return response


def _problem(problem: Problem) -> HttpResponseBase:
    from django.http import HttpResponse

    response = HttpResponse(problem.body, status=problem.status)
    for name, value in problem.headers:
        response[name] = value
    return response


def _replay(headers: list[tuple[str, str]], body: bytes, status: int) -> HttpResponseBase:
    from django.http import HttpResponse

    response = HttpResponse(body, status=status)
    del response["Content-Type"]  # Django's default; the stored one (if any) is set below
    joined: dict[str, list[str]] = {}
    for name, value in headers:
        joined.setdefault(name, []).append(value)
    for name, values in joined.items():
        response[name] = ", ".join(values)  # one field per name in Django's headers
    return response
