"""The payments API on Flask: ``POST /payments`` charges once per ``Idempotency-Key``."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, request
from ledger import Ledger, is_slow

from onceonly.http.flask import FlaskIdempotency, idempotency


def build_app(ledger: Ledger, store: Any | None, slow_seconds: float) -> Flask:
    """The app; ``store=None`` builds it without idempotency (to see the duplicates).

    Args:
        ledger: Where charges go.
        store: A sync onceonly store, or None.
        slow_seconds: How long a slow payment's response is held back.
    """
    app = Flask("payments")

    @app.post("/payments")
    @idempotency(required=True)
    def pay() -> tuple[dict[str, Any], int]:
        payment = request.get_json()
        charge = ledger.charge(payment["id"], payment["cents"])
        if is_slow(payment["id"]):
            time.sleep(slow_seconds)  # charged, but the answer is late
        return {"charge": charge, "payment": payment["id"], "cents": payment["cents"]}, 201

    if store is not None:
        # A retry of a payment still being made waits for its answer (up to 10 s).
        FlaskIdempotency(app, store=store, on_in_progress="wait", wait_timeout_seconds=10)
    return app
