"""From touchpoints to the protocol: an event's identifiers, its LINK op, what a replay re-sends,
and the offline union-find the property tests compare with."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from streams.identity.messages import LinkOp, Op, Refusal, Resolved
from streams.identity.rules import IdentityRules
from streams.wire.model import TouchpointRecord
from streams.wire.valid import identifier_keys

# ----------------------------------------------------------------------------- events


def event_identifiers(record: TouchpointRecord) -> list[str]:
    """The record's identifier keys, strongest first."""
    return identifier_keys(record["identifiers"])


class ResolutionMemory:
    """The customer each recently resolved event was stamped with, on one identity partition.

    The protocol is at-least-once: a batch replayed after a crash runs against whatever of
    its state writes already landed, so a replayed LINK can stamp its event with a newer
    customer (the survivor of a merge the same batch made) — whose customer-stage partition
    has never seen the event and would count it again. Remembering each event's first stamp
    (persisted per batch, before the batch's outputs) makes a replay re-send the
    same stamp, which the customer stage then recognises by event id. The stamps are
    persisted before the outputs they describe: a stamp whose output never left only pins
    the customer the replay will use.

    Entries are one per batch (``key -> {"seen_ms", "r": {event_id: customer}}``) and
    expire after ``horizon_ms`` of processing time, like ``streams.ingest.stage.Deduplicator``.
    """

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._stamps: dict[str, str | None] = {}
        self._batches: deque[tuple[str, int, list[str]]] = deque()

    def restore(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        for key, saved in sorted(entries, key=lambda kv: int(kv[1]["seen_ms"])):
            stamps: Mapping[str, str | None] = saved["r"]
            self._stamps.update(stamps)
            self._batches.append((key, int(saved["seen_ms"]), list(stamps)))

    def stamp(self, resolved: Resolved) -> Resolved:
        """The event as first stamped, if it was; else as given."""
        if resolved.event_id in self._stamps:
            first = self._stamps[resolved.event_id]
            if first != resolved.customer:
                return replace(resolved, customer=first)
        return resolved

    def remember(self, key: str, outputs: Iterable[Resolved], now_ms: int) -> dict[str, Any] | None:
        """Record the stamps of events not seen before; the entry to persist under ``key``."""
        fresh = {r.event_id: r.customer for r in outputs if r.event_id not in self._stamps}
        if not fresh or self.horizon_ms <= 0:
            return None
        self._stamps.update(fresh)
        self._batches.append((key, now_ms, list(fresh)))
        return {"seen_ms": now_ms, "r": fresh}

    def expire(self, now_ms: int) -> list[str]:
        """Forget batches older than the horizon; their keys, to delete."""
        dropped = []
        while self._batches and self._batches[0][1] < now_ms - self.horizon_ms:
            key, _, event_ids = self._batches.popleft()
            for event_id in event_ids:
                self._stamps.pop(event_id, None)
            dropped.append(key)
        return dropped

    def __len__(self) -> int:
        return len(self._stamps)


def ops_for_event(
    record: TouchpointRecord, rules: IdentityRules, *, carry_event: bool = True
) -> tuple[list[Op], list[Refusal]]:
    """The LINK op for a normalised touchpoint (none if every identifier is blocked)."""
    event = record if carry_event else None
    return link_ops(
        event_identifiers(record), record["event_id"], record["occurred_at"], event, rules
    )


def link_ops(
    keys: list[str], event_id: str, ts: int, event: Any, rules: IdentityRules
) -> tuple[list[Op], list[Refusal]]:
    """The LINK op for an event's identifier keys (strongest first), carrying ``event`` to
    its ``Resolved`` output; none if every identifier is blocked."""
    usable, refusals = rules.filter(keys, event_id, ts)
    if not usable:
        return [], refusals
    return [LinkOp(tuple(usable), event_id, ts, event)], refusals


def offline_components(
    events: Iterable[TouchpointRecord], rules: IdentityRules | None = None
) -> list[frozenset[str]]:
    """Plain union-find: identifiers seen on one event are connected."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for record in events:
        keys = event_identifiers(record)
        if rules is not None:
            keys = rules.filter(keys)[0]
        for key in keys:
            parent.setdefault(key, key)
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    groups: dict[str, set[str]] = {}
    for key in parent:
        groups.setdefault(find(key), set()).add(key)
    return sorted((frozenset(g) for g in groups.values()), key=min)
