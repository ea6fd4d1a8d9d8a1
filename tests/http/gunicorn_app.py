"""A Flask app for the SIGKILL test, run by gunicorn in a subprocess (test_wsgi_server.py).

Its folder is ``ONCEONLY_TEST_DIR``: the SQLite store the test reads too
(``store.db``), the ``started-<pid>`` note a request leaves when it enters
``/charge``, the ``go`` file it waits for, and ``effects``, to which it
appends one line at the very end of the handler (after the wait, so a worker
killed while waiting never made it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask

from onceonly.http.flask import FlaskIdempotency, idempotency
from onceonly.stores import SQLiteStore

FOLDER = Path(os.environ["ONCEONLY_TEST_DIR"])
LEASE_SECONDS = 2

app = Flask(__name__)
FlaskIdempotency(app, store=SQLiteStore(FOLDER / "store.db"), lease_seconds=LEASE_SECONDS)


@app.get("/health")
def health() -> tuple[str, int]:
    return f"ok {os.getpid()}", 200


@app.post("/charge")
@idempotency(required=True)
def charge() -> tuple[dict[str, object], int]:
    (FOLDER / f"started-{os.getpid()}").touch()
    # The test decides when this goes on: it kills the worker before it does.
    deadline = time.monotonic() + 60
    while not (FOLDER / "go").exists():
        if time.monotonic() > deadline:
            return {"error": "the test never said go"}, 500
        time.sleep(0.01)
    with open(FOLDER / "effects", "a") as effects:
        effects.write(f"charged by {os.getpid()}\n")
    return {"charged": True, "worker": os.getpid()}, 201
