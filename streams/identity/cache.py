"""The identity table as the node's ``StateView``, with decoded states kept between batches.

The table holds each key's state as orjson bytes under a hashed key (``hashed_key``: the
table and its changelog hold no identifier in clear). Decoding a state on every read
(hash, store lookup, ``orjson.loads``, ``state_from_json``) was ~20 % of the identity stage
in the worker, and most keys are read again a few batches later. ``DecodedStates`` keeps,
per partition, the state decoded (or written) last with the stored bytes it stands for;
``TableStates`` hands it out only while the table still holds those very bytes (an
identity check: a recovery or any other writer replaces them), else decodes again.

Handlers mutate the states they read and put what they changed (``streams.identity.state``);
until the batch's writes are flushed, a kept state may be ahead of its bytes. So the caller
forgets a partition's decoded states whenever its batch does not finish (a failure, a
cancellation) and when the partition is revoked, as it drops the stage's other in-memory
state. Erased states are not kept (no identifier of an erased person stays in memory
under its clear key). Bounded: at most ``max_keys`` states, oldest first out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from streams.identity.state import State
from streams.identity.wire import state_from_json, state_to_json
from streams.wire.envelope import partition_for

__all__ = ["DecodedStates", "TableStates", "hashed_key"]


def hashed_key(key: str) -> str:
    """The table key of ``kind:value`` or a customer id: BLAKE2b-128, hex."""
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


_Entry = tuple[str, bytes, State]  # table key, the stored bytes, the state they decode to


class DecodedStates:
    """Per partition: clear key -> (table key, stored bytes, decoded state)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._parts: dict[int, dict[str, _Entry]] = {}
        self._size = 0

    def lookup(self, partition: int, key: str) -> _Entry | None:
        part = self._parts.get(partition)
        return None if part is None else part.get(key)

    def keep(self, partition: int, key: str, table_key: str, raw: bytes, state: State) -> None:
        if self.max_keys <= 0:
            return
        part = self._parts.setdefault(partition, {})
        if part.pop(key, None) is None:
            self._size += 1
        part[key] = (table_key, raw, state)
        while self._size > self.max_keys and part:
            del part[next(iter(part))]
            self._size -= 1

    def drop(self, partition: int, key: str) -> None:
        part = self._parts.get(partition)
        if part is not None and part.pop(key, None) is not None:
            self._size -= 1

    def forget(self, partition: int) -> None:
        self._size -= len(self._parts.pop(partition, {}))

    def __len__(self) -> int:
        return self._size


class Shard(Protocol):
    """What ``TableStates`` writes through (``streams.runtime.state.TableShard``)."""

    def get(self, key: str) -> Any | None: ...

    def put(self, partition: int, key: str, value: Any) -> None: ...


class TableStates:
    """One partition's identity state for one batch: reads from ``stored`` (the table's
    bytes by UTF-8 key), writes through ``shard``; ``remember`` after the shard is flushed."""

    def __init__(
        self,
        shard: Shard,
        stored: Mapping[bytes, bytes | None],
        partitions: int,
        partition: int,
        cache: DecodedStates,
    ) -> None:
        self.shard = shard
        self.stored = stored
        self.partitions = partitions
        self.partition = partition
        self.cache = cache
        self._written: dict[str, tuple[str, State]] = {}
        self._unknown: dict[str, str] = {}  # keys read and found absent -> their table key

    def get(self, key: str) -> State | None:
        written = self._written.get(key)
        if written is not None:  # (the node's overlay reads a key once: rarely here)
            saved = self.shard.get(written[0])
            return None if saved is None else state_from_json(saved)
        entry = self.cache.lookup(self.partition, key)
        if entry is not None:
            table_key, raw, state = entry
            if self.stored.get(table_key.encode()) == raw:  # (a store may copy: RocksDB)
                return state
        else:
            table_key = hashed_key(key)
        raw_now = self.stored.get(table_key.encode())
        if raw_now is None:
            self._unknown[key] = table_key  # (the put that follows needs it)
            return None
        state = state_from_json(orjson.loads(raw_now))
        if not state.erased:
            self.cache.keep(self.partition, key, table_key, raw_now, state)
        return state

    def put(self, key: str, value: State) -> None:
        partition = partition_for(key, self.partitions)
        if partition != self.partition:  # handlers write only their op's routing key
            raise RuntimeError(f"identity state for a key of partition {partition}")
        table_key = self._unknown.get(key)
        if table_key is None:
            entry = self.cache.lookup(partition, key)
            table_key = entry[0] if entry is not None else hashed_key(key)
        self.shard.put(partition, table_key, state_to_json(value))
        self._written[key] = (table_key, value)

    def remember(self) -> None:
        """After the shard's flush: the written states, with the bytes the table now holds."""
        for key, (table_key, state) in self._written.items():
            raw = self.stored.get(table_key.encode())
            if raw is None or state.erased:
                self.cache.drop(self.partition, key)
            else:
                self.cache.keep(self.partition, key, table_key, raw, state)
        self._written.clear()
        self._unknown.clear()
