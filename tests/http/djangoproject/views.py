"""Views of the test project; each call is noted in ``CALLS`` (the effect the tests count)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from typing import Any

from django.http import (
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views import View

from onceonly.http.django import idempotency

CALLS: list[str] = []
# A request with ``X-Hold: 1`` waits in its view until the test sets HOLD.
ENTERED = threading.Event()
HOLD = threading.Event()


def reset() -> None:
    CALLS.clear()
    ENTERED.clear()
    HOLD.clear()


def _note(request: Any, name: str) -> int:
    CALLS.append(name)
    if request.headers.get("X-Hold"):
        ENTERED.set()
        HOLD.wait(30)
    return len(CALLS)


def payments(request: Any) -> HttpResponse:
    n = _note(request, "payments")
    if request.content_type == "application/json":
        data = json.loads(request.body or b"null")
    else:
        data = request.POST.dict()
    response = JsonResponse({"payment": n, "got": data}, status=201)
    response["Location"] = f"/payments/{n}"
    response["X-Internal"] = "not replayed"
    response.set_cookie("session", f"s{n}")
    return response


@idempotency(required=True)
def required(request: Any) -> HttpResponse:
    return JsonResponse({"n": _note(request, "required")}, status=201)


@idempotency(exempt=True)
def exempt(request: Any) -> HttpResponse:
    return JsonResponse({"n": _note(request, "exempt")})


@idempotency(expires_after_seconds=60)
def short_retention(request: Any) -> HttpResponse:
    return JsonResponse({"n": _note(request, "short")})


@idempotency(methods={"POST", "PUT"})
def put_too(request: Any) -> HttpResponse:
    return JsonResponse({"n": _note(request, "put")})


@idempotency(required=True)
class Classy(View):
    def post(self, request: Any) -> HttpResponse:
        return JsonResponse({"n": _note(request, "classy")}, status=201)


def stream(request: Any) -> StreamingHttpResponse:
    n = _note(request, "stream")
    return StreamingHttpResponse(f"part{i}-{n};".encode() for i in range(3))


def file(request: Any) -> FileResponse:
    n = _note(request, "file")
    return FileResponse(io.BytesIO(b"file-%d" % n), filename="f.bin")


def boom(request: Any) -> HttpResponse:
    _note(request, "boom")
    raise RuntimeError("the view failed")


def status(request: Any, code: int) -> HttpResponse:
    return HttpResponse(f"status {code} #{_note(request, 'status')}", status=code)


def upload(request: Any) -> HttpResponse:
    n = _note(request, "upload")
    digest = hashlib.sha256(request.FILES["doc"].read()).hexdigest()
    return JsonResponse({"n": n, "name": request.POST["name"], "sha256": digest}, status=201)


def guarded(request: Any) -> HttpResponse:
    return JsonResponse({"n": _note(request, "guarded")})
