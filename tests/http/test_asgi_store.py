"""The ASGI middleware on every async store: runs once, replays, conflicts, releases, leases.

In process (httpx's ASGITransport over a Starlette app); each test on memory,
SQLite, Redis/Valkey standalone and cluster, and DynamoDB, on a manual clock.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from asgi_support import Shop, client, key
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onceonly import Event, Stats
from onceonly.http import HttpConfig
from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.core import Covered, Gate, RequestHead
from testkit import ManualClock

PAY = b'{"amount": 10}'


def test_a_first_request_runs_and_its_retry_replays_status_body_and_safe_headers(
    http_async_store: Any,
) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store)
        async with shop.client() as c:
            first = await c.post("/payments", content=PAY, headers=key("k-1"))
            again = await c.post("/payments", content=PAY, headers=key("k-1"))
            bare = await c.post("/payments", content=PAY, headers={"Idempotency-Key": "k-1"})
        assert shop.runs == 1
        assert first.status_code == 201
        assert first.headers["set-cookie"] == "session=s3cret"  # the first answer is the app's own
        assert "idempotent-replayed" not in first.headers
        assert "idempotency-stored" not in first.headers
        for replay in (again, bare):  # a bare token is the same key
            assert replay.status_code == 201
            assert replay.content == first.content
            assert replay.headers["location"] == "/payments/1"
            assert replay.headers["etag"] == '"p1"'
            assert replay.headers["content-type"] == "application/json"
            assert replay.headers["content-length"] == str(len(first.content))
            assert replay.headers["idempotent-replayed"] == "true"
            assert "set-cookie" not in replay.headers
            assert "x-request-id" not in replay.headers
        assert shop.stats[Event.EXECUTED] == 1
        assert shop.stats[Event.REPLAYED] == 2

    asyncio.run(scenario())


def test_duplicates_in_flight_get_409_with_retry_after_and_another_payload_422(
    http_async_store: Any,
) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store, lease_seconds=30)
        shop.hold = True
        async with shop.client() as c:
            first = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("k")))
            await shop.entered.wait()
            busy = await c.post("/payments", content=PAY, headers=key("k"))
            other = await c.post("/payments", content=b'{"amount": 99}', headers=key("k"))
            shop.release.set()
            done = await first
            later_other = await c.post("/payments", content=b'{"amount": 99}', headers=key("k"))
        assert shop.runs == 1
        assert done.status_code == 201
        assert busy.status_code == 409
        assert busy.headers["retry-after"] == "30"
        assert busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["type"] == "urn:onceonly:problem:in-progress"
        # 422 wins over 409: a different payload is refused even while the first runs.
        for reused in (other, later_other):
            assert reused.status_code == 422
            assert reused.json()["type"] == "urn:onceonly:problem:key-reused"
        assert shop.stats[Event.IN_PROGRESS] == 1
        assert shop.stats[Event.KEY_REUSE] == 2

    asyncio.run(scenario())


def test_with_on_in_progress_wait_a_duplicate_waits_for_the_replay(http_async_store: Any) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store, on_in_progress="wait", wait_timeout_seconds=30)
        shop.hold = True
        async with shop.client() as c:
            first = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("k")))
            await shop.entered.wait()
            second = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("k")))
            async with asyncio.timeout(10):  # until it found the claim and waits
                while shop.stats[Event.WAITED] == 0:
                    await asyncio.sleep(0.001)
            shop.release.set()
            a, b = await first, await second
        assert shop.runs == 1
        assert (a.status_code, b.status_code) == (201, 201)
        assert b.content == a.content
        assert b.headers["idempotent-replayed"] == "true"

    asyncio.run(scenario())


def test_an_exception_in_the_app_releases_the_key_so_the_retry_runs(http_async_store: Any) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store)
        shop.fail_next = 1
        async with shop.client() as c:
            failed = await c.post("/payments", content=PAY, headers=key("k"))
            retried = await c.post("/payments", content=PAY, headers=key("k"))
            replayed = await c.post("/payments", content=PAY, headers=key("k"))
        assert failed.status_code == 500  # Starlette's answer to the exception we re-raised
        assert retried.status_code == 201
        assert "idempotent-replayed" not in retried.headers
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json()["id"] == 2
        assert shop.runs == 2
        assert shop.stats[Event.RELEASED] == 1

    asyncio.run(scenario())


def test_a_5xx_is_delivered_not_stored_unless_store_server_errors(http_async_store: Any) -> None:
    async def scenario() -> None:
        plain = Shop(http_async_store)
        async with plain.client() as c:
            first = await c.post("/status/503", content=PAY, headers=key("k5"))
            again = await c.post("/status/503", content=PAY, headers=key("k5"))
        assert (first.status_code, again.status_code) == (503, 503)
        assert first.headers["idempotency-stored"] == "false"
        assert "idempotent-replayed" not in again.headers
        assert plain.runs == 2
        assert plain.stats[Event.NOT_STORED] == 2

        stripe = Shop(http_async_store, store_server_errors=True, key_prefix="stripe")
        async with stripe.client() as c:
            first = await c.post("/status/500", content=PAY, headers=key("k5"))
            again = await c.post("/status/500", content=PAY, headers=key("k5"))
        assert (first.status_code, again.status_code) == (500, 500)
        assert "idempotency-stored" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert stripe.runs == 1

    asyncio.run(scenario())


def test_4xx_answers_are_stored_and_replayed(http_async_store: Any) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store)
        async with shop.client() as c:
            first = await c.post("/status/402", content=PAY, headers=key("k4"))
            again = await c.post("/status/402", content=PAY, headers=key("k4"))
        assert (first.status_code, again.status_code) == (402, 402)
        assert again.headers["idempotent-replayed"] == "true"
        assert shop.runs == 1

    asyncio.run(scenario())


def test_after_retention_the_key_is_new_and_the_retention_header_says_how_long(
    http_async_store: Any, clock: ManualClock
) -> None:
    async def scenario() -> None:
        shop = Shop(
            http_async_store, expires_after_seconds=600, retention_header="Idempotency-Retention"
        )
        async with shop.client() as c:
            first = await c.post("/payments", content=PAY, headers=key("k"))
            clock.advance(599_000)
            replay = await c.post("/payments", content=PAY, headers=key("k"))
            clock.advance(2_000)
            fresh = await c.post("/payments", content=PAY, headers=key("k"))
        assert first.headers["idempotency-retention"] == "600"
        assert replay.headers["idempotency-retention"] == "600"
        assert replay.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in fresh.headers
        assert shop.runs == 2

    asyncio.run(scenario())


def test_an_orphan_is_taken_over_after_its_lease_and_the_stale_completion_is_refused(
    http_async_store: Any, clock: ManualClock
) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store, lease_seconds=5)
        shop.hold = True
        async with shop.client() as c:
            stale = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("k")))
            await shop.entered.wait()
            clock.advance(5_001)  # the first worker looks dead: its lease is over
            shop.hold = False
            owner = await c.post("/payments", content=PAY, headers=key("k"))
            shop.release.set()
            late = await stale
            replay = await c.post("/payments", content=PAY, headers=key("k"))
        assert owner.status_code == 201
        assert owner.json()["id"] == 2
        # The stale run still answers its client, but its completion was refused.
        assert late.status_code == 201
        assert late.headers["idempotency-stored"] == "false"
        assert replay.json()["id"] == 2
        assert replay.headers["idempotent-replayed"] == "true"
        assert shop.stats[Event.TAKEOVER] == 1
        assert shop.stats[Event.LEASE_LOST] == 1

    asyncio.run(scenario())


def test_keys_are_scoped_by_authorization_never_replayed_across_tenants(
    http_async_store: Any,
) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store)
        async with shop.client() as c:
            a = await c.post("/payments", content=PAY, headers=key("k", Authorization="Bearer A"))
            b = await c.post("/payments", content=PAY, headers=key("k", Authorization="Bearer B"))
            a2 = await c.post("/payments", content=PAY, headers=key("k", Authorization="Bearer A"))
            anonymous = await c.post("/payments", content=PAY, headers=key("k"))
        assert [r.json()["id"] for r in (a, b, a2, anonymous)] == [1, 2, 1, 3]
        assert a2.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in b.headers
        assert shop.runs == 3

    asyncio.run(scenario())


class HeaderUser(AuthenticationBackend):
    """Authenticates ``X-User: name`` as a Starlette ``SimpleUser`` (whose token changes)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return None if name is None else (AuthCredentials(["authenticated"]), SimpleUser(name))


def test_the_scope_is_the_user_an_auth_middleware_set(http_async_store: Any) -> None:
    runs: list[str] = []

    async def pay(request: Request) -> Response:
        runs.append(request.user.display_name if request.user.is_authenticated else "-")
        return JSONResponse({"run": len(runs)}, status_code=201)

    async def scenario() -> None:
        app = Starlette(
            routes=[Route("/payments", pay, methods=["POST"])],
            middleware=[  # the first is the outermost: auth runs before the idempotency check
                Middleware(AuthenticationMiddleware, backend=HeaderUser()),
                Middleware(IdempotencyMiddleware, store=http_async_store, stats=Stats()),
            ],
        )
        async with client(app) as c:

            async def post(user: str, token: str) -> httpx.Response:
                return await c.post(
                    "/payments",
                    content=PAY,
                    headers=key("k", **{"X-User": user, "Authorization": token}),
                )

            alice = await post("alice", "Bearer t1")
            bob = await post("bob", "Bearer t1")
            # The same user with a refreshed token: the same scope, a replay.
            alice_again = await post("alice", "Bearer t2")
        assert runs == ["alice", "bob"]
        assert alice_again.headers["idempotent-replayed"] == "true"
        assert alice_again.json() == alice.json()
        assert "idempotent-replayed" not in bob.headers

    asyncio.run(scenario())


def test_binary_responses_up_to_the_stores_limit_replay_byte_for_byte(
    http_async_store: Any,
) -> None:
    holder: dict[str, Any] = {}

    async def blob(request: Request) -> Response:
        holder["runs"] = holder.get("runs", 0) + 1
        size = holder["size"]
        return Response((bytes(range(256)) * (size // 256 + 1))[:size], 200, media_type="image/png")

    async def scenario() -> None:
        app = Starlette(routes=[Route("/blob", blob, methods=["POST"])])
        middleware = IdempotencyMiddleware(app, store=http_async_store)
        holder["size"] = min(middleware.gate.max_response_bytes, 256 * 1024)
        async with client(middleware) as c:
            first = await c.post("/blob", content=b"x", headers=key("b"))
            again = await c.post("/blob", content=b"x", headers=key("b"))
        assert len(first.content) == holder["size"]
        assert "idempotency-stored" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert holder["runs"] == 1

    asyncio.run(scenario())


def test_patch_is_covered_put_and_get_pass_through_even_with_a_key(http_async_store: Any) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store)
        async with shop.client() as c:
            patched = [await c.patch("/payments/7", content=PAY, headers=key("p")) for _ in "ab"]
            put = [await c.put("/payments", content=PAY, headers=key("u")) for _ in "ab"]
            got = [await c.get("/payments", headers=key("g")) for _ in "ab"]
        assert patched[1].headers["idempotent-replayed"] == "true"
        assert json.loads(patched[1].content) == {"run": 1, "pid": "7"}
        assert all("idempotent-replayed" not in r.headers for r in put + got)
        assert shop.runs == 1 + 2 + 2

        with_put = Shop(http_async_store, methods={"POST", "PUT"}, key_prefix="put")
        async with with_put.client() as c:
            put = [await c.put("/payments", content=PAY, headers=key("u")) for _ in "ab"]
        assert put[1].headers["idempotent-replayed"] == "true"
        assert with_put.runs == 1

    asyncio.run(scenario())


def test_with_heartbeat_a_long_run_keeps_its_claim_past_the_first_lease(
    http_async_store: Any, clock: ManualClock
) -> None:
    async def scenario() -> None:
        shop = Shop(http_async_store, lease_seconds=0.3, heartbeat=True)
        shop.hold = True
        head = RequestHead("POST", "/payments", b"", [])
        stored_key = (
            Gate(HttpConfig(), http_async_store).invocation(head, Covered("h", ""), PAY).key
        )
        async with shop.client() as c:
            first = asyncio.ensure_future(c.post("/payments", content=PAY, headers=key("h")))
            await shop.entered.wait()
            claimed = await http_async_store.get(stored_key)
            clock.advance(250)
            async with asyncio.timeout(10):  # a beat every 100 ms renews it from the store's now
                while (await http_async_store.get(stored_key)).deadline_ms <= claimed.deadline_ms:
                    await asyncio.sleep(0.01)
            clock.advance(250)  # past the first lease: still held
            busy = await c.post("/payments", content=PAY, headers=key("h"))
            shop.release.set()
            done = await first
        assert busy.status_code == 409
        assert done.status_code == 201
        assert shop.runs == 1

    asyncio.run(scenario())
