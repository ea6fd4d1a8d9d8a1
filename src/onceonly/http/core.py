"""The I/O-free core of the Idempotency-Key middlewares (no framework imports).

An adapter (ASGI, WSGI, Django) reads the request head, asks :meth:`Gate.check`
whether the request is covered, reads the body, asks :meth:`Gate.invocation`
for the claim's key, token and fingerprint, and runs the engine's ``flow``
with its sync or async driver, the app's run being the function. The
response the app gives is the function's result: :meth:`Gate.captured`
turns it into a :class:`Response` that the engine stores (through
:class:`ResponseSerializer`, binary-safe), or raises :class:`NotStored`,
which releases the claim like any failure. A replay comes back from the
engine as a stored :class:`Response`; :meth:`Gate.replay_headers` adds what
a replay carries. Errors become problem+json through :meth:`Gate.problem_for`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..engine import Complete, Invocation, Policy, Step, flow, store_kind
from ..errors import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigError,
    IdempotencyKeyReuseError,
    IdempotencyStoreError,
)
from ..keys import hasher
from ..metrics import Event, Stats
from ..records import new_token
from ..stores.protocol import wall_ms
from ..telemetry import Watcher
from .config import HttpConfig
from .fingerprint import body_material, fingerprint, length_prefixed
from .problems import Problem, ProblemType, problem

__all__ = [
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "RETRY_STATUSES",
    "STORED_HEADER",
    "Covered",
    "Gate",
    "NotStored",
    "Pass",
    "RequestHead",
    "Response",
    "ResponseSerializer",
    "Stored",
    "parse_key",
]

MAX_KEY_LENGTH = 255
# 4xx answers that tell the client to send the same request again: never stored.
RETRY_STATUSES = frozenset({408, 425, 429})
REPLAYED_HEADER = "idempotent-replayed"
STORED_HEADER = "idempotency-stored"


class RequestHead(NamedTuple):
    """What an adapter knows of a request before reading its body.

    Attributes:
        method: Upper case.
        path: As received.
        query: The raw query string.
        headers: ``(lower-case name, value)`` pairs, every field line kept.
        principal: The authenticated user the framework gives, or None.
        request: The framework's request object, for a ``scope`` callable.
    """

    method: str
    path: str
    query: bytes
    headers: Sequence[tuple[str, str]]
    principal: str | None = None
    request: Any = None


@dataclass(frozen=True, slots=True)
class Response:
    """A response as stored and replayed.

    Attributes:
        status: The status code.
        headers: The replayable ``(lower-case name, value)`` pairs.
        body: The body bytes.
        replayed: True when it comes from the store.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    replayed: bool = False


class Pass(NamedTuple):
    """The request is not covered: hand it to the app untouched."""

    reason: str


class Covered(NamedTuple):
    """A covered request with a valid key: its stored key's material."""

    key: str
    scope: str


class NotStored(Exception):
    """The app's response must not be stored: the claim is released, the response delivered.

    Attributes:
        reason: Why (a 5xx, too large, a stream), for the log.
        response: The response when it is complete, else None.
    """

    def __init__(self, reason: str, response: Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


def parse_key(values: Sequence[str]) -> str | ProblemType:
    """The key of the ``Idempotency-Key`` field lines, or the problem with them.

    The field is a structured-field string (``"abc"``, with ``\\"`` and ``\\\\``
    escapes); a bare token (``abc``) is taken as the same key.

    Returns:
        The key, or ``KEY_INVALID`` for an empty key, one over 255 characters,
        control characters, a malformed string, or more than one key.
    """
    if len(values) != 1:
        return ProblemType.KEY_INVALID
    text = values[0].strip(" \t")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            return ProblemType.KEY_INVALID
        chars: list[str] = []
        escaped = False
        for char in text[1:-1]:
            if escaped:
                if char not in '"\\':
                    return ProblemType.KEY_INVALID
                chars.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return ProblemType.KEY_INVALID  # a second string: more than one key
            else:
                chars.append(char)
        if escaped:
            return ProblemType.KEY_INVALID
        key = "".join(chars)
    else:
        key = text
        if "," in key or '"' in key:
            return ProblemType.KEY_INVALID  # a list of keys, or a broken string
    if not key or len(key) > MAX_KEY_LENGTH or any(not " " <= c <= "~" for c in key):
        return ProblemType.KEY_INVALID
    return key


class Stored:
    """Whether a flow stored the response (set by :meth:`Gate.flow` as its steps go by)."""

    __slots__ = ("stored",)

    def __init__(self) -> None:
        self.stored = False


def _noting(steps: Generator[Step, Any, Any], note: Stored) -> Generator[Step, Any, Any]:
    """The engine's steps, passed through as they are; a completion that succeeded is noted."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        error = None
        try:
            result = yield step
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:  # the driver throws the step's failure in: pass it on
            error, result = exc, None
            continue
        if isinstance(step, Complete):
            note.stored = result is True


class ResponseSerializer:
    """A :class:`Response` as JSON-native data (the body in base64) and back."""

    def to_json(self, value: Any) -> Any:
        if not isinstance(value, Response):
            raise TypeError(f"expected a Response, got {type(value).__name__}")
        return {
            "s": value.status,
            "h": [list(pair) for pair in value.headers],
            "b": base64.b64encode(value.body).decode("ascii"),
        }

    def from_json(self, data: Any) -> Any:
        try:
            status, headers, body = data["s"], data["h"], data["b"]
            if type(status) is not int or not isinstance(headers, list):
                raise ValueError("status or headers of the wrong type")
            pairs = tuple((str(name), str(value)) for name, value in headers)
            return Response(status, pairs, base64.b64decode(body, validate=True), replayed=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CorruptRecordError(
                f"the stored response is not one this middleware wrote ({type(exc).__name__})"
            ) from None


def _first(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for field_name, value in headers:
        if field_name == name:
            return value
    return None


def _accepts(accept_encoding: str | None, coding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts ``coding`` (q > 0)."""
    if accept_encoding is None:
        return coding == "identity"
    accepted = False
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name.strip() in (coding, "*"):
            accepted = q > 0
            if name.strip() == coding:
                return accepted
    return accepted


class Gate:
    """Everything one middleware needs per request, built once from its options and store.

    Args:
        config: The options.
        store: A store (sync for WSGI/Django, async for ASGI).
        name: How the middleware is named in log lines.
        stats: The counters to add to (gates of one middleware's routes share
            its counters), or None for new ones.
    """

    def __init__(
        self, config: HttpConfig, store: Any, name: str = "http", stats: Stats | None = None
    ) -> None:
        if not isinstance(config, HttpConfig):
            raise IdempotencyConfigError(f"config must be an HttpConfig, got {config!r}")
        self.config = config
        self.store = store
        self.stats = Stats() if stats is None else stats
        self.digest = hasher(config.hash_function)
        sync = getattr(store, "sync", store)  # the async twins wrap a sync store
        limit = getattr(sync, "max_outcome_bytes", None)
        # The base64 body is 4/3 of the bytes; the response limit is on the body.
        self.max_response_bytes = config.max_response_bytes
        if type(limit) is int:
            self.max_response_bytes = min(self.max_response_bytes, (limit - 512) * 3 // 4)
        kind = store_kind(store)
        self.policy = Policy(
            name=name,
            config=config.engine,
            serializer=ResponseSerializer(),
            stats=self.stats,
            cache=None,
            clock=wall_ms,
            max_outcome_bytes=limit if type(limit) is int else None,
            store=kind,
        )
        self.lease_ms = config.engine.lease_ms
        self.ttl_ms = config.engine.ttl_ms
        self.watcher = Watcher(name, kind)

    # -- before the body -------------------------------------------------------------

    def check(self, head: RequestHead) -> Pass | Problem | Covered:
        """Whether a request is covered, and with which key."""
        config = self.config
        if head.method not in config.methods:
            return Pass("method")
        values = [value for name, value in head.headers if name == config.header]
        if not values:
            if config.required:
                self.policy.count(Event.BAD_KEY)
                return problem(
                    ProblemType.KEY_MISSING,
                    f"{head.method} {head.path} needs an {config.header} header (a unique "
                    "string per operation, e.g. a UUID), sent again unchanged on each retry",
                )
            return Pass("no key")
        key = parse_key(values)
        if isinstance(key, ProblemType):
            self.policy.count(Event.BAD_KEY)
            return problem(
                key,
                f"send one {config.header} of 1 to {MAX_KEY_LENGTH} visible ASCII characters, "
                'as a string ("...") or a bare token',
            )
        return Covered(key, self._scope(head))

    def _scope(self, head: RequestHead) -> str:
        if self.config.scope is not None:
            scope = self.config.scope(head.request)
            if not isinstance(scope, str):
                raise IdempotencyConfigError(
                    f"the scope callable must return a str, got {type(scope).__name__}"
                )
            return "custom:" + scope
        if head.principal is not None:
            return "user:" + head.principal
        authorization = _first(head.headers, "authorization")
        if authorization is not None:
            return "auth:" + hashlib.sha256(authorization.encode("latin-1", "replace")).hexdigest()
        return ""

    def declared_too_large(self, head: RequestHead) -> Problem | None:
        """A ``413`` when the declared ``Content-Length`` is over the limit."""
        declared = _first(head.headers, "content-length")
        if (
            declared is not None
            and declared.strip().isdigit()
            and int(declared) > self.config.max_body_bytes
        ):
            return self.body_too_large()
        return None

    def body_too_large(self) -> Problem:
        """The ``413`` for a body over ``max_body_bytes``; no claim was made."""
        return problem(
            ProblemType.BODY_TOO_LARGE,
            f"the request body is over {self.config.max_body_bytes} bytes, the largest an "
            "idempotent request may have here",
        )

    # -- with the body ------------------------------------------------------------------

    def invocation(self, head: RequestHead, covered: Covered, body: bytes) -> Invocation:
        """The claim's key, fingerprint, token and timings for a covered request.

        The stored key is a hash of (scope, key): never the raw key.
        """
        config = self.config
        stored = self.digest(length_prefixed([covered.scope.encode(), covered.key.encode("ascii")]))
        headers = [
            (name, ",".join(v for n, v in head.headers if n == name))
            for name in config.fingerprint_headers
        ]
        material = body_material(
            body,
            _first(head.headers, "content-type") or "",
            config.canonical_json,
            config.exclude_fields,  # type: ignore[arg-type]
        )
        return Invocation(
            f"{config.key_prefix}:{stored}",
            fingerprint(self.digest, head.method, head.path, head.query, headers, material),
            new_token(),
            self.lease_ms,
            self.ttl_ms,
        )

    def flow(self, inv: Invocation) -> tuple[Generator[Step, Any, Any], Stored]:
        """The engine's flow for a request, and a note that says, once it ended, if it stored.

        Drive it with ``_sync.drive`` / ``_async.drive``, the app's run being
        the call. A replay returns a :class:`Response` with ``replayed``; a
        first run returns what the call returned; ``stored`` is True only when
        its completion was written (not with ``on_store_error="run"``, nor
        when the store failed at completion or the lease was lost).
        """
        note = Stored()
        return self.watcher.flow(_noting(flow(self.policy, inv), note), inv.key), note

    # -- the response --------------------------------------------------------------------

    def is_stream(self, headers: Iterable[tuple[str, str]]) -> bool:
        """Whether a response start announces a stream (server-sent events) that is never stored."""
        content_type = _first(headers, "content-type") or ""
        return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"

    def captured(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> Response:
        """The response to store, or :class:`NotStored` (the claim is then released).

        Args:
            status: The app's status.
            headers: Its ``(lower-case name, value)`` pairs.
            body: Its whole body (the adapter stopped buffering past the limit).
        """
        headers = list(headers)
        if status >= 500 and not self.config.store_server_errors:
            raise NotStored(f"status {status}")
        if status in RETRY_STATUSES:
            # "Try again" answers (a rate limiter's 429, a timeout's 408): the
            # request was not done, so the retry must run, not replay them.
            raise NotStored(f"status {status}")
        if len(body) > self.max_response_bytes:
            raise NotStored("too large")
        keep = self.config.replayed_headers
        return Response(status, tuple((n, v) for n, v in headers if n in keep), body)

    def fresh_headers(self, headers: list[tuple[str, str]], stored: bool) -> list[tuple[str, str]]:
        """The headers a first (not replayed) response goes out with."""
        if not stored:
            headers = [*headers, (STORED_HEADER, "false")]
        elif self.config.retention_header is not None:
            headers = [*headers, (self.config.retention_header, str(self._retention_s()))]
        return headers

    def _retention_s(self) -> int:
        return math.ceil(self.ttl_ms / 1000)

    def replay_headers(
        self, response: Response, head: RequestHead
    ) -> tuple[list[tuple[str, str]], bytes]:
        """The headers and body a replay goes out with.

        The stored headers, ``Content-Length`` recomputed and
        ``Idempotent-Replayed: true``. A body stored gzip- or
        deflate-encoded is decoded for a client that does not accept that
        coding; other codings replay as stored.
        """
        headers = list(response.headers)
        body = response.body
        coding = (_first(headers, "content-encoding") or "").strip().lower()
        if coding in ("gzip", "deflate") and not _accepts(
            _first(head.headers, "accept-encoding"), coding
        ):
            try:
                body = zlib.decompress(body, wbits=47 if coding == "gzip" else 15)
                headers = [(n, v) for n, v in headers if n != "content-encoding"]
            except zlib.error:
                pass  # not what it says it is: replay it as stored
        headers.append(("content-length", str(len(body))))
        headers.append((REPLAYED_HEADER, "true"))
        if self.config.retention_header is not None:
            headers.append((self.config.retention_header, str(self._retention_s())))
        return headers, body

    # -- errors --------------------------------------------------------------------------

    def problem_for(self, exc: BaseException) -> Problem | None:
        """The problem+json answer to an error of the flow, or None when it is not ours."""
        if isinstance(exc, IdempotencyKeyReuseError):
            return problem(
                ProblemType.KEY_REUSED,
                "this Idempotency-Key was used with a different request (method, path, "
                "query or body); use a new key for a new request",
            )
        if isinstance(exc, IdempotencyAlreadyInProgressError):
            retry_s = max(1, math.ceil(exc.retry_after_ms / 1000))
            return problem(
                ProblemType.IN_PROGRESS,
                "a request with this Idempotency-Key is still being processed; retry after "
                f"{retry_s} s to get its response",
                retry_after_s=retry_s,
            )
        if isinstance(exc, CorruptRecordError):
            return problem(
                ProblemType.STORED_RESPONSE_UNREADABLE,
                "the response stored for this Idempotency-Key cannot be read; use a new key",
            )
        if isinstance(exc, IdempotencyStoreError):
            return problem(
                ProblemType.STORE_UNAVAILABLE,
                "the idempotency store cannot be reached, so the request was not processed; "
                "retry with the same Idempotency-Key",
                retry_after_s=1,
            )
        return None
