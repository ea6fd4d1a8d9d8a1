"""Idempotency-Key for Flask: the WSGI middleware, installed by an extension that knows the app.

    from onceonly.http.flask import FlaskIdempotency, idempotency

    idem = FlaskIdempotency(app, store=SQLiteStore("idem.db"))

    @app.post("/payments")
    @idempotency(required=True)           # 400 without a key on this view
    def create_payment(): ...

    @app.post("/webhooks")
    @idempotency(exempt=True)             # never covered
    def webhook(): ...

:class:`FlaskIdempotency` wraps ``app.wsgi_app`` with the WSGI middleware
(``onceonly.http.wsgi``), so it sees the bytes Flask sends, after every
``after_request`` hook. Per view, it finds the view through the app's
``url_map`` before Flask dispatches (a request that matches no view, a 404,
405 or redirect, passes through unclaimed) and applies the options
:func:`idempotency` set on the view or its ``MethodView`` class.

The principal: Flask has no user of its own. ``principal=`` is a callable
with no arguments that returns who is calling (a str) or None; it runs in a
request context of its own, made from the request's environ (without its
body), so ``flask.request``, ``session``, ``current_app`` and what is built
on them (flask-login's ``current_user``) work there; ``before_request``
hooks have not run, so ``g`` is empty. Nothing of that context is kept: no
teardown runs, no session is saved. Without ``principal=``, the scope is
``REMOTE_USER`` when set, else a hash of ``Authorization``.
"""

from __future__ import annotations

import contextvars
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import IdempotencyConfigError
from ..metrics import Stats
from .config import HttpConfig
from .views import NO_VIEW, Route, build_config, idempotency, route_of
from .wsgi import IdempotencyMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

__all__ = ["FlaskIdempotency", "FlaskMiddleware", "idempotency"]


def _flask() -> Any:
    try:
        import flask
    except ImportError:
        raise IdempotencyConfigError(
            "onceonly.http.flask needs Flask: pip install 'onceonly[flask]'"
        ) from None
    return flask


class FlaskMiddleware(IdempotencyMiddleware):
    """The WSGI middleware with Flask's view lookup and principal (see the module docstring).

    Args:
        app: The Flask app (its current ``wsgi_app`` is wrapped).
        store: A sync store.
        config: The options.
        principal: ``principal() -> str | None``, called in a request context.
        stats: Counters to add to.
    """

    def __init__(
        self,
        app: Flask,
        store: Any,
        config: HttpConfig,
        principal: Callable[[], str | None] | None = None,
        stats: Stats | None = None,
    ) -> None:
        super().__init__(app.wsgi_app, store, config, name=f"flask:{app.name}", stats=stats)
        self.flask_app = app
        self._flask_principal = principal
        _flask()
        from werkzeug.exceptions import HTTPException  # Flask's own dependency

        self._http_exception = HTTPException

    def route(self, environ: WSGIEnvironment) -> Route | None:
        """The options of the view Flask will dispatch to; :data:`NO_VIEW` when none matches."""
        app = self.flask_app
        try:
            request = app.request_class(environ, populate_request=False, shallow=True)
            adapter = app.create_url_adapter(request)
            if adapter is None:
                return NO_VIEW
            endpoint, _ = adapter.match(return_rule=False)
        except self._http_exception:
            return NO_VIEW  # Flask answers it (404, 405, a redirect, a bad host)
        view = app.view_functions.get(str(endpoint))
        return NO_VIEW if view is None else route_of(view)

    def principal(self, environ: WSGIEnvironment) -> str | None:
        """``principal()`` in a request context of its own; without it, ``REMOTE_USER``."""
        if self._flask_principal is None:
            return super().principal(environ)
        # A copy without the body: the principal must not consume what the view reads.
        bare = dict(environ)
        bare["wsgi.input"] = io.BytesIO()
        bare["CONTENT_LENGTH"] = "0"
        bare.pop("werkzeug.request", None)
        compute = self._flask_principal

        def in_context() -> Any:
            # Pushed in a copied contextvars context that is then dropped, so
            # the context is never popped: no teardown runs for it.
            self.flask_app.request_context(bare).push()
            return compute()

        value = contextvars.copy_context().run(in_context)
        if value is not None and not isinstance(value, str):
            raise IdempotencyConfigError(
                f"principal() must return a str or None, got {type(value).__name__}"
            )
        return value or None


class FlaskIdempotency:
    """Idempotency-Key for a Flask app (the extension pattern: now, or later with ``init_app``).

    Args:
        app: The Flask app, or None to call :meth:`init_app` later.
        store: A sync store (memory, SQLite, Redis, DynamoDB).
        config: The options as an :class:`HttpConfig`; or keyword options, not both.
        principal: ``principal() -> str | None``: who is calling, computed in a
            request context (see the module docstring).
        **options: :class:`HttpConfig` options (views may change them with
            :func:`idempotency`).

    Raises:
        IdempotencyConfigError: A bad option, an async store, or Flask missing.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: Any = None,
        config: HttpConfig | None = None,
        principal: Callable[[], str | None] | None = None,
        **options: Any,
    ) -> None:
        _flask()
        if principal is not None and not callable(principal):
            raise IdempotencyConfigError(f"principal must be callable, got {principal!r}")
        self.config = build_config(config, options)
        self.store = store
        self.principal = principal
        self.stats = Stats()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> FlaskMiddleware:
        """Wrap ``app.wsgi_app`` with the middleware; ``app.extensions["onceonly"]`` is this.

        Returns:
            The middleware installed (now ``app.wsgi_app``).
        """
        if not isinstance(app, _flask().Flask):
            raise IdempotencyConfigError(f"init_app needs a Flask app, got {app!r}")
        middleware = FlaskMiddleware(app, self.store, self.config, self.principal, self.stats)
        app.wsgi_app = middleware
        app.extensions["onceonly"] = self
        return middleware
