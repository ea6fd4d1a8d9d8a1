"""A small in-process LRU cache of completed records."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .records import Record

__all__ = ["LocalCache"]


class LocalCache:
    """LRU map from key to COMPLETED record, dropping records past their deadline.

    Args:
        max_items: How many records to keep.
    """

    def __init__(self, max_items: int) -> None:
        self._max = max_items
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Record] = OrderedDict()

    def get(self, key: str, now_ms: int) -> Record | None:
        """Return the cached record for a key, or None if absent or expired."""
        with self._lock:
            record = self._items.get(key)
            if record is None:
                return None
            if record.deadline_ms <= now_ms:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return record

    def put(self, key: str, record: Record) -> None:
        """Remember a completed record, evicting the least recently used."""
        with self._lock:
            self._items[key] = record
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        """Forget a key."""
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
