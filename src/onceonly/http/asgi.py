"""The Idempotency-Key middleware for ASGI apps: Starlette, FastAPI, any ASGI app.

A pure ASGI middleware (a class with ``async __call__(scope, receive, send)``)
that imports no framework::

    from onceonly.http.asgi import IdempotencyMiddleware
    from onceonly.stores import AsyncSQLiteStore

    app.add_middleware(IdempotencyMiddleware, store=AsyncSQLiteStore("idem.db"))
    # or, for any ASGI app: app = IdempotencyMiddleware(app, store=..., required=True)

A covered request (``POST``/``PATCH`` with an ``Idempotency-Key``) has its
body read first (up to ``max_body_bytes``; over it ``413``, no claim; a
client gone meanwhile: no claim, no app call); the app then gets the same
body as one ``http.request`` message and the real ``receive`` after it. The
app runs in its own task under the claim; what it sends is held until its
final body message (``more_body`` false), when the response is stored and
only then delivered. Background tasks (Starlette's run after that message,
inside the same app call) start once the response is delivered: they delay
neither the store nor the client, and their failure undoes nothing (it is
raised from the middleware afterwards, as without it).

Not stored, delivered with ``Idempotency-Stored: false`` and the claim
released: a 5xx (unless ``store_server_errors``), a body past
``max_response_bytes`` or the store's limit (what was held goes out, the rest
passes through live), ``text/event-stream`` and responses with trailers
(live from their start). An exception in the app before its final body
releases the claim and is raised again (the server answers 500).

Where it goes in the stack (Starlette's ``add_middleware`` puts the last
added outermost):

- Authentication outside it, so that ``scope["user"]`` is set when it runs:
  the scope of keys is the user (``identity``, else ``display_name``, of a user
  whose ``is_authenticated`` is true, as Starlette's ``AuthenticationMiddleware``
  sets), else a hash of the ``Authorization`` header, else one global scope.
  A ``scope=`` callable gets the ASGI scope mapping.
- CORS outside it, so that its replays and problem responses carry the CORS
  headers. Browsers need ``Idempotency-Key`` allowed in preflight and the
  answer's headers exposed: ``CORSMiddleware(allow_headers=["Idempotency-Key"],
  expose_headers=["Idempotent-Replayed", "Idempotency-Stored", "Retry-After"])``.
- Compression either side. Inside it (``GZipMiddleware`` added before it), a
  response is stored as compressed and replayed as stored to a client that
  accepts its coding, decoded for one that does not. Outside it, responses
  are stored plain and compressed per client.

Per route: :func:`onceonly.http.routes.idempotency_options` /
:func:`~onceonly.http.routes.idempotency_exempt` on an endpoint, or the FastAPI
dependency ``onceonly.http.fastapi.IdempotencyKey``; the middleware finds them
by matching the request against the routes of ``scope["app"]``, which
Starlette and FastAPI set before their middleware runs: add it with
``add_middleware`` (or ``middleware=[...]``) for per-route options; wrapped
around the app by hand it applies its own options to every route. OpenAPI
documentation of covered FastAPI routes:
``onceonly.http.fastapi.document_idempotency(app)``.
Counters: ``.stats``; pass ``stats=Stats()`` to read them when the framework
builds the middleware for you.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .. import _async
from ..errors import IdempotencyConfigError, IdempotencySerializationError
from ..metrics import Event, Stats
from .config import HttpConfig
from .core import Covered, Gate, NotStored, Pass, RequestHead, Response
from .problems import Problem
from .routes import RouteOptions, find_route, markers_of, merged_options

__all__ = ["IdempotencyMiddleware", "config_from"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Never covered, whatever the options: no route lookup for them either.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Read(enum.Enum):
    DISCONNECTED = "disconnected"
    TOO_LARGE = "too large"


def config_from(config: HttpConfig | None, options: dict[str, Any]) -> HttpConfig:
    """The options of a middleware given as ``config=`` or as keywords (not both).

    Raises:
        IdempotencyConfigError: Both given, a config that is not an
            :class:`HttpConfig`, an unknown option, or a bad value.
    """
    if config is not None:
        if options:
            raise IdempotencyConfigError(
                f"pass config= or options ({', '.join(sorted(options))}), not both"
            )
        if not isinstance(config, HttpConfig):
            raise IdempotencyConfigError(f"config must be an HttpConfig, got {config!r}")
        return config
    try:
        return HttpConfig(**options)
    except TypeError as exc:  # an unknown keyword
        raise IdempotencyConfigError(f"unknown idempotency option: {exc}") from None


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers") or ()
    ]


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _principal(scope: Scope) -> str | None:
    """The authenticated user an auth middleware put in ``scope["user"]``, or None.

    Its ``identity`` (Starlette's stable identifier), else its
    ``display_name``; only for a user whose ``is_authenticated`` is True.
    """
    user = scope.get("user")
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return None
    for name in ("identity", "display_name"):
        try:
            value = getattr(user, name, None)
        except NotImplementedError:  # Starlette's BaseUser.identity, not overridden
            continue
        if value is not None and str(value):
            return str(value)
    return None


async def _send_whole(
    send: Send, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _encoded(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive, limit: int) -> bytes | _Read:
    """The whole request body, or why not (over ``limit``, or the client left)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _Read.DISCONNECTED
        if message["type"] != "http.request":
            continue
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return _Read.TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body read before, then the real ``receive``."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a task given up on is not reported as never awaited


class _Run:
    """One run of the app under a claim: its task, and what it sent until the middleware decided.

    The app's messages are held (the start, the body chunks) until its final
    body message, or until the response turns out not to be storable (a
    stream, too large, an extension message); then the app's send waits
    while the middleware stores and delivers (:meth:`flush`), after which
    the app's sends go to the client as they come.
    """

    def __init__(
        self, app: ASGIApp, gate: Gate, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.app, self.gate, self.scope, self.receive = app, gate, scope, receive
        self.client_send = send
        self.task: asyncio.Future[None] | None = None
        self.app_error: BaseException | None = None
        self.start: Message | None = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.live = False
        self.decided: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.resume = asyncio.Event()

    async def call(self) -> Response:
        """Run the app until its response is complete or known not storable (the engine's call).

        Returns:
            The response to store.

        Raises:
            NotStored: It is not to be stored (the engine releases the claim).
            BaseException: What the app raised before its final body.
        """
        self.task = asyncio.ensure_future(self.app(self.scope, self.receive, self.send))
        await asyncio.wait((self.task, self.decided), return_when=asyncio.FIRST_COMPLETED)
        if self.decided.done():
            reason = self.decided.result()
            if reason is not None:
                raise NotStored(reason)
            return self.gate.captured(self.status, self.headers, b"".join(self.chunks))
        error = None if self.task.cancelled() else self.task.exception()
        self.app_error = error or RuntimeError(
            "the ASGI app returned without sending a complete response"
        )
        raise self.app_error

    async def send(self, message: Message) -> None:
        """The app's send: holds the response until the middleware decided, then passes it on."""
        if self.live:
            await self.client_send(message)
            return
        kind = message["type"]
        if self.start is None:
            if kind != "http.response.start":
                await self.client_send(message)  # e.g. http.response.debug: no part of the response
                return
            self.start = message
            self.status = int(message["status"])
            self.headers = [
                (bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                for n, v in message.get("headers") or ()
            ]
            if message.get("trailers", False) or self.gate.is_stream(self.headers):
                await self._decide("stream")
            return
        if kind == "http.response.body":
            chunk = bytes(message.get("body", b""))
            self.chunks.append(chunk)
            self.size += len(chunk)
            if not message.get("more_body", False):
                self.complete = True
                await self._decide(None)
            elif self.size > self.gate.max_response_bytes:
                await self._decide("too large")
            return
        # An extension message (a file by path, trailers): what follows goes live.
        await self._decide(f"{kind} message")
        await self.client_send(message)

    async def _decide(self, reason: str | None) -> None:
        if self.decided.done():
            raise RuntimeError(f"unexpected ASGI message after the response ended ({reason})")
        self.decided.set_result(reason)
        await self.resume.wait()

    async def flush(self, extra: list[tuple[str, str]]) -> None:
        """Send what the app sent so far, with ``extra`` headers; then let the app go on, live."""
        assert self.start is not None
        try:
            start = dict(self.start)
            start["headers"] = [*(self.start.get("headers") or ()), *_encoded(extra)]
            await self.client_send(start)
            if self.chunks or self.complete:
                body = b"".join(self.chunks)
                self.chunks = []
                await self.client_send(
                    {"type": "http.response.body", "body": body, "more_body": not self.complete}
                )
        finally:
            self.live = True
            self.resume.set()

    async def finish(self) -> None:
        """Wait for the app to end (its background tasks); what it raises then propagates."""
        if self.task is not None:
            await self.task

    def abandon(self) -> None:
        """Cancel the app when the middleware leaves before it ended."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            self.task.add_done_callback(_consume)


class IdempotencyMiddleware:
    """Idempotency-Key for an ASGI app: one run per key, the stored response replayed.

    Args:
        app: The ASGI app.
        store: An async store (``AsyncMemoryStore``, ``AsyncSQLiteStore``,
            ``AsyncRedisStore``, ``AsyncDynamoDBStore``).
        config: The options as an :class:`HttpConfig`, or None to give them
            as keywords.
        stats: Counters to add to (e.g. one you keep when ``add_middleware``
            builds this), or None for new ones; either way ``.stats``.
        **options: :class:`HttpConfig` fields (with no ``config``).

    Raises:
        IdempotencyConfigError: A sync store, bad options, or both ``config``
            and options.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Any,
        config: HttpConfig | None = None,
        *,
        stats: Stats | None = None,
        **options: Any,
    ) -> None:
        if not inspect.iscoroutinefunction(getattr(store, "claim", None)):
            raise IdempotencyConfigError(
                "the ASGI middleware needs an async store (AsyncMemoryStore, AsyncSQLiteStore, "
                f"AsyncRedisStore, AsyncDynamoDBStore), got {type(store).__name__}"
            )
        if stats is not None and not isinstance(stats, Stats):
            raise IdempotencyConfigError(f"stats must be a onceonly Stats, got {stats!r}")
        self.app = app
        self.config = config_from(config, options)
        self.store = store
        self.stats = Stats() if stats is None else stats
        self.gate = Gate(self.config, store, "asgi", self.stats)
        # Per marker combination: the markers (kept, so their ids stay theirs) and the gate.
        self._route_gates: dict[tuple[int, ...], tuple[list[RouteOptions], Gate | None]] = {}

    def gate_for(self, scope: Scope) -> Gate | None:
        """The gate of the route ``scope`` is for (with its own options); None if it is exempt."""
        if RouteOptions.made == 0:
            return self.gate  # no marker exists: no route to look up
        route = find_route(scope)
        markers = markers_of(route) if route is not None else []
        if not markers:
            return self.gate
        key = tuple(id(marker) for marker in markers)
        known = self._route_gates.get(key)
        if known is None:
            options = merged_options(markers)
            gate: Gate | None = None
            if options is not None:
                gate = (
                    Gate(self.config.replace(**options), self.store, "asgi", self.stats)
                    if options
                    else self.gate
                )
            known = self._route_gates[key] = (markers, gate)
        return known[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        gate = self.gate_for(scope)
        if gate is None:
            await self.app(scope, receive, send)
            return
        head = RequestHead(
            scope["method"],
            scope["path"],
            bytes(scope.get("query_string", b"")),
            _headers(scope),
            _principal(scope),
            scope,
        )
        answer = gate.check(head)
        if isinstance(answer, Pass):
            await self.app(scope, receive, send)
        elif isinstance(answer, Problem):
            await _send_whole(send, *answer)
        else:
            await self._covered(gate, head, answer, scope, receive, send)

    async def _covered(
        self,
        gate: Gate,
        head: RequestHead,
        covered: Covered,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        too_large = gate.declared_too_large(head)
        if too_large is not None:
            await _send_whole(send, *too_large)
            return
        body = await _read_body(receive, gate.config.max_body_bytes)
        if body is _Read.DISCONNECTED:
            return  # nobody to answer: no claim, no app call
        if body is _Read.TOO_LARGE:
            await _send_whole(send, *gate.body_too_large())
            return
        assert isinstance(body, bytes)
        inv = gate.invocation(head, covered, body)
        steps, note = gate.flow(inv)
        run = _Run(self.app, gate, scope, _replaying(body, receive), send)
        try:
            try:
                result = await _async.drive(steps, gate.store, inv, run.call)
            except NotStored:
                # Released by the engine: the response goes out as it is, and live after.
                gate.policy.count(Event.NOT_STORED, inv.key)
                await run.flush(gate.fresh_headers([], stored=False))
            except IdempotencySerializationError:
                if not run.complete:
                    raise
                # Over the store's limit: released, and delivered.
                gate.policy.count(Event.NOT_STORED, inv.key)
                await run.flush(gate.fresh_headers([], stored=False))
            except Exception as exc:
                problem = None if exc is run.app_error else gate.problem_for(exc)
                if problem is None:
                    raise
                await _send_whole(send, *problem)
                return
            else:
                if result.replayed:
                    headers, payload = gate.replay_headers(result, head)
                    await _send_whole(send, result.status, headers, payload)
                    return
                if not note.stored:
                    gate.policy.count(Event.NOT_STORED, inv.key)
                await run.flush(gate.fresh_headers([], note.stored))
            await run.finish()
        finally:
            run.abandon()
