"""The customers table in memory, as the customer stage sees it (tests only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from streams.customers.stage import CustomerOutputs


class Store:
    """The customers table as the stage sees it: ``get``, ``in``, ``items_with_prefix``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def items_with_prefix(self, prefix: str) -> Iterator[tuple[str, Any]]:
        return iter([(k, v) for k, v in self.data.items() if k.startswith(prefix)])

    def apply(self, out: CustomerOutputs) -> None:
        """Store the batch's writes as the table does: through JSON (values may be the
        stage's live dataclasses)."""
        for _, key, value in out.state_puts:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = orjson.loads(orjson.dumps(value))
