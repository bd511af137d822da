"""The customer 360: one entry per resolved customer (first/last seen, channels, identifiers,
orders, lifetime value, CSAT/NPS, sentiment, open alerts), merged into survivors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, cast

from streams.customers.measures import (
    _MAX_IDENTIFIERS,
    _RECENT_SENTIMENTS,
    _SEGMENT_RANK,
    CONTACT_TYPES,
    _amount_e4,
    segment_of,
)
from streams.customers.rows import Customer360Row
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    MergeNotice,
    ResolvedEvent,
    TouchpointRecord,
)

# --------------------------------------------------------------------------- customer 360


@lru_cache(maxsize=1 << 16)
def _identifier_hash(kind: str, value: str) -> int:
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # fits Int64 and UInt64 alike


@dataclass(slots=True)
class Customer360State:
    """Everything the 360 row of one customer needs; updated per event, saved per batch.

    Identifiers are kept as 63-bit hashes (no PII), at most ``64`` per customer.
    """

    first_seen: int | None = None
    last_seen: int | None = None
    events: int = 0
    channels: list[str] = field(default_factory=list)
    identifier_hashes: list[int] = field(default_factory=list)
    orders: int = 0
    payments: int = 0
    lifetime_value: dict[str, int] = field(default_factory=dict)
    contacts: int = 0
    complaints: int = 0
    last_csat: int | None = None
    last_csat_at: int | None = None
    last_nps: int | None = None
    last_nps_at: int | None = None
    sentiment_count: int = 0
    sentiment_sum: float = 0.0
    recent_sentiments: list[list[float]] = field(default_factory=list)  # [ts, value], by ts
    open_alerts: list[str] = field(default_factory=list)
    segment: str = "anonymous"
    merged_into: str = ""
    version: int = 0
    last_offset: int | None = None
    updated_at: int = 0

    def _fresh(self, offset: int | None, now_ms: int) -> bool:
        if offset is not None:
            if self.last_offset is not None and offset <= self.last_offset:
                return False
            self.last_offset = offset
        self.version += 1
        self.updated_at = now_ms
        return True

    def update(self, record: TouchpointRecord, now_ms: int, offset: int | None = None) -> bool:
        """Fold one event in (late ones too: there are no windows here). False if replayed."""
        if not self._fresh(offset, now_ms):
            return False
        ts = record["occurred_at"]
        self.first_seen = ts if self.first_seen is None else min(self.first_seen, ts)
        self.last_seen = ts if self.last_seen is None else max(self.last_seen, ts)
        self.events += 1
        if record["channel"] not in self.channels:
            self.channels.append(record["channel"])
            self.channels.sort()
        if len(self.identifier_hashes) < _MAX_IDENTIFIERS:
            ids = cast("dict[str, str | None]", record["identifiers"])
            for kind, value in ids.items():
                if value:
                    h = _identifier_hash(kind, value)
                    if (
                        h not in self.identifier_hashes
                        and len(self.identifier_hashes) < _MAX_IDENTIFIERS
                    ):
                        self.identifier_hashes.append(h)
        segment = segment_of(record)
        if _SEGMENT_RANK[segment] > _SEGMENT_RANK[self.segment]:
            self.segment = segment
        payload = record["payload"]
        if payload is None:
            return True
        kind, body = payload
        b = cast("dict[str, Any]", body)
        event_type = record["event_type"]
        if kind == COMMERCE:
            if event_type == "order_placed":
                self.orders += 1
            elif event_type == "payment" and b.get("status") == "approved":
                self.payments += 1
                currency = b["currency"]
                self.lifetime_value[currency] = self.lifetime_value.get(currency, 0) + _amount_e4(
                    b["amount"]
                )
        elif kind == CONTACT:
            if event_type in CONTACT_TYPES:
                self.contacts += 1
            if b.get("is_complaint") or event_type == "complaint":
                self.complaints += 1
            csat, nps = b.get("csat"), b.get("nps")
            if csat is not None and (self.last_csat_at is None or ts >= self.last_csat_at):
                self.last_csat, self.last_csat_at = csat, ts
            if nps is not None and (self.last_nps_at is None or ts >= self.last_nps_at):
                self.last_nps, self.last_nps_at = nps, ts
        elif kind == SOCIAL:
            sentiment = b.get("sentiment")
            if sentiment is not None:
                self.sentiment_count += 1
                self.sentiment_sum += sentiment
                self.recent_sentiments.append([ts, sentiment])
                self.recent_sentiments.sort()
                del self.recent_sentiments[:-_RECENT_SENTIMENTS]
        return True

    def set_alert(self, rule: str, is_open: bool, now_ms: int) -> bool:
        """Open or close an alert of ``rule`` (idempotent). True if it changed anything."""
        if is_open == (rule in self.open_alerts):
            return False
        if is_open:
            self.open_alerts.append(rule)
            self.open_alerts.sort()
        else:
            self.open_alerts.remove(rule)
        return self._fresh(None, now_ms)

    def row(self, customer_id: str) -> Customer360Row:
        recent = self.recent_sentiments
        return Customer360Row(
            customer_id=customer_id,
            version=self.version,
            updated_at=self.updated_at,
            first_seen=self.first_seen or 0,
            last_seen=self.last_seen or 0,
            events=self.events,
            channels=tuple(self.channels),
            identifier_hashes=tuple(self.identifier_hashes),
            orders=self.orders,
            payments=self.payments,
            lifetime_value=dict(self.lifetime_value),
            contacts=self.contacts,
            complaints=self.complaints,
            last_csat=self.last_csat,
            last_csat_at=self.last_csat_at,
            last_nps=self.last_nps,
            last_nps_at=self.last_nps_at,
            sentiment_count=self.sentiment_count,
            sentiment_sum=self.sentiment_sum,
            sentiment_recent=sum(v for _, v in recent) / len(recent) if recent else None,
            open_alerts=tuple(self.open_alerts),
            segment=self.segment,
            merged_into=self.merged_into,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, sharing nothing with the live state."""
        return {name: _copied(getattr(self, name)) for name in _C360_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Customer360State:
        """The inverse of ``to_dict`` (copies: the saved entry is never mutated)."""
        return cls(**{name: _copied(data[name]) for name in _C360_FIELDS})


_C360_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Customer360State))


def _copied(value: Any) -> Any:
    """Lists (of lists) and maps copied, scalars as they are: no state shared."""
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


class Customer360Book:
    """The 360 states a batch touches: read from ``store`` on first touch, written back
    (one entry per touched customer) and emitted as rows by ``flush``.

    ``store`` is any mapping of customer id -> ``Customer360State.to_dict()``; in the agent,
    a changelog-backed table keyed by customer id (co-partitioned with the events). With
    ``live``, it holds the states themselves, read and written as they are (no copies:
    the customer stage's store, which decodes from its table and caches the states).
    """

    def __init__(
        self, store: MutableMapping[str, Any] | None = None, *, live: bool = False
    ) -> None:
        self.store: MutableMapping[str, Any] = store if store is not None else {}
        self.live = live
        self.touched: dict[str, Customer360State] = {}
        self._loaded: dict[str, int] = {}  # version of each touched state when read

    def state(self, customer_id: str) -> Customer360State:
        state = self.touched.get(customer_id)
        if state is None:
            saved = self.store.get(customer_id)
            if saved is None:
                state = Customer360State()
            else:
                state = saved if self.live else Customer360State.from_dict(saved)
            self.touched[customer_id] = state
            self._loaded[customer_id] = state.version
        return state

    def add(self, event: ResolvedEvent, now_ms: int, offset: int | None = None) -> bool:
        return self.state(event["customer_id"]).update(event["record"], now_ms, offset)

    def apply_merge(self, notice: MergeNotice, now_ms: int, offset: int | None = None) -> None:
        """Mark the absorbed customer as merged (``customer_360_v`` folds it into the
        survivor). A no-op in the survivor's partition, where the absorbed id has no state."""
        customer_id = notice["absorbed"]
        if customer_id not in self.touched and customer_id not in self.store:
            return
        state = self.state(customer_id)
        if state.merged_into != notice["survivor"] and state._fresh(offset, now_ms):
            state.merged_into = notice["survivor"]

    def set_alert(self, customer_id: str, rule: str, is_open: bool, now_ms: int) -> None:
        self.state(customer_id).set_alert(rule, is_open, now_ms)

    def flush(self) -> list[Customer360Row]:
        """Rows for the touched customers that changed; saves them to ``store``."""
        rows: list[Customer360Row] = []
        loaded = self._loaded
        for customer_id, state in self.touched.items():
            if loaded[customer_id] == state.version:
                continue  # replayed events only: nothing new
            self.store[customer_id] = state if self.live else state.to_dict()
            rows.append(state.row(customer_id))
        self.touched.clear()
        loaded.clear()
        return rows
