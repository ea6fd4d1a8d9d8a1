"""onceonly: run code once per idempotency key under at-least-once delivery.

Every public name is importable from here (``from onceonly import
idempotent_function``), but only the exceptions are imported with the package:
the rest come on first use (a module ``__getattr__``), so that ``import
onceonly`` beside a store costs a cold start (a Lambda's first request) little
more than the interpreter's own start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
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

if TYPE_CHECKING:
    from .config import IdempotencyConfig, InProgressPolicy, StoreErrorPolicy
    from .decorators import idempotent, idempotent_function
    from .metrics import Event, Stats, StatsEvent
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
    "StatsEvent",
    "Status",
    "StoreErrorPolicy",
    "__version__",
    "idempotent",
    "idempotent_function",
]

# The names imported on first use, and the module each comes from.
_LAZY = {
    "IdempotencyConfig": "config",
    "InProgressPolicy": "config",
    "StoreErrorPolicy": "config",
    "idempotent": "decorators",
    "idempotent_function": "decorators",
    "Event": "metrics",
    "Stats": "metrics",
    "StatsEvent": "metrics",
    "Record": "records",
    "Status": "records",
    "CustomSerializer": "serializers",
    "DataclassSerializer": "serializers",
    "JsonSerializer": "serializers",
    "PydanticSerializer": "serializers",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
