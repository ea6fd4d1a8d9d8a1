"""The payments API on FastAPI: ``POST /payments`` charges once per ``Idempotency-Key``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ledger import Ledger, is_slow
from pydantic import BaseModel

from onceonly.http.asgi import IdempotencyMiddleware
from onceonly.http.fastapi import IdempotencyKey, document_idempotency


class Payment(BaseModel):
    id: str
    cents: int


def build_app(ledger: Ledger, store: Any | None, slow_seconds: float) -> FastAPI:
    """The app; ``store=None`` builds it without the middleware (to see the duplicates).

    Args:
        ledger: Where charges go.
        store: An async onceonly store, or None.
        slow_seconds: How long a slow payment's response is held back.
    """
    app = FastAPI(title="payments")

    @app.post("/payments", status_code=201, dependencies=[Depends(IdempotencyKey(required=True))])
    async def pay(payment: Payment) -> dict[str, Any]:
        charge = ledger.charge(payment.id, payment.cents)
        if is_slow(payment.id):
            await asyncio.sleep(slow_seconds)  # charged, but the answer is late
        return {"charge": charge, "payment": payment.id, "cents": payment.cents}

    if store is not None:
        # A retry of a payment still being made waits for its answer (up to 10 s).
        app.add_middleware(
            IdempotencyMiddleware, store=store, on_in_progress="wait", wait_timeout_seconds=10
        )
        document_idempotency(app)
    # Outside the idempotency middleware, so replays carry the CORS headers too.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["POST"],
        allow_headers=["Idempotency-Key", "Content-Type"],
        expose_headers=["Idempotent-Replayed", "Idempotency-Stored", "Retry-After"],
    )
    return app
