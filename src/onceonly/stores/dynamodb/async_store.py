"""The asyncio DynamoDB store: the sync store's calls, each in a worker thread."""

from __future__ import annotations

from typing import Any

from .._threaded import InThreadStore
from .store import DynamoDBStore

__all__ = ["AsyncDynamoDBStore"]


class AsyncDynamoDBStore(InThreadStore):
    """The asyncio twin of :class:`DynamoDBStore`: each call runs in a worker thread.

    boto3 has no asyncio interface; ``asyncio.to_thread`` keeps its blocking
    HTTP calls off the event loop. Every decision is the sync store's.

    Args:
        table_name: As for :class:`DynamoDBStore`, with the same keyword options.
    """

    def __init__(self, table_name: str, **options: Any) -> None:
        self.sync = DynamoDBStore(table_name, **options)

    @classmethod
    def create_table(cls, table_name: str, **options: Any) -> bool:
        """Create the table unless a matching one exists; see ``DynamoDBStore.create_table``."""
        return DynamoDBStore.create_table(table_name, **options)
