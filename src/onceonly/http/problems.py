"""The error responses of the middlewares: RFC 9457 ``application/problem+json``.

Each case has a stable ``type`` URI (a URN: it names the case, it is not a
page to fetch), documented in the README's "HTTP APIs" section.
"""

from __future__ import annotations

import enum
import json
from typing import NamedTuple

__all__ = ["Problem", "ProblemType", "problem"]


class ProblemType(enum.Enum):
    """The cases, each with its status and title."""

    KEY_MISSING = ("urn:onceonly:problem:key-missing", 400, "Idempotency-Key is required")
    KEY_INVALID = ("urn:onceonly:problem:key-invalid", 400, "Idempotency-Key is not valid")
    KEY_REUSED = (
        "urn:onceonly:problem:key-reused",
        422,
        "Idempotency-Key was used with another request",
    )
    IN_PROGRESS = (
        "urn:onceonly:problem:in-progress",
        409,
        "A request with this Idempotency-Key is in progress",
    )
    BODY_TOO_LARGE = ("urn:onceonly:problem:body-too-large", 413, "Request body is too large")
    STORE_UNAVAILABLE = (
        "urn:onceonly:problem:store-unavailable",
        503,
        "Idempotency store is unavailable",
    )
    STORED_RESPONSE_UNREADABLE = (
        "urn:onceonly:problem:stored-response-unreadable",
        500,
        "The stored response for this Idempotency-Key cannot be read",
    )

    @property
    def uri(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return int(self.value[1])

    @property
    def title(self) -> str:
        return self.value[2]


class Problem(NamedTuple):
    """An error response: status, headers and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def problem(kind: ProblemType, detail: str, retry_after_s: int | None = None) -> Problem:
    """Build the problem+json response of a case.

    Args:
        kind: The case.
        detail: What happened and what to do; never a raw key or a payload.
        retry_after_s: Seconds for ``Retry-After`` (409, 503), or None.

    Returns:
        The response.
    """
    body = json.dumps(
        {"type": kind.uri, "title": kind.title, "status": kind.status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    headers = [("content-type", "application/problem+json"), ("content-length", str(len(body)))]
    if retry_after_s is not None:
        headers.append(("retry-after", str(retry_after_s)))
    return Problem(kind.status, headers, body)
