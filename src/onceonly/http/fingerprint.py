"""The fingerprint of a request: what must match for a retry to replay.

Method, path, query string, the chosen headers and the body, each length
prefixed (so no two different requests run together into the same bytes),
then hashed. A JSON body may be fingerprinted by its data (``canonical_json``,
``exclude_fields``); a multipart body always is by its parsed parts (names,
file names, a digest of each part's content), since its boundary changes on
every retry.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["body_material", "fingerprint", "length_prefixed"]


def length_prefixed(parts: Iterable[bytes]) -> bytes:
    """Join byte strings so that the boundaries between them are part of the result."""
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _canonical_json(body: bytes, exclude: frozenset[str]) -> bytes | None:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON after all: the raw bytes count
    if exclude and isinstance(data, dict):
        data = {key: value for key, value in data.items() if key not in exclude}
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # pragma: no cover - what json.loads read, it writes
        return None


def _multipart(body: bytes, content_type: str) -> bytes | None:
    """The parts of a multipart body as canonical bytes, or None if it does not parse."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    except Exception:  # a body the parser cannot read is fingerprinted as bytes
        return None
    if not message.is_multipart():
        return None
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return None
        parts.append(
            [
                part.get_param("name", "", header="content-disposition"),
                part.get_filename() or "",
                part.get_content_type(),
                hashlib.sha256(payload).hexdigest(),
            ]
        )
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def body_material(
    body: bytes, content_type: str, canonical_json: bool, exclude: frozenset[str]
) -> bytes:
    """The bytes of a body that the fingerprint covers.

    Args:
        body: The request body.
        content_type: Its ``Content-Type`` ("" when none).
        canonical_json: Read a JSON body as data (sorted keys, compact).
        exclude: Top-level JSON fields left out (implies ``canonical_json``).

    Returns:
        A tag byte (raw, JSON, multipart) and the material.
    """
    media_type = _media_type(content_type)
    if (canonical_json or exclude) and _is_json(media_type):
        data = _canonical_json(body, exclude)
        if data is not None:
            return b"j" + data
    if media_type == "multipart/form-data":
        data = _multipart(body, content_type)
        if data is not None:
            return b"m" + data
    return b"r" + body


def fingerprint(
    digest: Callable[[bytes], str],
    method: str,
    path: str,
    query: bytes,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> str:
    """Hash the request's parts into its fingerprint.

    Args:
        digest: ``hasher(hash_function)``.
        method: The method, upper case.
        path: The path, as received (percent-encoding kept).
        query: The raw query string.
        headers: ``(name, value)`` of the fingerprinted headers, in a fixed order.
        body: What :func:`body_material` returned.

    Returns:
        The hex digest.
    """
    header_bytes = [f"{name}:{value}".encode("latin-1", "replace") for name, value in headers]
    return digest(
        length_prefixed(
            [
                method.encode("ascii", "replace"),
                path.encode("utf-8", "surrogateescape"),
                query,
                length_prefixed(header_bytes),
                body,
            ]
        )
    )
