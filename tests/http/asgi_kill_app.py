"""A FastAPI app for the SIGKILL test, served by uvicorn workers in subprocesses.

Configured by environment variables: ``KILL_DIR`` (the folder the test and the
workers talk through), ``KILL_STORE`` (``sqlite:<path>`` or
``redis:<host>:<port>:<prefix>``), ``KILL_LEASE`` (seconds).

``POST /payments`` notes its start (a file naming the worker's pid), waits
until the test creates ``go``, then makes its effect (a line appended to
``effects``) at its very end, so a worker killed while waiting never made it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from onceonly.http.asgi import IdempotencyMiddleware

FOLDER = Path(os.environ["KILL_DIR"])


def _store() -> Any:
    kind, _, where = os.environ["KILL_STORE"].partition(":")
    if kind == "sqlite":
        from onceonly.stores import AsyncSQLiteStore

        return AsyncSQLiteStore(where)
    import redis.asyncio

    from onceonly.stores.redis import AsyncRedisStore

    host, port, prefix = where.split(":")
    return AsyncRedisStore(redis.asyncio.Redis(host=host, port=int(port)), prefix=prefix)


app = FastAPI()
app.add_middleware(
    IdempotencyMiddleware, store=_store(), lease_seconds=float(os.environ["KILL_LEASE"])
)


@app.get("/health")
async def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.post("/payments", status_code=201)
async def pay(request: Request) -> dict[str, Any]:
    body = await request.body()
    (FOLDER / f"started-{uuid.uuid4().hex}").write_text(str(os.getpid()))
    while not (FOLDER / "go").exists():
        await asyncio.sleep(0.01)
    with (FOLDER / "effects").open("a") as effects:
        effects.write(body.decode() + "\n")
    return {"pid": os.getpid()}
