"""IdempotencyConfig: the options of one idempotent function, checked once."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import IdempotencyConfigError
from .keys import BoundExpression, hasher, jmespath_options
from .runtime import LAMBDA_CONTEXT

__all__ = ["IdempotencyConfig", "InProgressPolicy", "StoreErrorPolicy"]


class InProgressPolicy(enum.Enum):
    """What a call does when another execution holds a live claim."""

    RAISE = "raise"
    WAIT = "wait"


class StoreErrorPolicy(enum.Enum):
    """What a call does when the store cannot be reached before it runs."""

    RAISE = "raise"
    RUN = "run"


# Ten years: far beyond any lease or retention, and keeps deadlines well inside
# the record format's 16 digits of milliseconds.
_MAX_SECONDS = 10 * 365 * 24 * 3600


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IdempotencyConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise IdempotencyConfigError(f"{name} must be greater than 0, got {value!r}")
    if value * 1000 < 1:
        raise IdempotencyConfigError(f"{name} must be at least 0.001 (one millisecond)")
    if value > _MAX_SECONDS:
        raise IdempotencyConfigError(f"{name} must be at most {_MAX_SECONDS} (ten years)")
    return float(value)


def _enum(name: str, kind: type[enum.Enum], value: object) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = " | ".join(repr(m.value) for m in kind)
        raise IdempotencyConfigError(f"{name} must be {allowed}, got {value!r}") from None


def _custom_functions(options: object) -> Any:
    # Powertools' shape: {"custom_functions": MyFunctions()}; nothing else is read.
    if options is None:
        return None
    from jmespath.functions import Functions

    if not isinstance(options, dict) or set(options) - {"custom_functions"}:
        raise IdempotencyConfigError(
            "jmespath_options must be a dict with one key, custom_functions "
            "(e.g. {'custom_functions': MyFunctions()}), got "
            + (f"keys {sorted(map(str, options))}" if isinstance(options, dict) else repr(options))
        )
    custom = options.get("custom_functions")
    if "custom_functions" in options and not isinstance(custom, Functions):
        raise IdempotencyConfigError(
            "jmespath_options['custom_functions'] must be an instance of a "
            "jmespath.functions.Functions subclass (e.g. MyFunctions(), not the class), "
            f"got {custom!r}"
        )
    return custom


def _jmespath(name: str, expression: object, options: Any = None) -> Any:
    if expression is None:
        return None
    if not isinstance(expression, str) or not expression.strip():
        raise IdempotencyConfigError(f"{name} must be a JMESPath expression string")
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        parsed = jmespath.compile(expression)
    except JMESPathError as exc:
        raise IdempotencyConfigError(
            f"{name} is not valid JMESPath ({expression!r}): {exc}"
        ) from exc
    return parsed if options is None else BoundExpression(parsed, options)


@dataclass(frozen=True)
class IdempotencyConfig:
    """Options of an idempotent function; validated when constructed.

    Args:
        event_key_jmespath: JMESPath selecting the part of the payload that
            identifies the work; None (or ``""``, Powertools' default) uses
            the whole payload.
        payload_validation_jmespath: JMESPath selecting the part whose hash
            must match on a replay; a different value raises
            ``IdempotencyKeyReuseError``. None or ``""``: no validation.
        raise_on_no_idempotency_key: Raise ``IdempotencyKeyError`` when the key
            selects nothing; otherwise run unprotected with a warning.
        expires_after_seconds: How long a completed outcome is kept.
        use_local_cache: Keep completed outcomes in an in-process LRU cache.
        local_cache_max_items: Size of that cache.
        hash_function: A ``hashlib`` algorithm name for keys and fingerprints;
            ``md5`` by default, as in Powertools (a key, not a signature: it is
            called with ``usedforsecurity=False``, so FIPS builds allow it).
        response_hook: ``hook(result, record)`` applied to replayed results.
        key_prefix: Prefix of every key; default ``module.qualname`` of the
            function, led by ``AWS_LAMBDA_FUNCTION_NAME`` and a dot when that is
            set (a partial adds ``#`` and a digest of its bound arguments).
        lease_seconds: How long a claim holds when no Lambda context says otherwise.
        heartbeat: Renew the lease every lease/3 while the function runs.
        on_in_progress: "raise" (default) or "wait" for the other execution.
        wait_timeout_seconds: Longest wait with ``on_in_progress="wait"``.
        on_store_error: "raise" (fail closed, default) or "run" without protection.
        jmespath_options: ``{"custom_functions": MyFunctions()}`` as in
            Powertools: an instance of a ``jmespath.functions.Functions``
            subclass whose functions the two expressions may call, beside
            onceonly's (``from_json``, ``from_base64``, ``from_base64_gzip``,
            ``powertools_*``); the user's win where names clash. Read once,
            here. Two configs are equal when they hold the same instance.

    Raises:
        IdempotencyConfigError: An option is out of range or of the wrong type.
    """

    event_key_jmespath: str | None = None
    payload_validation_jmespath: str | None = None
    raise_on_no_idempotency_key: bool = False
    expires_after_seconds: float = 3600
    use_local_cache: bool = False
    local_cache_max_items: int = 256
    hash_function: str = "md5"
    response_hook: Callable[[Any, Any], Any] | None = None
    key_prefix: str | None = None
    lease_seconds: float = 60
    heartbeat: bool = False
    on_in_progress: InProgressPolicy | str = InProgressPolicy.RAISE
    wait_timeout_seconds: float = 30
    on_store_error: StoreErrorPolicy | str = StoreErrorPolicy.RAISE
    # A dict cannot be hashed: equality and hash use _custom_functions instead.
    jmespath_options: dict[str, Any] | None = field(default=None, compare=False)
    # Compiled forms, derived in __post_init__.
    _key_expr: Any = field(init=False, repr=False, compare=False)
    _validation_expr: Any = field(init=False, repr=False, compare=False)
    _custom_functions: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        # Powertools' default for both expressions is "": no expression.
        for name in ("event_key_jmespath", "payload_validation_jmespath"):
            if getattr(self, name) == "":
                put(self, name, None)
        custom = _custom_functions(self.jmespath_options)
        put(self, "_custom_functions", custom)
        # One combined functions table for both expressions, built here, not per call.
        options = None if custom is None else jmespath_options(custom)
        put(self, "_key_expr", _jmespath("event_key_jmespath", self.event_key_jmespath, options))
        put(
            self,
            "_validation_expr",
            _jmespath("payload_validation_jmespath", self.payload_validation_jmespath, options),
        )
        for name in ("raise_on_no_idempotency_key", "use_local_cache", "heartbeat"):
            if not isinstance(getattr(self, name), bool):
                raise IdempotencyConfigError(f"{name} must be True or False")
        for name in ("expires_after_seconds", "lease_seconds", "wait_timeout_seconds"):
            put(self, name, _positive_number(name, getattr(self, name)))
        size = self.local_cache_max_items
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise IdempotencyConfigError(
                f"local_cache_max_items must be an integer >= 1, got {size!r}"
            )
        if not isinstance(self.hash_function, str) or self.hash_function.startswith("shake"):
            raise IdempotencyConfigError(
                f"hash_function must name a fixed-length hashlib algorithm (e.g. 'sha256'), "
                f"got {self.hash_function!r}"
            )
        hasher(self.hash_function)  # fails here, not on the first call, if unusable
        if self.response_hook is not None and not callable(self.response_hook):
            raise IdempotencyConfigError("response_hook must be callable(result, record)")
        prefix = self.key_prefix
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise IdempotencyConfigError("key_prefix must be a non-empty string")
        put(self, "on_in_progress", _enum("on_in_progress", InProgressPolicy, self.on_in_progress))
        put(self, "on_store_error", _enum("on_store_error", StoreErrorPolicy, self.on_store_error))

    def register_lambda_context(self, lambda_context: Any) -> None:
        """Give the claims of the calls that follow the invocation's remaining time.

        For Powertools code, which calls it at the top of a handler that is
        not itself ``@idempotent``: every ``idempotent_function`` called after
        it in the same thread or asyncio task (any config: the config is not
        changed, it stays frozen and shareable) leases its claim for the
        context's ``get_remaining_time_in_millis()``. It lasts until the next
        registration in that thread or task; an ``@idempotent`` handler sets
        the same for its own call and restores what was there when it returns.

        Args:
            lambda_context: The handler's Lambda context.
        """
        LAMBDA_CONTEXT.set(lambda_context)

    @property
    def lease_ms(self) -> int:
        """Default lease in milliseconds."""
        return round(self.lease_seconds * 1000)  # round: 1.001 * 1000 is 1000.999...

    @property
    def ttl_ms(self) -> int:
        """Retention of completed outcomes in milliseconds."""
        return round(self.expires_after_seconds * 1000)
