"""Find and show records for ``onceonly inspect`` and ``purge``.

The key a decorated function uses for a payload (as its ``key_for`` computes
it), and a record as JSON-ready data: its deadline as a date and the time left,
its result decoded.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from .errors import IdempotencyConfigError, IdempotencyError, IdempotencyKeyError
from .records import Record, Status, decode_outcome

__all__ = ["describe_record", "key_from_function"]


def key_from_function(spec: str, payload_text: str) -> str:
    """Return the key a decorated function uses for a payload, as its ``key_for`` computes it.

    The payload is what the decorator takes the key from: the event of an
    ``@idempotent`` handler, the ``data=`` argument of an ``@idempotent_function``.

    Args:
        spec: ``module:function`` (``module:Class.method`` works too); the module
            is imported with the current folder on ``sys.path``, as ``python -m`` has it.
        payload_text: The payload as JSON.

    Returns:
        The record's key (without a store's own prefix).

    Raises:
        IdempotencyConfigError: A bad spec, a module that fails to import, a
            function onceonly did not decorate, a payload that is not JSON, or
            a function whose key comes from ``key=callable`` rather than a payload.
        IdempotencyKeyError: The payload holds no idempotency key.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise IdempotencyConfigError(
            f"--function must be MODULE:FUNCTION (e.g. app.orders:charge), got {spec!r}"
        )
    try:
        payload = json.loads(payload_text)
    except ValueError as exc:
        where = (
            f" ({exc.msg}, line {exc.lineno} column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise IdempotencyConfigError(f"--payload is not valid JSON{where}") from exc
    func = _import_attribute(module_name, attribute, spec)
    key_for = getattr(func, "key_for", None)
    keyer = getattr(getattr(func, "guard", None), "keyer", None)
    if not callable(key_for) or keyer is None:
        raise IdempotencyConfigError(
            f"--function {spec} is not decorated with @idempotent or @idempotent_function"
        )
    key: str | None = keyer.key_and_fingerprint(payload)[0]
    if key is None:
        raise IdempotencyKeyError(
            f"--payload holds no idempotency key for {spec} (its event_key_jmespath="
            f"{func.guard.config.event_key_jmespath!r} selects nothing)"
        )
    # The key above is the decorator's for this payload. Confirm it through key_for,
    # handed the payload the ways a call can: a function whose key comes from
    # key=callable matches none of them, and its key needs the call's own arguments.
    if key not in _keys_from_calls(func, key_for, payload):
        raise IdempotencyConfigError(
            f"--function {spec} does not take its key from one payload (a key=callable "
            f"needs the call's own arguments): give the key itself ({attribute}.key_for(...) "
            "in Python)"
        )
    return key


def _import_attribute(module_name: str, attribute: str, spec: str) -> Any:
    folder = os.getcwd()
    added = folder not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        found: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # the user's module: whatever it raised, one line
        raise IdempotencyConfigError(
            f"--function {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise IdempotencyConfigError(
                f"--function {spec}: {module_name} has no attribute {attribute!r}"
            ) from exc
    return found


def _keys_from_calls(
    func: Callable[..., Any], key_for: Callable[..., Any], payload: Any
) -> Iterator[str | None]:
    """The keys ``key_for`` gives with the payload first, then as each named argument."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        names = []
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((payload,), {})]
    calls += [((), {name: payload}) for name in names]
    for args, kwargs in calls:
        try:
            yield key_for(*args, **kwargs)
        except Exception:  # a missing argument, or the user's key= callable: not this way
            continue


def _duration(ms: int) -> str:
    seconds = abs(ms) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{minutes}m {seconds}s" if minutes else f"{seconds}s"
    return f"{hours}h {text}" if hours else text


def describe_record(key: str, record: Record, now_ms: int) -> dict[str, Any]:
    """Return what ``onceonly inspect`` prints about a record, as JSON-ready data.

    The deadline is shown in local time with its offset and as the time left
    (by this machine's clock); the result is decoded, or ``result_error`` says
    why it cannot be.
    """
    deadline = datetime.fromtimestamp(record.deadline_ms / 1000, tz=timezone.utc).astimezone()
    left = record.deadline_ms - now_ms
    shown: dict[str, Any] = {
        "key": key,
        "status": record.status.name,
        "deadline": deadline.isoformat(timespec="milliseconds"),
        "time_left": _duration(left) if left >= 0 else f"none (passed {_duration(left)} ago)",
        "deadline_ms": record.deadline_ms,
        "fingerprint": record.fingerprint,
        "outcome_bytes": None if record.outcome is None else len(record.outcome),
        "result": None,
    }
    if record.status is Status.COMPLETED and record.outcome is not None:
        try:
            shown["result"] = decode_outcome(record.outcome)
        except IdempotencyError as exc:
            shown["result_error"] = f"cannot decode the stored result: {exc}"
    return shown
