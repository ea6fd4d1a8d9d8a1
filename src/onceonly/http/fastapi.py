"""FastAPI helpers for the ASGI Idempotency-Key middleware: a route marker and the OpenAPI schema.

::

    from fastapi import APIRouter, Depends, FastAPI
    from onceonly.http.asgi import IdempotencyMiddleware
    from onceonly.http.fastapi import IdempotencyKey, document_idempotency

    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, store=store)
    document_idempotency(app)

    @app.post("/payments", dependencies=[Depends(IdempotencyKey(required=True))])
    async def pay(...): ...

    @app.post("/search", dependencies=[Depends(IdempotencyKey(exempt=True))])
    async def search(...): ...

    slow = APIRouter(dependencies=[Depends(IdempotencyKey(lease_seconds=300, heartbeat=True))])

The marker does nothing when FastAPI calls it; the middleware, which runs
before FastAPI routes the request, finds it by matching the request against
the app's routes (route, router and ``include_router`` dependencies; the most
specific wins) and applies its options. ``onceonly.http.routes.idempotency_options``
and ``idempotency_exempt`` do the same as decorators on the endpoint.

CORS: a browser sends ``Idempotency-Key`` only if preflight allows it, and
reads the replay marker only if exposed; add ``CORSMiddleware`` after the
idempotency middleware (outside it) with ``allow_headers=["Idempotency-Key"]``
and ``expose_headers=["Idempotent-Replayed", "Idempotency-Stored", "Retry-After"]``.

Nothing here imports FastAPI: its objects are read by their attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import StoreErrorPolicy
from ..errors import IdempotencyConfigError
from .asgi import IdempotencyMiddleware, config_from
from .config import HttpConfig
from .core import MAX_KEY_LENGTH
from .problems import ProblemType
from .routes import RouteOptions, candidates, markers_of, merged_options

__all__ = ["IdempotencyKey", "document_idempotency"]

_PROBLEM_SCHEMA = "IdempotencyProblem"


class IdempotencyKey(RouteOptions):
    """A FastAPI dependency that marks routes for the middleware: ``Depends(IdempotencyKey(...))``.

    Args:
        exempt: The middleware passes these routes through untouched.
        **options: :class:`~onceonly.http.HttpConfig` fields for these routes
            (``required=True``, ``lease_seconds=300``, ``canonical_json=True``...).

    Raises:
        IdempotencyConfigError: An unknown option or a bad value.
    """

    __slots__ = ()

    async def __call__(self) -> None:
        """Nothing: the middleware did its part before the route ran."""


def _middleware_config(app: Any) -> HttpConfig:
    for entry in getattr(app, "user_middleware", ()):
        if getattr(entry, "cls", None) is IdempotencyMiddleware:
            options = dict(getattr(entry, "kwargs", {}))
            options.pop("store", None)
            options.pop("stats", None)
            return config_from(options.pop("config", None), options)
    raise IdempotencyConfigError(
        "document_idempotency: the app has no IdempotencyMiddleware (app.add_middleware); "
        "add it, or pass its config= here"
    )


def _display(header: str) -> str:
    return "-".join(part[:1].upper() + part[1:] for part in header.split("-"))


def _problem_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/problem+json": {
                "schema": {"$ref": f"#/components/schemas/{_PROBLEM_SCHEMA}"}
            }
        },
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying with the same key",
                "schema": {"type": "integer"},
            }
        }
    return response


def _responses(config: HttpConfig) -> dict[str, dict[str, Any]]:
    header = _display(config.header)
    responses = {
        "400": _problem_response(
            f"{header} missing (where required) or not valid ({ProblemType.KEY_INVALID.uri}, "
            f"{ProblemType.KEY_MISSING.uri})"
        ),
        "409": _problem_response(
            f"A request with this {header} is still in progress ({ProblemType.IN_PROGRESS.uri})",
            retry_after=True,
        ),
        "413": _problem_response(f"Request body too large ({ProblemType.BODY_TOO_LARGE.uri})"),
        "422": _problem_response(
            f"{header} used before with another request ({ProblemType.KEY_REUSED.uri})"
        ),
    }
    if config.on_store_error is StoreErrorPolicy.RAISE:
        responses["503"] = _problem_response(
            f"Idempotency store unavailable ({ProblemType.STORE_UNAVAILABLE.uri})",
            retry_after=True,
        )
    return responses


def _document_operation(operation: dict[str, Any], config: HttpConfig) -> None:
    header = _display(config.header)
    parameters = operation.setdefault("parameters", [])
    if not any(
        p.get("in") == "header" and str(p.get("name", "")).lower() == config.header
        for p in parameters
    ):
        parameters.append(
            {
                "name": header,
                "in": "header",
                "required": config.required,
                "description": (
                    "A unique key per operation (e.g. a UUID), sent again unchanged on each "
                    "retry: the operation runs once and retries get its stored response "
                    "(marked Idempotent-Replayed: true)"
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
            }
        )
    responses = operation.setdefault("responses", {})
    for status, response in _responses(config).items():
        existing = responses.get(status)
        if existing is None:
            responses[status] = response
        elif "application/problem+json" not in existing.get("content", {}):
            # FastAPI's own 422 (validation): the same status, another body.
            existing.setdefault("content", {}).update(response["content"])
            existing["description"] = (
                f"{existing.get('description', '')}; or {response['description']}"
            )


def _problem_schema() -> dict[str, Any]:
    return {
        "title": _PROBLEM_SCHEMA,
        "description": "An RFC 9457 problem from the Idempotency-Key middleware",
        "type": "object",
        "properties": {
            "type": {"type": "string", "description": "A stable URI per case"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "required": ["type", "title", "status", "detail"],
    }


def document_idempotency(app: Any, config: HttpConfig | None = None) -> None:
    """Make ``app.openapi()`` document the Idempotency-Key on the routes the middleware covers.

    Each covered operation (a covered method, not exempt, its route's options
    applied) gets the header parameter (required where the key is) and the
    ``application/problem+json`` answers (400, 409 with ``Retry-After``, 413,
    422 added beside FastAPI's own, 503 when the store failing is an error).
    ``app.openapi`` is wrapped, FastAPI's documented way to extend the schema.

    Args:
        app: The FastAPI app.
        config: The middleware's options; None reads them from the
            ``IdempotencyMiddleware`` in ``app.user_middleware`` when the
            schema is built.

    Raises:
        IdempotencyConfigError: (when the schema is built) no config given and
            no middleware added.
    """
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        base = config if config is not None else _middleware_config(app)
        paths = schema.get("paths", {})
        documented = False
        for route in candidates(app.routes):
            methods = getattr(route, "methods", None)
            path = getattr(route, "path_format", None)
            if not methods or path not in paths or getattr(route, "dependant", None) is None:
                continue
            options = merged_options(markers_of(route))
            if options is None:
                continue  # exempt
            route_config = base.replace(**options) if options else base
            for method in sorted(m for m in methods if m in route_config.methods):
                operation = paths[path].get(method.lower())
                if operation is not None:
                    _document_operation(operation, route_config)
                    documented = True
        if documented:
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault(_PROBLEM_SCHEMA, _problem_schema())
        return schema

    app.openapi = openapi
