"""The asyncio DynamoDB store: the sync store's calls, each on the store's own threads."""

from __future__ import annotations

from typing import Any

from .._threaded import InThreadStore
from .store import DynamoDBStore

__all__ = ["AsyncDynamoDBStore"]


class AsyncDynamoDBStore(InThreadStore):
    """The asyncio twin of :class:`DynamoDBStore`: each call runs on the store's own threads.

    boto3 has no asyncio interface; a bounded pool of threads of this store's
    own (named ``onceonly-dynamodb-N``, made on first use) keeps its blocking
    HTTP calls off the event loop and out of asyncio's default executor,
    which the application's own ``asyncio.to_thread`` work may fill. Every
    decision is the sync store's.

    Args:
        table_name: As for :class:`DynamoDBStore`, with the same keyword options.
        max_workers: The most calls in flight at once (default 32, the
            connection pool of the client the store builds; give an injected
            client at least as many with ``max_pool_connections``).

    Raises:
        IdempotencyConfigError: A bad option (as for :class:`DynamoDBStore`),
            or ``max_workers`` not an integer from 1 to 1024.
    """

    def __init__(self, table_name: str, *, max_workers: int = 32, **options: Any) -> None:
        self._init_threads(max_workers, "dynamodb")
        self.sync = DynamoDBStore(table_name, **options)

    @classmethod
    def create_table(cls, table_name: str, **options: Any) -> bool:
        """Create the table unless a matching one exists; see ``DynamoDBStore.create_table``."""
        options.pop("max_workers", None)  # the async store's own option: no threads here
        return DynamoDBStore.create_table(table_name, **options)
