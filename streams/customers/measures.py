"""What a window measures (``Measures``: sums, unions and samples that merge exactly), the
periods, the segments, and the small conversions every row shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from streams.wire.model import (
    TouchpointRecord,
)

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
DEFAULT_LATENESS_MS: Final = 5 * MINUTE_MS
DEFAULT_PANE_EVENTS: Final = 20_000
REPEAT_CONTACT_MS: Final = 7 * DAY_MS
SWITCH_AFTER_FAILURE_MS: Final = HOUR_MS
MAX_DURATIONS: Final = 10_000
"""Raw wait/handle values kept per partial (the first ones); percentiles of the rest are lost."""

SEGMENTS: Final[tuple[str, ...]] = ("anonymous", "contactable", "registered", "loyalty", "vip")
"""Touchpoint segments, lowest to highest (see ``segment_of``)."""
_SEGMENT_RANK: Final = {s: i for i, s in enumerate(SEGMENTS)}

CONTACT_TYPES: Final = frozenset({"call", "chat", "email", "complaint"})
_FAILURE_TYPES: Final = frozenset({"checkout_failed", "login_failed"})
_SELF_SERVICE: Final = frozenset({"web", "mobile"})
_PAYMENT_FAILED: Final = frozenset({"declined", "failed"})
_CHECKOUT_FIRST_STEP: Final = "cart"
_MAX_IDENTIFIERS: Final = 64
_RECENT_SENTIMENTS: Final = 5
_STATE_FORMAT: Final = 1

BucketKey = tuple[int, str, str, str, str]
"""``(period start ms, channel, event_type, country, segment)``."""


def minute_of(ts_ms: int) -> int:
    """Start (epoch ms) of the 1-minute window holding ``ts_ms``; negative times floor too."""
    return ts_ms - ts_ms % MINUTE_MS


def segment_of(record: TouchpointRecord) -> str:
    """The touchpoint's segment: one of ``SEGMENTS`` (a bounded set).

    ``properties["segment"]`` wins when it names one of them (so a CRM-fed ``vip`` can be
    passed through); otherwise how well the customer is identified at this touchpoint:
    ``loyalty`` (a loyalty id), ``registered`` (a customer or login id), ``contactable``
    (email, phone or social handle), else ``anonymous`` (cookie or device only).
    """
    explicit = record["properties"].get("segment")
    if explicit:
        value = explicit.strip().lower()
        if value in _SEGMENT_RANK:
            return value
    ids = record["identifiers"]
    if ids["loyalty_id"]:
        return "loyalty"
    if ids["customer_id"] or ids["login_id"]:
        return "registered"
    if ids["email"] or ids["phone"] or ids["social_handle"]:
        return "contactable"
    return "anonymous"


def _amount_e4(amount: float) -> int:
    return round(amount * 10_000)


def _nps_class(score: int) -> int:
    """0 detractor, 1 passive, 2 promoter."""
    return 2 if score >= 9 else 1 if score >= 7 else 0


# --------------------------------------------------------------------------- measures


@dataclass(slots=True, eq=False)
class Measures:
    """Measures of one bucket (see the module doc). Every field merges by sum/union/concat."""

    events: int = 0
    customers: set[str] = field(default_factory=set)
    orders: int = 0
    basket_items: int = 0
    basket_orders: int = 0
    checkouts_started: int = 0
    payments_approved: int = 0
    payment_failures: int = 0
    revenue: dict[str, int] = field(default_factory=dict)  # currency -> 1/10,000 units
    csat_responses: int = 0
    csat_sum: int = 0
    nps_promoters: int = 0
    nps_passives: int = 0
    nps_detractors: int = 0
    sentiment_count: int = 0
    sentiment_sum: float = 0.0
    contacts: int = 0
    wait_seconds: list[float] = field(default_factory=list)
    handle_seconds: list[float] = field(default_factory=list)
    fcr_eligible: int = 0
    fcr_resolved: int = 0
    repeat_contacts: int = 0
    channel_switches: int = 0
    complaints: int = 0

    FIELDS: ClassVar[tuple[str, ...]] = (
        "events",
        "customers",
        "orders",
        "basket_items",
        "basket_orders",
        "checkouts_started",
        "payments_approved",
        "payment_failures",
        "revenue",
        "csat_responses",
        "csat_sum",
        "nps_promoters",
        "nps_passives",
        "nps_detractors",
        "sentiment_count",
        "sentiment_sum",
        "contacts",
        "wait_seconds",
        "handle_seconds",
        "fcr_eligible",
        "fcr_resolved",
        "repeat_contacts",
        "channel_switches",
        "complaints",
    )

    def merge(self, other: Measures) -> None:
        """Fold ``other`` into this (what ClickHouse does across partitions, panes, minutes)."""
        self.events += other.events
        self.customers |= other.customers
        self.orders += other.orders
        self.basket_items += other.basket_items
        self.basket_orders += other.basket_orders
        self.checkouts_started += other.checkouts_started
        self.payments_approved += other.payments_approved
        self.payment_failures += other.payment_failures
        for currency, value in other.revenue.items():
            self.revenue[currency] = self.revenue.get(currency, 0) + value
        self.csat_responses += other.csat_responses
        self.csat_sum += other.csat_sum
        self.nps_promoters += other.nps_promoters
        self.nps_passives += other.nps_passives
        self.nps_detractors += other.nps_detractors
        self.sentiment_count += other.sentiment_count
        self.sentiment_sum += other.sentiment_sum
        self.contacts += other.contacts
        self.wait_seconds.extend(other.wait_seconds)
        self.handle_seconds.extend(other.handle_seconds)
        self.fcr_eligible += other.fcr_eligible
        self.fcr_resolved += other.fcr_resolved
        self.repeat_contacts += other.repeat_contacts
        self.channel_switches += other.channel_switches
        self.complaints += other.complaints

    def copy(self) -> Measures:
        """A plain ``Measures`` copy, sharing no container."""
        out = Measures()
        out.merge(self)
        return out

    def canonical(self) -> tuple[Any, ...]:
        """A comparable form: sets and lists sorted, zero revenue dropped, floats rounded."""
        out: list[Any] = []
        for name in Measures.FIELDS:
            value = getattr(self, name)
            if name == "customers":
                out.append(tuple(sorted(value)))
            elif name == "revenue":
                out.append(tuple(sorted((k, v) for k, v in value.items() if v)))
            elif isinstance(value, list):
                out.append(tuple(sorted(round(v, 3) for v in value)))
            elif isinstance(value, float):
                out.append(round(value, 6))
            else:
                out.append(value)
        return tuple(out)

    def to_list(self) -> list[Any]:
        return [
            sorted(v) if isinstance(v, set) else dict(v) if isinstance(v, dict) else v
            for v in (getattr(self, name) for name in Measures.FIELDS)
        ]

    def load_list(self, values: Sequence[Any]) -> None:
        for name, value in zip(Measures.FIELDS, values, strict=True):
            if name == "customers":
                value = set(value)
            elif name == "revenue":
                value = {str(k): int(v) for k, v in value.items()}
            elif isinstance(value, list):
                value = [float(v) for v in value]
            setattr(self, name, value)


@dataclass(slots=True, eq=False)
class _Partial(Measures):
    """An open partial aggregate in the state: measures plus its version bookkeeping."""

    version: int = 0  # updates folded in
    emitted: int = 0  # version last emitted
    updated_at: int = 0  # wall clock of the last update (informational)
