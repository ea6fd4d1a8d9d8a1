"""onceonly: run code once per idempotency key under at-least-once delivery."""

from __future__ import annotations

from .config import IdempotencyConfig, InProgressPolicy, StoreErrorPolicy
from .decorators import idempotent, idempotent_function
from .errors import (
    CorruptRecordError,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfigError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyKeyReuseError,
    IdempotencySerializationError,
    IdempotencyStoreError,
    OnceOnlyWarning,
)
from .metrics import Event, Stats
from .records import Record, Status
from .serializers import (
    CustomSerializer,
    DataclassSerializer,
    JsonSerializer,
    PydanticSerializer,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptRecordError",
    "CustomSerializer",
    "DataclassSerializer",
    "Event",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
    "IdempotencyConfigError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyKeyReuseError",
    "IdempotencySerializationError",
    "IdempotencyStoreError",
    "InProgressPolicy",
    "JsonSerializer",
    "OnceOnlyWarning",
    "PydanticSerializer",
    "Record",
    "Stats",
    "Status",
    "StoreErrorPolicy",
    "__version__",
    "idempotent",
    "idempotent_function",
]
