"""Internal topics carry envelopes: one Kafka message = a batch of records for one partition.

Faust spends tens of microseconds of bookkeeping per consumed message (events,
acks, sensors); on internal hops we pay that once per batch instead of once per
record. Public topics (raw input, dead letters, alerts, identity merges) stay one
record per message, as Kafka users expect.

A record's partition is ``partition_for(key, n)`` (CRC-32 of the key): stable
across processes and restarts, so state for a key is always on one partition,
and a Faust table updated from that partition writes its changelog there too.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "group_by_partition",
    "pack",
    "pack_chunks",
    "partition_for",
    "unpack",
]


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


MAX_ENVELOPE_BYTES = 512 * 1024
"""Well under Kafka's default ``message.max.bytes`` (1 MiB) with headroom for batches."""


def pack(records: list[Any]) -> bytes:
    return orjson.dumps(records)


def pack_chunks(records: list[Any], max_bytes: int = MAX_ENVELOPE_BYTES) -> list[bytes]:
    """One or more envelopes, each at most ``max_bytes`` (a lone oversize record excepted)."""
    data = orjson.dumps(records)
    if len(data) <= max_bytes or len(records) <= 1:
        return [data]
    half = len(records) // 2
    return pack_chunks(records[:half], max_bytes) + pack_chunks(records[half:], max_bytes)


def unpack(data: bytes) -> list[Any]:
    records: list[Any] = orjson.loads(data)
    return records


def group_by_partition(keyed: Iterable[tuple[str, Any]], partitions: int) -> dict[int, list[Any]]:
    """``(key, record)`` pairs -> records per destination partition, order kept."""
    out: dict[int, list[Any]] = defaultdict(list)
    for key, record in keyed:
        out[partition_for(key, partitions)].append(record)
    return dict(out)
