"""The profile API (Flask): ``POST /profile`` and ``POST /score`` publish events.

Each request needs an ``Idempotency-Key``; it becomes the event id, and
onceonly's Flask middleware answers a retried request with the first answer
(not a second event). ``publish`` records the event id too, so a producer
that retries after losing Redis' reply appends the entry once. Built with
``store=None``, the app is the plain variant: no middleware, a bare ``XADD``
per request (a retried request is a second event).
"""

from __future__ import annotations

from typing import Any

import service
from flask import Flask, request

from onceonly.http.flask import FlaskIdempotency, idempotency
from onceonly.streams import publish


def build_app(client: Any, store: Any | None) -> Flask:
    """The app, publishing with ``client`` (the producer's ACL user).

    Args:
        client: A ``redis.RedisCluster`` connected as the producer.
        store: A sync onceonly store for the HTTP idempotency records, or
            None for the plain variant.
    """
    app = Flask("profiles")

    def emit(fields: dict[str, str]) -> tuple[dict[str, Any], int]:
        event_id = request.headers["Idempotency-Key"]
        fields = {**fields, "event_id": event_id}
        target = service.stream(service.partition(int(fields["user"])))
        if store is None:
            entry = client.xadd(target, fields).decode()
        else:
            entry = publish(client, target, fields, event_id=event_id)
        return {"event_id": event_id, "entry": entry}, 202

    @app.post("/profile")
    @idempotency(required=True)
    def profile() -> tuple[dict[str, Any], int]:
        body = request.get_json()
        fields = {"type": "profile", "user": str(int(body["user"])), "name": str(body["name"])}
        fields["new"] = "1" if body.get("new") else "0"
        return emit(fields)

    @app.post("/score")
    @idempotency(required=True)
    def score() -> tuple[dict[str, Any], int]:
        body = request.get_json()
        return emit(
            {"type": "score", "user": str(int(body["user"])), "points": str(int(body["points"]))}
        )

    if store is not None:
        FlaskIdempotency(app, store=store)
    return app
