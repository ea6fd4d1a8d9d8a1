"""Per-route control (Starlette decorators, FastAPI dependencies), OpenAPI, CORS.

Pure adapter behaviour on the memory store, in process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgi_support import client, key
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from onceonly import IdempotencyConfigError, Stats
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.fastapi import IdempotencyKey, document_idempotency
from onceonly.http.routes import idempotency_exempt, idempotency_options
from onceonly.stores import AsyncMemoryStore

PAY = b'{"amount": 10}'
JSON = {"Content-Type": "application/json"}


class Payment(BaseModel):
    amount: int


def fastapi_shop(**options: Any) -> tuple[FastAPI, list[str]]:
    """A FastAPI app with routes marked every way there is, behind the middleware."""
    runs: list[str] = []
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore(), **options)
    document_idempotency(app)

    @app.post("/payments", status_code=201)
    async def pay(payment: Payment) -> dict[str, Any]:
        runs.append("pay")
        return {"run": len(runs), "amount": payment.amount}

    @app.post("/strict", dependencies=[Depends(IdempotencyKey(required=True, lease_seconds=7))])
    async def strict(payment: Payment) -> dict[str, Any]:
        runs.append("strict")
        return {"run": len(runs)}

    @app.post("/search", dependencies=[Depends(IdempotencyKey(exempt=True))])
    async def search(payment: Payment) -> dict[str, Any]:
        runs.append("search")
        return {"run": len(runs)}

    @app.post("/decorated")
    @idempotency_options(required=True)
    async def decorated(payment: Payment) -> dict[str, Any]:
        runs.append("decorated")
        return {"run": len(runs)}

    @app.get("/payments")
    async def listing() -> list[str]:
        return runs

    webhooks = APIRouter(dependencies=[Depends(IdempotencyKey(exempt=True))])

    @webhooks.post("/hook")
    async def hook(payment: Payment) -> dict[str, Any]:
        runs.append("hook")
        return {"run": len(runs)}

    @webhooks.post("/hook/strict", dependencies=[Depends(IdempotencyKey(required=True))])
    async def strict_hook(payment: Payment) -> dict[str, Any]:
        runs.append("strict_hook")
        return {"run": len(runs)}

    app.include_router(webhooks, prefix="/v1")
    admin = APIRouter()

    @admin.post("/refunds/{rid}")
    async def refund(rid: int, payment: Payment) -> dict[str, Any]:
        runs.append("refund")
        return {"run": len(runs), "rid": rid}

    app.include_router(
        admin, prefix="/admin", dependencies=[Depends(IdempotencyKey(required=True))]
    )
    return app, runs


def test_fastapi_routes_are_marked_by_dependency_router_include_or_decorator() -> None:
    async def scenario() -> None:
        app, runs = fastapi_shop()
        async with client(app) as c:
            # Unmarked: the middleware's options (key optional, replays).
            assert (await c.post("/payments", content=PAY, headers=JSON)).status_code == 201
            a = await c.post("/payments", content=PAY, headers=key("p", **JSON))
            b = await c.post("/payments", content=PAY, headers=key("p", **JSON))
            assert b.headers["idempotent-replayed"] == "true"
            assert b.json() == a.json()
            # Required by the route's dependency, the decorator, the include.
            for path in ("/strict", "/decorated", "/admin/refunds/3", "/v1/hook/strict"):
                missing = await c.post(path, content=PAY, headers=JSON)
                assert missing.status_code == 400, path
                assert missing.json()["type"] == "urn:onceonly:problem:key-missing"
            refunds = [
                await c.post("/admin/refunds/3", content=PAY, headers=key("r", **JSON))
                for _ in "ab"
            ]
            assert refunds[1].headers["idempotent-replayed"] == "true"
            # Exempt by the route's or the router's dependency: runs every time.
            for path in ("/search", "/v1/hook"):
                for _ in "ab":
                    answer = await c.post(path, content=PAY, headers=key("x", **JSON))
                    assert "idempotent-replayed" not in answer.headers
            # The route's own option, in its 409.
            hook = await c.post("/v1/hook/strict", content=PAY, headers=key("h", **JSON))
            assert hook.status_code == 200
        assert runs == ["pay", "pay", "refund", "search", "search", "hook", "hook", "strict_hook"]

    asyncio.run(scenario())


def test_a_routes_own_lease_shows_in_its_409() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def held(request: Request) -> Response:
            entered.set()
            await release.wait()
            return JSONResponse({}, 201)

        @idempotency_options(lease_seconds=7)  # marks this function: one per route
        async def slow(request: Request) -> Response:
            return await held(request)

        app = Starlette(
            routes=[
                Route("/slow", slow, methods=["POST"]),
                Route("/default", held, methods=["POST"]),
            ]
        )
        app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore(), lease_seconds=60)
        async with client(app) as c:
            for path, retry_after in (("/slow", "7"), ("/default", "60")):
                entered.clear()
                release.clear()
                first = asyncio.ensure_future(c.post(path, content=PAY, headers=key(path)))
                await entered.wait()
                busy = await c.post(path, content=PAY, headers=key(path))
                release.set()
                await first
                assert busy.status_code == 409
                assert busy.headers["retry-after"] == retry_after

    asyncio.run(scenario())


def test_starlette_decorators_reach_through_mounts() -> None:
    runs: list[str] = []

    @idempotency_exempt
    async def search(request: Request) -> Response:
        runs.append("search")
        return JSONResponse({"n": len(runs)})

    @idempotency_options(required=True)
    async def pay(request: Request) -> Response:
        runs.append("pay")
        return JSONResponse({"n": len(runs)}, 201)

    async def scenario() -> None:
        api = Mount(
            "/api",
            routes=[
                Route("/search", search, methods=["POST"]),
                Mount("/v2", routes=[Route("/pay/{pid}", pay, methods=["POST"])]),
            ],
        )
        app = Starlette(routes=[api])
        app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore())
        async with client(app) as c:
            missing = await c.post("/api/v2/pay/1", content=PAY)
            paid = [await c.post("/api/v2/pay/1", content=PAY, headers=key("k")) for _ in "ab"]
            found = [await c.post("/api/search", content=PAY, headers=key("k")) for _ in "ab"]
            unknown = await c.post("/api/nowhere", content=PAY, headers=key("n"))
        assert missing.status_code == 400
        assert paid[1].headers["idempotent-replayed"] == "true"
        assert [r.json()["n"] for r in found] == [2, 3]
        assert unknown.status_code == 404  # no route: the middleware's own options
        assert runs == ["pay", "search", "search"]

    asyncio.run(scenario())


def test_openapi_documents_the_header_and_the_problems_on_covered_routes_only() -> None:
    app, _ = fastapi_shop(required=False)
    schema = app.openapi()
    paths = schema["paths"]

    def header_of(path: str, method: str = "post") -> dict[str, Any] | None:
        for parameter in paths[path][method].get("parameters", []):
            if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
                return dict(parameter)
        return None

    payments = header_of("/payments")
    assert payments is not None
    assert payments["required"] is False
    assert payments["schema"]["maxLength"] == 255
    for path in ("/strict", "/decorated", "/admin/refunds/{rid}", "/v1/hook/strict"):
        documented = header_of(path)
        assert documented is not None, path
        assert documented["required"] is True, path
    for path in ("/search", "/v1/hook"):
        assert header_of(path) is None, path
    assert header_of("/payments", "get") is None
    responses = paths["/payments"]["post"]["responses"]
    for status in ("400", "409", "413", "422", "503"):
        assert "application/problem+json" in responses[status]["content"], status
    assert "Retry-After" in responses["409"]["headers"]
    # FastAPI's own 422 (validation) stays beside ours.
    assert "application/json" in responses["422"]["content"]
    assert "urn:onceonly:problem:key-reused" in responses["422"]["description"]
    assert "IdempotencyProblem" in schema["components"]["schemas"]
    assert "400" not in paths["/search"]["post"]["responses"]
    assert app.openapi() == schema  # built once, documented once


def test_openapi_of_a_store_error_policy_run_has_no_503_and_needs_the_middleware() -> None:
    app, _ = fastapi_shop(on_store_error="run")
    assert "503" not in app.openapi()["paths"]["/payments"]["post"]["responses"]
    bare = FastAPI()

    @bare.post("/x")
    async def x() -> None:
        return None

    document_idempotency(bare)
    with pytest.raises(IdempotencyConfigError, match="no IdempotencyMiddleware"):
        bare.openapi()


def test_the_openapi_json_route_serves_the_documented_schema() -> None:
    async def scenario() -> None:
        app, _ = fastapi_shop()
        async with client(app) as c:
            served = (await c.get("/openapi.json")).json()
        parameters = served["paths"]["/payments"]["post"]["parameters"]
        assert any(p["name"] == "Idempotency-Key" for p in parameters)

    asyncio.run(scenario())


def test_cors_preflight_allows_the_key_and_replays_expose_their_marker() -> None:
    async def scenario() -> None:
        app, _ = fastapi_shop()
        # Added after: outside the idempotency middleware, so its answers get CORS headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["https://shop.example"],
            allow_methods=["POST"],
            allow_headers=["Idempotency-Key", "Content-Type"],
            expose_headers=["Idempotent-Replayed", "Idempotency-Stored", "Retry-After"],
        )
        origin = {"Origin": "https://shop.example", **JSON}
        async with client(app) as c:
            preflight = await c.options(
                "/payments",
                headers={
                    **origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "idempotency-key, content-type",
                },
            )
            first = await c.post("/payments", content=PAY, headers=key("c", **origin))
            replay = await c.post("/payments", content=PAY, headers=key("c", **origin))
            bad = await c.post("/payments", content=PAY, headers={**origin, "Idempotency-Key": ""})
        assert preflight.status_code == 200
        assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
        assert first.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        for answer in (replay, bad):
            assert answer.headers["access-control-allow-origin"] == "https://shop.example"
            assert "Idempotent-Replayed" in answer.headers["access-control-expose-headers"]
        assert bad.status_code == 400

    asyncio.run(scenario())


def test_stats_given_to_add_middleware_count_every_routes_requests() -> None:
    stats = Stats()

    async def scenario() -> None:
        @idempotency_options(lease_seconds=5)
        async def pay(request: Request) -> Response:
            return JSONResponse({}, 201)

        async def other(request: Request) -> Response:
            return JSONResponse({}, 201)

        app = Starlette(
            routes=[Route("/a", pay, methods=["POST"]), Route("/b", other, methods=["POST"])]
        )
        app.add_middleware(IdempotencyMiddleware, store=AsyncMemoryStore(), stats=stats)
        async with client(app) as c:
            for path in ("/a", "/a", "/b", "/b"):
                await c.post(path, content=PAY, headers=key(path))
            await c.post("/a", content=PAY, headers={"Idempotency-Key": ""})

    asyncio.run(scenario())
    counts = stats.snapshot()
    assert (counts["executed"], counts["replayed"], counts["bad_key"]) == (2, 2, 1)
