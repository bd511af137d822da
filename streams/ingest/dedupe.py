"""First wins: one event id, one event, whichever raw partition its copies arrive on.

Ingest hands every event that passed validation to ``touchpoints.checked``, partitioned by
its event id (``streams.wire.checked``), so all copies of an id meet on one partition of
this stage, in the order they were handed over. The first copy is forwarded to
``touchpoints.valid``; a later one is

* a **replay** when it comes from the same raw position (partition, offset) as the copy
  taken: ingest or this stage ran the batch again after a crash, a rebalance or a retry,
  and the first copy's output was delivered before the state that remembers it. Dropped
  and counted (``touchpoints_ingest_replayed_events_total``), never dead-lettered;
* a **duplicate** otherwise (a producer sent the id again, on any partition, with any
  identifiers): dead-lettered ``duplicate_event_id`` with its original raw bytes and its
  raw position.

State: event ids remembered per partition of this stage within ``DEDUPE_HORIZON_SECONDS``,
one entry per batch (key ``"<partition>:<first offset>"``), expired a batch at a time.
Pure: the caller persists ``state_puts``/``state_deletes`` and restores with ``restore``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streams.wire.checked import Frame, iter_frames
from streams.wire.dlq import DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetter, RawMessage, dead_letter

__all__ = ["DUPLICATE_REASON", "DedupeResult", "DedupeStage", "FirstWins", "Origin", "Seen"]

DUPLICATE_REASON = "duplicate_event_id"  # == streams.ingest.stage.Reason.DUPLICATE_EVENT_ID

Origin = tuple[int, int]  # (raw partition, raw offset)


class Seen(StrEnum):
    """What the de-duplication state says about an event id read at an offset."""

    NEW = "new"
    REPLAY = "replay"  # same id, same offset: its output was delivered before the state
    DUPLICATE = "duplicate"  # same id at another offset: the producer sent it again


@dataclass(frozen=True, slots=True)
class _Batch:
    key: str
    seen_ms: int
    event_ids: tuple[str, ...]
    origins: tuple[Origin, ...]


class BatchHorizon:
    """Event ids remembered per batch within a horizon: ``_batches`` (key -> a batch with
    ``seen_ms`` and ``event_ids``, oldest first) and ``_ids`` (event id -> (batch key, where it
    was read)). Shared by ingest's per-partition ``Deduplicator`` and the dedupe stage's
    ``FirstWins``: expiry a batch at a time, so state is written and deleted per batch."""

    _ids: dict[str, tuple[str, Any]]
    _batches: OrderedDict[str, Any]

    def __init__(self, horizon_ms: int, max_ids: int = 1_000_000) -> None:
        self.horizon_ms = horizon_ms
        self.max_ids = max_ids
        self._ids = {}
        self._batches = OrderedDict()

    def expire(self, now_ms: int) -> list[str]:
        """Forget batches older than the horizon (or over the id cap); return their keys."""
        dropped: list[str] = []
        cutoff = now_ms - self.horizon_ms
        while self._batches:
            key, batch = next(iter(self._batches.items()))
            if batch.seen_ms >= cutoff and len(self._ids) <= self.max_ids:
                break
            self._batches.popitem(last=False)
            for event_id in batch.event_ids:
                if self._ids.get(event_id, ("",))[0] == key:
                    del self._ids[event_id]
            dropped.append(key)
        return dropped

    def __len__(self) -> int:
        return len(self._ids)


class FirstWins(BatchHorizon):
    """Event ids taken on one partition of the stage, with the raw origin of each
    (``_ids``: event id -> (batch key, origin); ``_batches``: key -> ``_Batch``)."""

    def restore(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        batches = [
            _Batch(
                key,
                int(v["seen_ms"]),
                tuple(v["ids"]),
                tuple(zip(v["partitions"], v["offsets"], strict=True)),
            )
            for key, v in entries
        ]
        for batch in sorted(batches, key=lambda b: b.seen_ms):
            self._index(batch)

    def _index(self, batch: _Batch) -> None:
        self._batches[batch.key] = batch
        for event_id, origin in zip(batch.event_ids, batch.origins, strict=True):
            self._ids[event_id] = (batch.key, origin)

    def check(self, event_id: str, origin: Origin, pending: dict[str, Origin]) -> str:
        """``pending``: ids taken earlier in the batch being built, with their origins."""
        taken = pending.get(event_id)
        if taken is None:
            seen = self._ids.get(event_id)
            if seen is None:
                return Seen.NEW
            taken = seen[1]
        return Seen.REPLAY if taken == origin else Seen.DUPLICATE

    def remember(self, key: str, taken: dict[str, Origin], now_ms: int) -> dict[str, Any] | None:
        """Index the batch's new ids; returns the state entry to persist under ``key``."""
        if not taken:
            return None
        batch = _Batch(key, now_ms, tuple(taken), tuple(taken.values()))
        self._index(batch)
        return {
            "seen_ms": now_ms,
            "ids": list(batch.event_ids),
            "partitions": [p for p, _ in batch.origins],
            "offsets": [o for _, o in batch.origins],
        }

    def keys(self) -> list[str]:
        return list(self._batches)


@dataclass(slots=True)
class DedupeResult:
    valid: dict[int, list[bytes]] = field(default_factory=dict)  # valid partition -> items
    dead: list[DeadLetter] = field(default_factory=list)
    state_puts: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    state_deletes: list[tuple[int, str]] = field(default_factory=list)
    replayed: int = 0
    channels: Counter[str] = field(default_factory=Counter)  # forwarded events by channel

    @property
    def forwarded(self) -> int:
        return sum(len(items) for items in self.valid.values())


class DedupeStage:
    """Batch step of the de-duplication agent: checked messages in, first copies out.

    ``messages``: ``(partition, offset, value)`` of ``touchpoints.checked`` messages. A
    horizon of 0 turns de-duplication off (every frame is forwarded, nothing is kept).
    """

    def __init__(
        self, horizon_ms: int, max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES
    ) -> None:
        self.horizon_ms = horizon_ms
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self._parts: dict[int, FirstWins] = {}

    def restore(self, partition: int, entries: list[tuple[str, dict[str, Any]]]) -> None:
        state = FirstWins(self.horizon_ms)
        state.restore(entries)
        self._parts[partition] = state

    def forget(self, partition: int) -> None:
        self._parts.pop(partition, None)

    def has_partition(self, partition: int) -> bool:
        return partition in self._parts

    def keys(self, partition: int) -> list[str]:
        state = self._parts.get(partition)
        return [] if state is None else state.keys()

    def process(self, messages: list[tuple[int, int, bytes]], now_ms: int) -> DedupeResult:
        result = DedupeResult()
        taken: dict[int, dict[str, Origin]] = {}
        first_offset: dict[int, int] = {}
        for partition, offset, value in messages:
            state = self._parts.get(partition)
            if state is None:
                state = self._parts[partition] = FirstWins(self.horizon_ms)
            pending = taken.setdefault(partition, {})
            first_offset.setdefault(partition, offset)
            for f in iter_frames(value):
                if self.horizon_ms > 0:
                    seen = state.check(f.event_id, f.origin, pending)
                    if seen == Seen.REPLAY:
                        result.replayed += 1
                        continue
                    if seen == Seen.DUPLICATE:
                        result.dead.append(self._duplicate(f, now_ms))
                        continue
                    pending[f.event_id] = f.origin
                result.valid.setdefault(f.partition, []).append(f.item)
                result.channels[f.channel] += 1
        if self.horizon_ms > 0:
            for partition, ids in taken.items():
                state = self._parts[partition]
                key = f"{partition}:{first_offset[partition]}"
                entry = state.remember(key, ids, now_ms)
                if entry is not None:
                    result.state_puts.append((partition, key, entry))
                result.state_deletes.extend((partition, k) for k in state.expire(now_ms))
        return result

    def _duplicate(self, f: Frame, now_ms: int) -> DeadLetter:
        raw = RawMessage(
            f.source_topic, f.source_partition, f.source_offset, f.key, f.value, f.timestamp_ms
        )
        detail = f"event_id {f.event_id!r} already ingested (the first copy wins)"
        return dead_letter(raw, DUPLICATE_REASON, detail, now_ms, self.max_dead_letter_bytes)
