"""Decoded table values the customer stage keeps between batches (profiles, 360 states,
moved ids), so a customer seen again in a later batch is not decoded from JSON and rebuilt
into dataclasses each time.

The table stays the durable state: every value is still written to it (and its changelog)
as bytes, and the cache only ever holds what the table holds once the batch that wrote it
is stored. It is a bounded LRU (``capacity`` entries; 0: off), and it is dropped whole with
the stage's other in-memory state (``CustomerStage.forget``: a revoked partition, a failed
batch or tick), since a failed batch may have changed cached values in place (they are the
live objects the batch worked on) without storing them, in any partition it touched.
Correctness never depends on it: a miss reads the table, and a worker recovering from the
changelog computes the same.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

__all__ = ["DEFAULT_CACHE_ENTRIES", "MISSING", "DecodedCache"]

DEFAULT_CACHE_ENTRIES: Final = 20_000

MISSING: Final = object()
"""What ``DecodedCache.get`` returns for a key it does not hold (``None`` is no value)."""


class DecodedCache:
    """Table key -> decoded value, the least recently used dropped beyond ``capacity``."""

    __slots__ = ("_entries", "capacity", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0 (0: off)")
        self.capacity = capacity
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Any:
        """The value, most recently used now; ``MISSING`` if not held."""
        value = self._entries.get(key, MISSING)
        if value is MISSING:
            self.misses += 1
            return MISSING
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """Hold ``value`` (``None``: the key is deleted, nothing held)."""
        if value is None or not self.capacity:
            self._entries.pop(key, None)
            return
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
