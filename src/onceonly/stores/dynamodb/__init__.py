"""The DynamoDB stores: one item per key, one conditional call per step.

``DynamoDBStore`` (sync) and ``AsyncDynamoDBStore`` (asyncio, each call in a
worker thread) share one item mapping (``items.py``). boto3 is imported when a
store is built, so this package imports without it (``pip install
'onceonly[dynamodb]'``).
"""

from __future__ import annotations

from .async_store import AsyncDynamoDBStore
from .store import DEFAULT_MAX_OUTCOME_BYTES, DynamoDBStore, OutcomeTooLargeError

__all__ = [
    "DEFAULT_MAX_OUTCOME_BYTES",
    "AsyncDynamoDBStore",
    "DynamoDBStore",
    "OutcomeTooLargeError",
]
