"""HttpConfig: the options of the Idempotency-Key middlewares, checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..config import IdempotencyConfig, InProgressPolicy, StoreErrorPolicy
from ..errors import IdempotencyConfigError

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_REPLAYED_HEADERS",
    "NEVER_REPLAYED_HEADERS",
    "HttpConfig",
]

DEFAULT_METHODS = frozenset({"POST", "PATCH"})
# Methods that are safe by definition: never covered, even with a key.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
DEFAULT_REPLAYED_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-language",
        "content-location",
        "location",
        "etag",
        "last-modified",
        "cache-control",
        "expires",
        "vary",
        "link",
        "retry-after",
    }
)
# Never stored nor replayed, whatever the options say: credentials, the
# connection's own headers, and what the server sets per response.
NEVER_REPLAYED_HEADERS = frozenset(
    {
        "set-cookie",
        "authorization",
        "www-authenticate",
        "proxy-authenticate",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _header_names(option: str, names: object) -> frozenset[str]:
    if isinstance(names, str) or not isinstance(names, Collection):
        raise IdempotencyConfigError(
            f"{option} must be a collection of header names, got {names!r}"
        )
    out = set()
    for name in names:
        if not isinstance(name, str) or not name or set(name) - _TOKEN_CHARS:
            raise IdempotencyConfigError(f"{option}: {name!r} is not a header name")
        out.add(name.lower())
    return frozenset(out)


def _methods(methods: object) -> frozenset[str]:
    if isinstance(methods, str) or not isinstance(methods, Collection) or not methods:
        raise IdempotencyConfigError(f"methods must be a non-empty collection, got {methods!r}")
    out = set()
    for method in methods:
        if not isinstance(method, str) or not method or set(method) - _TOKEN_CHARS:
            raise IdempotencyConfigError(f"methods: {method!r} is not an HTTP method")
        upper = method.upper()
        if upper in _SAFE_METHODS:
            raise IdempotencyConfigError(
                f"methods: {upper} is safe by definition (it changes nothing) and is never covered"
            )
        out.add(upper)
    return frozenset(out)


def _size(option: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or value < 0:
        raise IdempotencyConfigError(
            f"{option} must be an integer number of bytes >= 0, got {value!r}"
        )


@dataclass(frozen=True)
class HttpConfig:
    """Options of the Idempotency-Key middlewares (ASGI, WSGI, Django); validated when built.

    Args:
        methods: The methods covered (default POST and PATCH; PUT and DELETE
            may be added). GET, HEAD, OPTIONS and TRACE are never covered.
        header: The request header that carries the key.
        required: A covered request without a key gets ``400`` (default: it
            passes through unprotected).
        expires_after_seconds: How long a stored response replays (default 24 h).
        lease_seconds: How long a claim holds while the handler runs.
        heartbeat: Renew the lease every lease/3 while the handler runs.
        on_in_progress: "raise": a duplicate of a running request gets ``409``
            with ``Retry-After``; "wait": it waits up to ``wait_timeout_seconds``
            for the replay.
        wait_timeout_seconds: Longest wait with ``on_in_progress="wait"``.
        on_store_error: "raise": ``503`` when the store fails at the claim;
            "run": pass through unprotected (``Idempotency-Stored: false``).
        max_body_bytes: Largest request body read (declared or streamed);
            over it the answer is ``413`` and no claim is made.
        max_response_bytes: Largest response body stored; a larger one is
            delivered as it streams, not stored (default 1 MiB; the store's own
            limit applies too).
        store_server_errors: Store and replay 5xx responses too (as Stripe
            does); by default a 5xx releases the claim so the retry runs.
            408, 425 and 429 (send it again) are never stored.
        replayed_headers: Response headers stored and replayed (lower or any
            case); ``Set-Cookie``, credentials, hop-by-hop headers, ``Date``,
            ``Server`` and ``Content-Length`` never are.
        canonical_json: Fingerprint a JSON body by its data (sorted keys, no
            insignificant whitespace), so a re-serialised retry matches.
        exclude_fields: Top-level fields of a JSON body left out of the
            fingerprint (a client timestamp, a nonce); implies ``canonical_json``.
        fingerprint_headers: Request headers that are part of the fingerprint
            (e.g. an API version header).
        scope: ``scope(request) -> str``: whose keys these are; the default is
            the authenticated principal the framework gives, else a hash of
            the ``Authorization`` header, else one global scope.
        key_prefix: Prefix of the stored keys (default ``"http"``).
        retention_header: A response header that tells the client how long
            (seconds) its key replays, or None (default) for none.
        hash_function: A ``hashlib`` algorithm for stored keys and fingerprints.

    Raises:
        IdempotencyConfigError: An option is out of range or of the wrong type.
    """

    methods: Collection[str] = DEFAULT_METHODS
    header: str = "Idempotency-Key"
    required: bool = False
    expires_after_seconds: float = 24 * 3600
    lease_seconds: float = 60
    heartbeat: bool = False
    on_in_progress: InProgressPolicy | str = InProgressPolicy.RAISE
    wait_timeout_seconds: float = 30
    on_store_error: StoreErrorPolicy | str = StoreErrorPolicy.RAISE
    max_body_bytes: int = 10 * 1024 * 1024
    max_response_bytes: int = 1024 * 1024
    store_server_errors: bool = False
    replayed_headers: Collection[str] = DEFAULT_REPLAYED_HEADERS
    canonical_json: bool = False
    exclude_fields: Collection[str] = ()
    fingerprint_headers: Collection[str] = ()
    scope: Callable[[Any], str] | None = None
    key_prefix: str = "http"
    retention_header: str | None = None
    hash_function: str = "sha256"
    # Derived once: the engine's options (lease, retention, waits, store errors).
    engine: IdempotencyConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are set once, here
        set_(self, "methods", _methods(self.methods))
        set_(self, "header", next(iter(_header_names("header", [self.header]))))
        for name in ("required", "heartbeat", "store_server_errors", "canonical_json"):
            if not isinstance(getattr(self, name), bool):
                raise IdempotencyConfigError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        _size("max_body_bytes", self.max_body_bytes)
        _size("max_response_bytes", self.max_response_bytes)
        replayed = _header_names("replayed_headers", self.replayed_headers)
        set_(self, "replayed_headers", replayed - NEVER_REPLAYED_HEADERS)
        if isinstance(self.exclude_fields, str) or not all(
            isinstance(f, str) and f for f in self.exclude_fields
        ):
            raise IdempotencyConfigError(
                "exclude_fields must be a collection of JSON field names, got "
                f"{self.exclude_fields!r}"
            )
        set_(self, "exclude_fields", frozenset(self.exclude_fields))
        set_(
            self,
            "fingerprint_headers",
            tuple(sorted(_header_names("fingerprint_headers", self.fingerprint_headers))),
        )
        if self.scope is not None and not callable(self.scope):
            raise IdempotencyConfigError(
                f"scope must be callable(request) -> str, got {self.scope!r}"
            )
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise IdempotencyConfigError(
                f"key_prefix must be a non-empty string, got {self.key_prefix!r}"
            )
        if self.retention_header is not None:
            set_(
                self,
                "retention_header",
                next(iter(_header_names("retention_header", [self.retention_header]))),
            )
        # The engine's own checks cover the timings, the policies and the hash.
        set_(
            self,
            "engine",
            IdempotencyConfig(
                expires_after_seconds=self.expires_after_seconds,
                lease_seconds=self.lease_seconds,
                heartbeat=self.heartbeat,
                on_in_progress=self.on_in_progress,
                wait_timeout_seconds=self.wait_timeout_seconds,
                on_store_error=self.on_store_error,
                hash_function=self.hash_function,
                key_prefix=self.key_prefix,
            ),
        )
        set_(self, "on_in_progress", self.engine.on_in_progress)
        set_(self, "on_store_error", self.engine.on_store_error)

    def replace(self, **changes: Any) -> HttpConfig:
        """A copy with some options changed (per-route options), checked again."""
        return dataclasses.replace(self, **changes)
