"""The exception tree of onceonly.

Every error the library raises on purpose is an :class:`IdempotencyError`, so a
caller can catch the whole family in one place. Store failures keep their
cause chained (``raise ... from exc``).
"""

from __future__ import annotations

__all__ = [
    "CorruptRecordError",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfigError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyKeyReuseError",
    "IdempotencySerializationError",
    "IdempotencyStoreError",
    "OnceOnlyWarning",
]


class IdempotencyError(Exception):
    """Base class of every error raised by onceonly."""


class IdempotencyKeyError(IdempotencyError):
    """The payload holds no idempotency key (and ``raise_on_no_idempotency_key`` is set)."""


class IdempotencyKeyReuseError(IdempotencyError):
    """The same key arrived with a different payload fingerprint (HTTP 422)."""


class IdempotencyAlreadyInProgressError(IdempotencyError):
    """Another execution holds a live claim on the key (HTTP 409).

    Attributes:
        key: The idempotency key.
        retry_after_ms: Milliseconds left on the other execution's lease, by
            the store's clock; retrying after that either replays its result or
            takes the key over.
    """

    def __init__(self, message: str, *, key: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.key = key
        self.retry_after_ms = retry_after_ms


class IdempotencyStoreError(IdempotencyError):
    """The store failed or could not be reached; the cause is chained."""


class CorruptRecordError(IdempotencyStoreError):
    """A stored value is not a record onceonly wrote (or a later version wrote)."""


class IdempotencySerializationError(IdempotencyError, TypeError):
    """A payload or a result cannot be turned into canonical JSON."""


class IdempotencyConfigError(IdempotencyError, ValueError):
    """Bad options, raised when a config, store or decorator is constructed."""


class OnceOnlyWarning(UserWarning):
    """Warnings about calls that ran without idempotency protection."""
