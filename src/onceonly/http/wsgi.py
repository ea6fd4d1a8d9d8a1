"""Idempotency-Key for WSGI: Flask (``app.wsgi_app = ...``) and any WSGI app.

``IdempotencyMiddleware(app, store=...)`` reads a covered request's body
(``CONTENT_LENGTH``, or to the end when the server sets
``wsgi.input_terminated`` for a chunked body), hands the app a fresh
``wsgi.input`` with the same bytes and ``CONTENT_LENGTH``, and runs the app
under the engine's flow: one run per key, a duplicate gets the stored
response (``Idempotent-Replayed: true``) or ``409``. The app's response is
buffered (its iterable closed as PEP 3333 asks) up to the response limit and
stored before it is sent; past the limit, or for ``text/event-stream``, it
goes out live, unstored (``Idempotency-Stored: false``), and the claim is
released. Per-view options (``onceonly.http.views``) come through
:meth:`IdempotencyMiddleware.route`, which ``onceonly.http.flask`` overrides
to find Flask's view. Nothing here imports a web framework.
"""

from __future__ import annotations

import http
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._sync import drive
from ..engine import Invocation
from ..errors import IdempotencyConfigError
from ..metrics import Event, Stats
from .config import HttpConfig
from .core import Gate, NotStored, Pass, RequestHead, Response
from .problems import Problem
from .views import Route, RouteGates, build_config, check_sync_store

if TYPE_CHECKING:
    from types import TracebackType

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["SAFE_METHODS", "IdempotencyMiddleware", "environ_headers", "status_line", "wire_bytes"]

ExcInfo = tuple[type[BaseException], BaseException, "TracebackType"] | tuple[None, None, None]

logger = logging.getLogger("onceonly")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_READ_SIZE = 64 * 1024


# -- requests ------------------------------------------------------------------------


def environ_headers(environ: Any) -> list[tuple[str, str]]:
    """The ``(lower-case name, value)`` header pairs of a WSGI environ (or Django's META)."""
    headers = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            headers.append((name[5:].replace("_", "-").lower(), value))
        elif name in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((name.replace("_", "-").lower(), value))
    return headers


def wire_bytes(text: str) -> bytes:
    """A WSGI native string back to its bytes (latin-1; a server that decoded UTF-8 gets UTF-8)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def status_line(status: int) -> str:
    """``"201 Created"`` for 201."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def bad_request(detail: str) -> Problem:
    """A plain ``400`` problem (``about:blank``): the request itself is broken."""
    body = json.dumps(
        {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": detail},
        separators=(",", ":"),
    ).encode()
    return Problem(
        400,
        [("content-type", "application/problem+json"), ("content-length", str(len(body)))],
        body,
    )


def _read_body(environ: WSGIEnvironment, gate: Gate) -> bytes | Problem:
    """The request body, or the problem with it (413 past the limit, 400 when cut short)."""
    limit = gate.config.max_body_bytes
    stream = environ.get("wsgi.input")
    declared = str(environ.get("CONTENT_LENGTH") or "").strip()
    if stream is None:
        return b""
    if declared:
        if not declared.isdigit():
            return bad_request("the Content-Length is not a number")
        remaining = int(declared)  # at most the limit: checked before the read
        chunks = []
        while remaining > 0:
            chunk = stream.read(min(remaining, _READ_SIZE))
            if not chunk:
                # The client went away mid-body: no claim, no handler call.
                return bad_request("the request body ended before its Content-Length")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    if not environ.get("wsgi.input_terminated"):
        return b""  # PEP 3333: without a length there is no body to read
    buffer = bytearray()
    while True:
        chunk = stream.read(_READ_SIZE)
        if not chunk:
            return bytes(buffer)
        buffer += chunk
        if len(buffer) > limit:
            return gate.body_too_large()


# -- responses -----------------------------------------------------------------------


class _Run:
    """One run of the app for a covered request: the call the engine's flow makes.

    It captures ``start_response`` and buffers the body up to the response
    limit, then returns ``gate.captured(...)`` (stored) or raises
    :class:`NotStored` with what it buffered and the rest of the iterator
    kept here, for the middleware to send.
    """

    def __init__(self, app: WSGIApplication, environ: WSGIEnvironment, gate: Gate) -> None:
        self.app = app
        self.environ = environ
        self.gate = gate
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: ExcInfo | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.iterable: Iterable[bytes] | None = None
        self.rest: Iterator[bytes] | None = None  # set when the body goes out live
        self.unstored = False  # this run raised NotStored (not an inner app)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if self.status is not None and exc_info is None:
            raise AssertionError("start_response was called twice without exc_info (PEP 3333)")
        # Nothing was sent yet, so an error page (exc_info) simply replaces the start.
        self.status, self.headers, self.exc_info = status, list(headers), exc_info
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: its bytes come before the iterable's."""
        self.chunks.append(bytes(data))
        self.size += len(data)

    def lower_headers(self) -> list[tuple[str, str]]:
        return [(name.lower(), value) for name, value in self.headers]

    def _live_reason(self) -> str | None:
        """Why the rest must go out live (a stream, too large), or None to keep buffering."""
        if self.size > self.gate.max_response_bytes:
            return "too large"
        if self.status is None:
            return None
        headers = self.lower_headers()
        if self.gate.is_stream(headers):
            return "stream"
        for name, value in headers:
            if (
                name == "content-length"
                and value.strip().isdigit()
                and int(value) > self.gate.max_response_bytes
            ):
                return "too large"
        return None

    def __call__(self) -> Response:
        iterable = self.app(self.environ, self.start_response)
        self.iterable = iterable
        try:
            iterator = iter(iterable)
            while True:
                reason = self._live_reason()
                if reason is not None:
                    self.rest = iterator
                    self.unstored = True
                    raise NotStored(reason)
                try:
                    chunk = next(iterator)
                except StopIteration:
                    break
                if chunk:
                    self.chunks.append(chunk)
                    self.size += len(chunk)
        finally:
            if self.rest is None:
                close_iterable(iterable)
        if self.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        code = int(self.status.split(" ", 1)[0])
        try:
            return self.gate.captured(code, self.lower_headers(), b"".join(self.chunks))
        except NotStored:
            self.unstored = True
            raise


def close_iterable(iterable: object) -> None:
    """Call an app iterable's ``close()`` if it has one (PEP 3333)."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class _Live:
    """The body of a response that goes out unstored: what was buffered, then the rest."""

    def __init__(self, chunks: list[bytes], rest: Iterator[bytes], iterable: object) -> None:
        self._chunks = chunks
        self._rest = rest
        self._iterable = iterable

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        self._chunks = []
        yield from self._rest

    def close(self) -> None:
        close_iterable(self._iterable)


# -- the middleware ------------------------------------------------------------------


class IdempotencyMiddleware:
    """Idempotency-Key for any WSGI app.

    Flask: ``app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, store=...)``
    (or :class:`onceonly.http.flask.FlaskIdempotency`, which also honours
    per-view options).
    The principal (the default scope) is ``REMOTE_USER`` when the server or
    an outer middleware set it, else the core's hash of ``Authorization``;
    ``principal=`` overrides the first, the ``scope=`` option all of it.
    A ``scope`` callable receives the WSGI environ.

    Args:
        app: The WSGI app.
        store: A sync store (memory, SQLite, Redis, DynamoDB).
        config: The options as an :class:`HttpConfig`; or give them as
            keyword options, not both.
        principal: ``principal(environ) -> str | None``: who is calling.
        name: How the middleware is named in log lines.
        stats: Counters to add to (several middlewares may share them).
        **options: :class:`HttpConfig` options.

    Raises:
        IdempotencyConfigError: A bad option, or a store that is not a sync store.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: Any = None,
        config: HttpConfig | None = None,
        *,
        principal: Callable[[WSGIEnvironment], str | None] | None = None,
        name: str = "wsgi",
        stats: Stats | None = None,
        **options: Any,
    ) -> None:
        check_sync_store(store, "IdempotencyMiddleware")
        if principal is not None and not callable(principal):
            raise IdempotencyConfigError(f"principal must be callable, got {principal!r}")
        self.app = app
        self.config = build_config(config, options)
        self.gates = RouteGates(self.config, store, name, stats)
        self._principal = principal

    @property
    def stats(self) -> Stats:
        """The counters (executed, replayed, in progress, key reuse, bad keys, not stored...)."""
        return self.gates.stats

    def route(self, environ: WSGIEnvironment) -> Route | None:
        """The options of the view that will answer (None: the middleware's own).

        A framework adapter overrides it to find the view;
        ``onceonly.http.views.NO_VIEW`` (no view matches) lets the request
        through unclaimed.
        """
        return None

    def principal(self, environ: WSGIEnvironment) -> str | None:
        """Who is calling: ``principal(environ)`` if given, else ``REMOTE_USER``, else None."""
        value = (
            self._principal(environ) if self._principal is not None else environ.get("REMOTE_USER")
        )
        if value is not None and not isinstance(value, str):
            raise IdempotencyConfigError(
                f"the principal must be a str or None, got {type(value).__name__}"
            )
        return value or None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in SAFE_METHODS:
            return self.app(environ, start_response)
        gate = self.gates.gate(self.route(environ))
        if gate is None or method not in gate.config.methods:
            return self.app(environ, start_response)
        headers = environ_headers(environ)
        has_key = any(name == gate.config.header for name, _ in headers)
        head = RequestHead(
            method,
            environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
            wire_bytes(environ.get("QUERY_STRING", "")),
            headers,
            self.principal(environ) if has_key else None,
            environ,
        )
        answer = gate.check(head)
        if isinstance(answer, Pass):
            return self.app(environ, start_response)
        if isinstance(answer, Problem):
            return _send_problem(answer, start_response)
        too_large = gate.declared_too_large(head)
        if too_large is not None:
            return _send_problem(too_large, start_response)
        body = _read_body(environ, gate)
        if isinstance(body, Problem):
            return _send_problem(body, start_response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        inv = gate.invocation(head, answer, body)
        steps, note = gate.flow(inv)
        run = _Run(self.app, environ, gate)
        try:
            response = drive(steps, gate.store, inv, run)
        except NotStored as exc:
            if not run.unstored:
                raise  # an inner app's own NotStored: not ours to deliver
            logger.debug(
                "onceonly: %s response not stored (%s)",
                method,
                exc.reason,
                extra=gate.policy.log_extra(inv.key, Event.NOT_STORED.value),
            )
            return self._send_fresh(gate, run, False, start_response, inv)
        except Exception as exc:
            problem = gate.problem_for(exc)
            if problem is None:
                raise  # the app's own failure; the engine released the claim
            return _send_problem(problem, start_response)
        if response.replayed:
            replay_headers, replay_body = gate.replay_headers(response, head)
            start_response(status_line(response.status), replay_headers)
            return [replay_body]
        return self._send_fresh(gate, run, note.stored, start_response, inv)

    def _send_fresh(
        self,
        gate: Gate,
        run: _Run,
        stored: bool,
        start_response: StartResponse,
        inv: Invocation,
    ) -> Iterable[bytes]:
        """Send the app's own response (every header it set), live if it was cut off."""
        if not stored:
            gate.policy.count(Event.NOT_STORED, inv.key)
        assert run.status is not None
        try:
            # No exc_info: for the server this is the first and only start, and
            # an error page that replaced the app's first start is complete here.
            start_response(run.status, gate.fresh_headers(run.headers, stored))
        except BaseException:
            if run.rest is not None:
                close_iterable(run.iterable)
            raise
        if run.rest is not None:
            return _Live(run.chunks, run.rest, run.iterable)
        return run.chunks


def _send_problem(problem: Problem, start_response: StartResponse) -> Iterable[bytes]:
    start_response(status_line(problem.status), list(problem.headers))
    return [problem.body]
