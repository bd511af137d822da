"""Rolling customer-experience aggregates and the customer 360: the pure, Faust-free core.

The agent that uses this consumes ``ResolvedEvent``s (and ``MergeNotice``s) from the
resolved topic, which is partitioned by customer id, keeps one ``AggregatorState`` per
source partition (in a changelog-backed table, written once per batch) and hands the
rows ``flush`` returns to the ClickHouse sink. Nothing here imports Faust or touches I/O.

Windows and dimensions
----------------------
Every event falls in one 1-minute tumbling window of its EVENT time
(``record["occurred_at"]``, epoch ms; ``[m, m + 60 s)``) and one bucket of the
dimensions ``channel, event_type, country, segment`` (``segment_of``). Hours and days are
never computed here: ClickHouse rolls minutes up (every measure is a sum, a set union or a
concatenation of raw values, so minutes merge exactly into hours and days).

Measures of a bucket (``Measures``)
-----------------------------------
* ``events``; ``customers`` — the set of customer ids (for exact unique counts; new vs
  returning is decided in ClickHouse from each customer's first minute, see below);
* commerce: ``orders`` (``order_placed``), ``basket_items``/``basket_orders`` (items on
  orders that report them), ``checkouts_started`` (web ``checkout_step`` at the first
  step, ``cart``; conversion = orders / checkouts started, meaningful once rolled up over
  event types — mobile apps report no checkout start in the event catalogue),
  ``payments_approved`` and ``revenue`` (approved ``payment`` amounts per currency, in
  1/10,000 of the major unit, exact), ``payment_failures`` (``payment`` declined/failed);
* experience: ``csat_responses``/``csat_sum``; NPS ``promoters`` (9-10), ``passives``
  (7-8), ``detractors`` (0-6); social ``sentiment_count``/``sentiment_sum``;
  ``contacts`` (contact-centre ``call``/``chat``/``email``/``complaint``; survey responses
  are not contacts) with their raw ``wait_seconds``/``handle_seconds`` (ClickHouse takes
  percentiles with t-digests; at most ``MAX_DURATIONS`` kept per partial, the first ones);
  ``fcr_eligible``/``fcr_resolved`` (contacts reporting ``resolved``; resolved without a
  transfer); ``repeat_contacts`` (a contact by a customer with another contact in the 7
  days before it; ties at the same millisecond are ordered by event id);
  ``channel_switches`` (a contact within 1 hour after a web/mobile ``checkout_failed`` or
  ``login_failed`` by the same customer); ``complaints``.
* alerts by rule and severity: ``add_alert`` (a hook for the alerts topic; own rows).

Repeat contacts and channel switches need per-customer memory (``_Memory``): contacts and
failures of the last 7 days / 1 hour. An out-of-order contact or failure can change the
flag of a LATER contact of the same customer; that later contact's window is always still
open (it is later than an accepted event), so the correction is applied to its bucket and
emitted like any update. The result never depends on arrival order within the lateness.

Watermark, lateness, late events
--------------------------------
``watermark = max event time seen in the partition - allowed lateness`` (default 5 min).
An event whose window ends at or before the watermark when it arrives is LATE: ``add``
returns ``AddOutcome.LATE`` and counts it (``late_events``) for the metric; it changes
nothing here (it is still in the raw ``touchpoints`` table). Windows whose end is at or
before the watermark are closed: ``flush`` emits their last version and evicts them.
The decision uses only event data, never the wall clock, so a replay decides the same.
(Far-future timestamps cannot run the watermark away: ingest rejects them.)

Rows, versions, panes
---------------------
A row is the partial aggregate of one bucket from one source partition, keyed by
``(minute, channel, event_type, country, segment, source_partition, pane)`` with a
``version`` = the number of updates folded into it. ClickHouse keeps the highest version
per key (``ReplacingMergeTree(version)``) and sums partitions and panes at query time.
A pane is a block of ``pane_events`` consecutive input positions (the Kafka offset when
the agent passes it, else the count of events applied): when the position moves to the
next block, the open partials are finished (emitted, evicted) and new ones start. Panes
bound the state to at most one block of events per partition, whatever the rate and the
lateness (``pane_events=0``: one pane, partials live until their window closes).
``flush(final_only=False)`` also emits the open partials that changed since the last flush
(rolling freshness): a later version of the same key replaces the earlier one.

Why the effect is exactly once
------------------------------
1. Determinism: the content of row ``(key, version)`` is a pure function of the
   partition's input sequence (events and merge notices, in offset order) from the state
   it started from; acceptance, panes and corrections use event data and positions only.
2. Changelog state: the state is saved once per batch, after ``flush``. After a crash
   the agent restores the last saved state and the input is re-read from the committed
   offset (at least once). Re-applied events produce the same ``(key, version)`` rows
   again — identical, so replacing one with the other changes nothing — and then higher
   versions. If the saved state is AHEAD of the committed offset (changelog written,
   offsets not), the ``offset`` passed to ``add`` lets the state skip what it already
   holds (``AddOutcome.REPLAYED``).
3. Idempotent writes: ``ReplacingMergeTree(version)`` on the deterministic key keeps one
   row per key, the latest; the views read it with ``FINAL``. Re-inserted rows, rolling
   versions and replays can therefore never double count, and no window is lost: a
   window's final version is emitted before the state that evicts it is saved.
   ``dedupe_token`` gives an insert de-duplication token so an identical batch is even
   dropped before it becomes a part.

Merges
------
Counts use the customer id stamped on the event when it was resolved. After a
``MergeNotice`` the absorbed id keeps its past rows, so a person seen under both ids in
one window counts twice in ``unique_customers`` of that window (an over-count bounded by
the merges inside each window; ``customer_360_v`` folds absorbed customers into their
survivor). ``apply_merge`` carries the absorbed customer's contact/failure memory over
to the survivor so repeat contacts and channel switches after the merge see the history:
folded in place when the survivor has memory in this partition, otherwise returned as a
handover for the survivor's partition (``accept_handover``).

State
-----
``to_dict``/``from_dict`` give compact JSON-able state. The per-customer memory can also
be kept per customer (``to_dict(customers=False)`` + ``take_customer_changes``), so a
big 7-day memory is not rewritten with every batch.

The customer 360 (``Customer360State``, ``Customer360Book``) is kept per customer and
emitted per batch for the customers a batch touched, ``ReplacingMergeTree(version)``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, ClassVar, Final, cast

from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    WEB,
    MergeNotice,
    ResolvedEvent,
    TouchpointRecord,
)

__all__ = [
    "ALERT_COLUMNS",
    "AGGREGATE_COLUMNS",
    "CONTACT_TYPES",
    "CUSTOMER_360_COLUMNS",
    "DAY_MS",
    "DEFAULT_LATENESS_MS",
    "DEFAULT_PANE_EVENTS",
    "HOUR_MS",
    "MAX_DURATIONS",
    "MINUTE_MS",
    "REPEAT_CONTACT_MS",
    "SEGMENTS",
    "SWITCH_AFTER_FAILURE_MS",
    "AddOutcome",
    "AggregateRow",
    "AggregatorState",
    "AlertRow",
    "BucketKey",
    "Customer360Book",
    "Customer360Row",
    "Customer360State",
    "Measures",
    "combine",
    "count_new_customers",
    "dedupe_token",
    "minute_of",
    "recompute",
    "rows_for_clickhouse",
    "segment_of",
]

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


# --------------------------------------------------------------------------- rows


def _money(values: Mapping[str, int]) -> dict[str, Decimal]:
    return {currency: Decimal(v).scaleb(-4) for currency, v in values.items()}


AGGREGATE_COLUMNS: Final[tuple[str, ...]] = (
    "minute",
    "channel",
    "event_type",
    "country",
    "segment",
    "source_partition",
    "pane",
    "version",
    "updated_at",
    *Measures.FIELDS,
)


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One ``cx_partials`` row: a bucket's partial from one source partition and pane."""

    minute: int  # window start, epoch ms
    channel: str
    event_type: str
    country: str
    segment: str
    source_partition: int
    pane: int
    version: int
    updated_at: int  # epoch ms, wall clock of the last update
    measures: Measures

    TABLE: ClassVar[str] = "cx_partials"
    COLUMNS: ClassVar[tuple[str, ...]] = AGGREGATE_COLUMNS

    @property
    def bucket(self) -> BucketKey:
        return (self.minute, self.channel, self.event_type, self.country, self.segment)

    @property
    def key(self) -> tuple[int, str, str, str, str, int, int]:
        """The ReplacingMergeTree key (its ORDER BY)."""
        return (*self.bucket, self.source_partition, self.pane)

    def values(self) -> list[Any]:
        m = self.measures
        return [
            self.minute // 1000,
            self.channel,
            self.event_type,
            self.country,
            self.segment,
            self.source_partition,
            self.pane,
            self.version,
            self.updated_at,
            m.events,
            sorted(m.customers),
            m.orders,
            m.basket_items,
            m.basket_orders,
            m.checkouts_started,
            m.payments_approved,
            m.payment_failures,
            _money(m.revenue),
            m.csat_responses,
            m.csat_sum,
            m.nps_promoters,
            m.nps_passives,
            m.nps_detractors,
            m.sentiment_count,
            m.sentiment_sum,
            m.contacts,
            m.wait_seconds,
            m.handle_seconds,
            m.fcr_eligible,
            m.fcr_resolved,
            m.repeat_contacts,
            m.channel_switches,
            m.complaints,
        ]


ALERT_COLUMNS: Final[tuple[str, ...]] = (
    "minute",
    "rule",
    "severity",
    "source_partition",
    "version",
    "updated_at",
    "alerts",
)


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One ``alert_partials`` row: alerts of one minute, rule and severity from one partition."""

    minute: int
    rule: str
    severity: str
    source_partition: int
    version: int
    updated_at: int
    alerts: int

    TABLE: ClassVar[str] = "alert_partials"
    COLUMNS: ClassVar[tuple[str, ...]] = ALERT_COLUMNS

    @property
    def key(self) -> tuple[int, str, str, int]:
        return (self.minute, self.rule, self.severity, self.source_partition)

    def values(self) -> list[Any]:
        return [
            self.minute // 1000,
            self.rule,
            self.severity,
            self.source_partition,
            self.version,
            self.updated_at,
            self.alerts,
        ]


CUSTOMER_360_COLUMNS: Final[tuple[str, ...]] = (
    "customer_id",
    "version",
    "updated_at",
    "first_seen",
    "last_seen",
    "events",
    "channels",
    "identifier_hashes",
    "orders",
    "payments",
    "lifetime_value",
    "contacts",
    "complaints",
    "last_csat",
    "last_csat_at",
    "last_nps",
    "last_nps_at",
    "sentiment_count",
    "sentiment_sum",
    "sentiment_recent",
    "open_alerts",
    "segment",
    "merged_into",
)


@dataclass(frozen=True, slots=True)
class Customer360Row:
    """One ``customer_360`` row (latest version per customer wins)."""

    customer_id: str
    version: int
    updated_at: int
    first_seen: int
    last_seen: int
    events: int
    channels: tuple[str, ...]
    identifier_hashes: tuple[int, ...]
    orders: int
    payments: int
    lifetime_value: Mapping[str, int]  # 1/10,000 units per currency
    contacts: int
    complaints: int
    last_csat: int | None
    last_csat_at: int | None
    last_nps: int | None
    last_nps_at: int | None
    sentiment_count: int
    sentiment_sum: float
    sentiment_recent: float | None  # mean of the last few sentiments by event time
    open_alerts: tuple[str, ...]
    segment: str
    merged_into: str

    TABLE: ClassVar[str] = "customer_360"
    COLUMNS: ClassVar[tuple[str, ...]] = CUSTOMER_360_COLUMNS

    def values(self) -> list[Any]:
        return [
            self.customer_id,
            self.version,
            self.updated_at,
            self.first_seen,
            self.last_seen,
            self.events,
            list(self.channels),
            list(self.identifier_hashes),
            self.orders,
            self.payments,
            _money(self.lifetime_value),
            self.contacts,
            self.complaints,
            self.last_csat,
            self.last_csat_at,
            self.last_nps,
            self.last_nps_at,
            self.sentiment_count,
            self.sentiment_sum,
            self.sentiment_recent,
            list(self.open_alerts),
            self.segment,
            self.merged_into,
        ]


Row = AggregateRow | AlertRow | Customer360Row


def rows_for_clickhouse(rows: Sequence[Row]) -> tuple[str, list[str], list[list[Any]]]:
    """``(table, column_names, rows as lists)`` for ``client.insert`` (table without database).

    ``rows`` must be non-empty and of one kind.
    """
    if not rows:
        raise ValueError("no rows")
    kind = type(rows[0])
    if any(type(r) is not kind for r in rows):
        raise ValueError("rows of different kinds")
    return kind.TABLE, list(kind.COLUMNS), [r.values() for r in rows]


def dedupe_token(rows: Sequence[Row]) -> str:
    """An ``insert_deduplication_token``: equal for equal sets of ``(key, version)``.

    Row content is a function of its key and version, so an identical replayed batch is
    dropped by ClickHouse before it becomes a part (ReplacingMergeTree would fold it anyway).
    """
    keys = sorted(
        repr((r.key, r.version))
        if not isinstance(r, Customer360Row)
        else repr((r.customer_id, r.version))
        for r in rows
    )
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def combine(rows: Iterable[AggregateRow]) -> dict[BucketKey, Measures]:
    """What the views see: the latest version per row key, merged per (minute, dims).

    (``cx_partials FINAL`` grouped by minute and dimensions, in Python.)
    """
    latest: dict[tuple[int, str, str, str, str, int, int], AggregateRow] = {}
    for row in rows:
        seen = latest.get(row.key)
        if seen is None or row.version >= seen.version:
            latest[row.key] = row
    out: dict[BucketKey, Measures] = {}
    for row in latest.values():
        measures = out.get(row.bucket)
        if measures is None:
            out[row.bucket] = row.measures.copy()
        else:
            measures.merge(row.measures)
    return out


# --------------------------------------------------------------------------- the streaming state


class AddOutcome(StrEnum):
    APPLIED = "applied"
    LATE = "late"  # beyond the allowed lateness: counted, not aggregated
    REPLAYED = "replayed"  # offset already applied to this state (state ahead of offsets)


class _Contact:
    """A contact whose window is still open: its bucket and flags may still change."""

    __slots__ = ("bucket", "event_id", "repeat", "switch", "ts")

    def __init__(
        self, ts: int, event_id: str, bucket: BucketKey, repeat: bool, switch: bool
    ) -> None:
        self.ts = ts
        self.event_id = event_id
        self.bucket = bucket
        self.repeat = repeat
        self.switch = switch

    def to_list(self) -> list[Any]:
        return [self.ts, self.event_id, *self.bucket, int(self.repeat), int(self.switch)]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> _Contact:
        bucket: BucketKey = (int(v[2]), str(v[3]), str(v[4]), str(v[5]), str(v[6]))
        return cls(int(v[0]), str(v[1]), bucket, bool(v[7]), bool(v[8]))


class _Memory:
    """Per-customer memory for repeat contacts and channel switches.

    Contacts and failures in still-open windows are kept one by one; once their window
    closes only the latest time matters (every event accepted later is after it), and once
    that is beyond the 7-day / 1-hour horizon of anything still acceptable it is dropped.
    """

    __slots__ = ("contact_closed", "contacts", "failure_closed", "failures")

    def __init__(self) -> None:
        self.contact_closed: int | None = None
        self.failure_closed: int | None = None
        self.contacts: list[_Contact] = []
        self.failures: list[int] = []

    def empty(self) -> bool:
        return (
            self.contact_closed is None
            and self.failure_closed is None
            and not self.contacts
            and not self.failures
        )

    def absorb(self, other: _Memory) -> None:
        self.contact_closed = _max(self.contact_closed, other.contact_closed)
        self.failure_closed = _max(self.failure_closed, other.failure_closed)
        self.contacts.extend(other.contacts)
        self.failures.extend(other.failures)

    def compact(self, watermark: int) -> bool:
        """Fold closed windows into the ``*_closed`` times, drop what can no longer matter.

        Returns whether anything changed. Safe at any time: an event accepted later has
        ``t > watermark - 1 min``, so it is after every closed entry, and an entry older
        than ``watermark - 1 min - horizon`` is outside its horizon.
        """
        changed = False
        if self.contacts:
            keep = [c for c in self.contacts if c.bucket[0] + MINUTE_MS > watermark]
            if len(keep) != len(self.contacts):
                for c in self.contacts:
                    if c.bucket[0] + MINUTE_MS <= watermark:
                        self.contact_closed = _max(self.contact_closed, c.ts)
                self.contacts = keep
                changed = True
        if self.failures:
            closed = [f for f in self.failures if minute_of(f) + MINUTE_MS <= watermark]
            if closed:
                self.failure_closed = _max(self.failure_closed, max(closed))
                self.failures = [f for f in self.failures if minute_of(f) + MINUTE_MS > watermark]
                changed = True
        oldest = watermark - MINUTE_MS
        if self.contact_closed is not None and self.contact_closed < oldest - REPEAT_CONTACT_MS:
            self.contact_closed = None
            changed = True
        if (
            self.failure_closed is not None
            and self.failure_closed < oldest - SWITCH_AFTER_FAILURE_MS
        ):
            self.failure_closed = None
            changed = True
        return changed

    def to_list(self) -> list[Any]:
        return [
            self.contact_closed,
            self.failure_closed,
            [c.to_list() for c in self.contacts],
            list(self.failures),
        ]

    @classmethod
    def from_list(cls, v: Sequence[Any]) -> _Memory:
        m = cls()
        m.contact_closed = None if v[0] is None else int(v[0])
        m.failure_closed = None if v[1] is None else int(v[1])
        m.contacts = [_Contact.from_list(c) for c in v[2]]
        m.failures = [int(f) for f in v[3]]
        return m


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


PartialKey = tuple[
    int, int, str, str, str, str
]  # pane, minute, channel, event_type, country, segment


class AggregatorState:
    """Rolling aggregates of one source partition. See the module doc for the contract.

    Not thread-safe; one instance per partition, used by the task that owns it.
    """

    def __init__(
        self,
        source_partition: int,
        *,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        pane_events: int = DEFAULT_PANE_EVENTS,
    ) -> None:
        if lateness_ms < 0:
            raise ValueError("lateness_ms must be >= 0")
        if pane_events < 0:
            raise ValueError("pane_events must be >= 0 (0: no panes)")
        self.source_partition = source_partition
        self.lateness_ms = lateness_ms
        self.pane_events = pane_events
        self.max_ts: int | None = None
        self.seq = 0  # inputs applied (events and merges), the position without offsets
        self.last_offset: int | None = None
        self.pane = 0
        self.late_events = 0
        self.replayed = 0
        self.partials: dict[PartialKey, _Partial] = {}
        self.memory: dict[str, _Memory] = {}
        self._changed_customers: set[str] = set()
        self._compacted_at: int | None = None
        # alerts: their own watermark (they come from another topic)
        self.alert_max_ts: int | None = None
        self.late_alerts = 0
        self.alerts: dict[tuple[int, str, str], list[int]] = {}  # -> [count, version, emitted]

    # ----------------------------------------------------------------- input

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.lateness_ms

    def _position(self, offset: int | None) -> int | None:
        """The input position, or None if this offset was already applied."""
        if offset is None:
            position = self.seq
        else:
            if self.last_offset is not None and offset <= self.last_offset:
                self.replayed += 1
                return None
            self.last_offset = offset
            position = offset
        self.seq += 1
        if self.pane_events:
            pane = position // self.pane_events
            if pane > self.pane:
                self.pane = pane
        return position

    def add(self, event: ResolvedEvent, now_ms: int, offset: int | None = None) -> AddOutcome:
        """Fold one resolved event in. ``now_ms`` only stamps ``updated_at``.

        ``offset``: the event's offset in its source partition. Pass it whenever there is
        one: panes then follow offsets and an offset already applied is skipped.
        """
        if self._position(offset) is None:
            return AddOutcome.REPLAYED
        record = event["record"]
        ts = record["occurred_at"]
        minute = ts - ts % MINUTE_MS
        max_ts = self.max_ts
        if max_ts is not None and minute + MINUTE_MS <= max_ts - self.lateness_ms:
            self.late_events += 1
            return AddOutcome.LATE
        if max_ts is None or ts > max_ts:
            self.max_ts = ts
        channel = record["channel"]
        event_type = record["event_type"]
        bucket: BucketKey = (
            minute,
            channel,
            event_type,
            record["context"]["country"] or "",
            segment_of(record),
        )
        p = self._partial(bucket, now_ms)
        customer_id = event["customer_id"]
        p.events += 1
        p.customers.add(customer_id)
        payload = record["payload"]
        if payload is not None:
            kind, body = payload
            b = cast(dict[str, Any], body)
            if kind == COMMERCE:
                if event_type == "order_placed":
                    p.orders += 1
                    items = b.get("items")
                    if items is not None:
                        p.basket_items += items
                        p.basket_orders += 1
                elif event_type == "payment":
                    status = b.get("status")
                    if status == "approved":
                        p.payments_approved += 1
                        currency = b["currency"]
                        p.revenue[currency] = p.revenue.get(currency, 0) + _amount_e4(b["amount"])
                    elif status in _PAYMENT_FAILED:
                        p.payment_failures += 1
            elif kind == CONTACT:
                self._contact_centre(p, b, record, customer_id, bucket, now_ms)
            elif kind == SOCIAL:
                sentiment = b.get("sentiment")
                if sentiment is not None:
                    p.sentiment_count += 1
                    p.sentiment_sum += sentiment
            elif kind == WEB:
                if event_type == "checkout_step" and b.get("checkout_step") == _CHECKOUT_FIRST_STEP:
                    p.checkouts_started += 1
        if event_type in _FAILURE_TYPES and channel in _SELF_SERVICE:
            self._failure(customer_id, ts, now_ms)
        return AddOutcome.APPLIED

    def _partial(self, bucket: BucketKey, now_ms: int) -> _Partial:
        key: PartialKey = (self.pane, *bucket)
        p = self.partials.get(key)
        if p is None:
            p = self.partials[key] = _Partial()
        p.version += 1
        p.updated_at = now_ms
        return p

    def _contact_centre(
        self,
        p: _Partial,
        b: dict[str, Any],
        record: TouchpointRecord,
        customer_id: str,
        bucket: BucketKey,
        now_ms: int,
    ) -> None:
        csat = b.get("csat")
        if csat is not None:
            p.csat_responses += 1
            p.csat_sum += csat
        nps = b.get("nps")
        if nps is not None:
            klass = _nps_class(nps)
            if klass == 2:
                p.nps_promoters += 1
            elif klass == 1:
                p.nps_passives += 1
            else:
                p.nps_detractors += 1
        if b.get("is_complaint") or record["event_type"] == "complaint":
            p.complaints += 1
        if record["event_type"] not in CONTACT_TYPES:
            return
        p.contacts += 1
        wait, handle = b.get("wait_seconds"), b.get("handle_seconds")
        if wait is not None and len(p.wait_seconds) < MAX_DURATIONS:
            p.wait_seconds.append(wait)
        if handle is not None and len(p.handle_seconds) < MAX_DURATIONS:
            p.handle_seconds.append(handle)
        resolved = b.get("resolved")
        if resolved is not None:
            p.fcr_eligible += 1
            if resolved and not b.get("transferred"):
                p.fcr_resolved += 1
        # repeat contact / channel switch, decided over the customer's memory
        ts, event_id = record["occurred_at"], record["event_id"]
        mem = self.memory.get(customer_id)
        if mem is None:
            mem = self.memory[customer_id] = _Memory()
        self._changed_customers.add(customer_id)
        since = ts - REPEAT_CONTACT_MS
        repeat = mem.contact_closed is not None and mem.contact_closed >= since
        me = (ts, event_id)
        for c in mem.contacts:
            if c.ts >= since and (c.ts, c.event_id) < me:
                repeat = True
            elif not c.repeat and c.ts <= ts + REPEAT_CONTACT_MS and (c.ts, c.event_id) > me:
                c.repeat = True  # this earlier-in-time contact arrived late: a correction
                self._partial(c.bucket, now_ms).repeat_contacts += 1
        after = ts - SWITCH_AFTER_FAILURE_MS
        switch = mem.failure_closed is not None and mem.failure_closed >= after
        if not switch:
            switch = any(after <= f <= ts for f in mem.failures)
        mem.contacts.append(_Contact(ts, event_id, bucket, repeat, switch))
        p.repeat_contacts += repeat
        p.channel_switches += switch

    def _failure(self, customer_id: str, ts: int, now_ms: int) -> None:
        mem = self.memory.get(customer_id)
        if mem is None:
            mem = self.memory[customer_id] = _Memory()
        self._changed_customers.add(customer_id)
        mem.failures.append(ts)
        for c in mem.contacts:
            if not c.switch and ts <= c.ts <= ts + SWITCH_AFTER_FAILURE_MS:
                c.switch = True  # a failure that arrived after the contact it explains
                self._partial(c.bucket, now_ms).channel_switches += 1

    def add_alert(self, rule: str, severity: str, ts: int) -> AddOutcome:
        """Count one alert (the hook for the alerts topic); same lateness rule as events."""
        minute = ts - ts % MINUTE_MS
        if (
            self.alert_max_ts is not None
            and minute + MINUTE_MS <= self.alert_max_ts - self.lateness_ms
        ):
            self.late_alerts += 1
            return AddOutcome.LATE
        if self.alert_max_ts is None or ts > self.alert_max_ts:
            self.alert_max_ts = ts
        entry = self.alerts.setdefault((minute, rule, severity), [0, 0, 0])
        entry[0] += 1
        entry[1] += 1
        return AddOutcome.APPLIED

    # ----------------------------------------------------------------- merges

    def apply_merge(self, notice: MergeNotice, offset: int | None = None) -> dict[str, Any] | None:
        """Carry the absorbed customer's memory over to the survivor.

        If the survivor has memory here, the absorbed one's is folded into it (None is
        returned). Otherwise the absorbed customer's memory leaves this state and comes
        back as a JSON-able handover: the agent delivers it to the survivor's partition
        (``accept_handover`` there, or right here if the survivor hashes to this one),
        in order with that partition's events. Windows already counted are not changed
        (see the module doc on merges).
        """
        if self._position(offset) is None:
            return None
        absorbed = self.memory.pop(notice["absorbed"], None)
        if absorbed is None:
            return None
        self._changed_customers.add(notice["absorbed"])
        survivor = self.memory.get(notice["survivor"])
        if survivor is None:
            return {"survivor": notice["survivor"], "memory": absorbed.to_list()}
        survivor.absorb(absorbed)
        self._changed_customers.add(notice["survivor"])
        return None

    def accept_handover(self, handover: Mapping[str, Any], offset: int | None = None) -> None:
        if self._position(offset) is None:
            return
        customer_id = str(handover["survivor"])
        incoming = _Memory.from_list(handover["memory"])
        mem = self.memory.get(customer_id)
        if mem is None:
            self.memory[customer_id] = incoming
        else:
            mem.absorb(incoming)
        self._changed_customers.add(customer_id)

    # ----------------------------------------------------------------- output

    def flush(self, now_ms: int, final_only: bool = False) -> list[AggregateRow]:
        """Rows to write, then evict what is finished. Call once per batch, before saving.

        Emits the last version of every partial whose window closed (end <= watermark) or
        whose pane is over, and evicts it; with ``final_only=False`` also the open partials
        updated since the last flush (rolling freshness). ``now_ms`` is not used for any
        decision. Alerts have their own ``flush_alerts``.
        """
        rows: list[AggregateRow] = []
        wm = self.watermark
        part = self.source_partition
        finished: list[PartialKey] = []
        for key, p in self.partials.items():
            pane, minute, channel, event_type, country, segment = key
            done = pane < self.pane or (wm is not None and minute + MINUTE_MS <= wm)
            if p.version != p.emitted and (done or not final_only):
                rows.append(
                    AggregateRow(
                        minute,
                        channel,
                        event_type,
                        country,
                        segment,
                        part,
                        pane,
                        p.version,
                        p.updated_at,
                        p.copy(),
                    )
                )
                p.emitted = p.version
            if done:
                finished.append(key)
        for key in finished:
            del self.partials[key]
        if wm is not None and (self._compacted_at is None or wm - self._compacted_at >= MINUTE_MS):
            self._compact(wm)
        return rows

    def flush_alerts(self, now_ms: int, final_only: bool = False) -> list[AlertRow]:
        """Alert rows, with the same rules as ``flush`` (alerts have their own watermark)."""
        rows: list[AlertRow] = []
        wm = None if self.alert_max_ts is None else self.alert_max_ts - self.lateness_ms
        finished = []
        for (minute, rule, severity), entry in self.alerts.items():
            done = wm is not None and minute + MINUTE_MS <= wm
            if entry[1] != entry[2] and (done or not final_only):
                rows.append(
                    AlertRow(
                        minute, rule, severity, self.source_partition, entry[1], now_ms, entry[0]
                    )
                )
                entry[2] = entry[1]
            if done:
                finished.append((minute, rule, severity))
        for key in finished:
            del self.alerts[key]
        return rows

    def _compact(self, watermark: int) -> None:
        self._compacted_at = watermark
        for customer_id in list(self.memory):
            mem = self.memory[customer_id]
            if mem.compact(watermark):
                self._changed_customers.add(customer_id)
                if mem.empty():
                    del self.memory[customer_id]

    # ----------------------------------------------------------------- state

    def to_dict(self, *, customers: bool = True) -> dict[str, Any]:
        """JSON-able state. ``customers=False`` leaves out the per-customer memory (keep it
        per customer with ``take_customer_changes`` instead)."""
        data: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "partition": self.source_partition,
            "lateness_ms": self.lateness_ms,
            "pane_events": self.pane_events,
            "max_ts": self.max_ts,
            "seq": self.seq,
            "last_offset": self.last_offset,
            "pane": self.pane,
            "late": self.late_events,
            "replayed": self.replayed,
            "compacted_at": self._compacted_at,
            "partials": [
                [*key, p.version, p.emitted, p.updated_at, *p.to_list()]
                for key, p in self.partials.items()
            ],
            "alert_max_ts": self.alert_max_ts,
            "late_alerts": self.late_alerts,
            "alerts": [[*key, *entry] for key, entry in self.alerts.items()],
        }
        if customers:
            data["customers"] = {cid: m.to_list() for cid, m in self.memory.items()}
        return data

    def take_customer_changes(self) -> dict[str, list[Any] | None]:
        """Per-customer memory changed since the last call (None: deleted). For a table
        keyed by customer id, written once per batch; ``from_dict(customers=...)`` reads it."""
        out: dict[str, list[Any] | None] = {}
        for customer_id in self._changed_customers:
            mem = self.memory.get(customer_id)
            out[customer_id] = None if mem is None else mem.to_list()
        self._changed_customers.clear()
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], customers: Mapping[str, Sequence[Any]] | None = None
    ) -> AggregatorState:
        """Restore; configuration comes from the saved state (changing pane size or
        lateness under a live state would break determinism)."""
        if data.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown aggregator state format {data.get('format')!r}")
        state = cls(
            int(data["partition"]),
            lateness_ms=int(data["lateness_ms"]),
            pane_events=int(data["pane_events"]),
        )
        state.max_ts = data["max_ts"]
        state.seq = int(data["seq"])
        state.last_offset = data["last_offset"]
        state.pane = int(data["pane"])
        state.late_events = int(data["late"])
        state.replayed = int(data["replayed"])
        state._compacted_at = data["compacted_at"]
        for entry in data["partials"]:
            key: PartialKey = (
                int(entry[0]),
                int(entry[1]),
                str(entry[2]),
                str(entry[3]),
                str(entry[4]),
                str(entry[5]),
            )
            p = _Partial(version=int(entry[6]), emitted=int(entry[7]), updated_at=int(entry[8]))
            p.load_list(entry[9:])
            state.partials[key] = p
        state.alert_max_ts = data["alert_max_ts"]
        state.late_alerts = int(data["late_alerts"])
        for entry in data["alerts"]:
            state.alerts[(int(entry[0]), str(entry[1]), str(entry[2]))] = [
                int(entry[3]),
                int(entry[4]),
                int(entry[5]),
            ]
        source = customers if customers is not None else data.get("customers", {})
        state.memory = {str(cid): _Memory.from_list(v) for cid, v in source.items()}
        return state


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
            ids = cast(dict[str, "str | None"], record["identifiers"])
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
        b = cast(dict[str, Any], body)
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
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "events": self.events,
            "channels": self.channels[:],
            "identifier_hashes": self.identifier_hashes[:],
            "orders": self.orders,
            "payments": self.payments,
            "lifetime_value": self.lifetime_value.copy(),
            "contacts": self.contacts,
            "complaints": self.complaints,
            "last_csat": self.last_csat,
            "last_csat_at": self.last_csat_at,
            "last_nps": self.last_nps,
            "last_nps_at": self.last_nps_at,
            "sentiment_count": self.sentiment_count,
            "sentiment_sum": self.sentiment_sum,
            "recent_sentiments": [p[:] for p in self.recent_sentiments],
            "open_alerts": self.open_alerts[:],
            "segment": self.segment,
            "merged_into": self.merged_into,
            "version": self.version,
            "last_offset": self.last_offset,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Customer360State:
        """The inverse of ``to_dict`` (copies: the saved entry is never mutated)."""
        return cls(
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            events=data["events"],
            channels=list(data["channels"]),
            identifier_hashes=list(data["identifier_hashes"]),
            orders=data["orders"],
            payments=data["payments"],
            lifetime_value=dict(data["lifetime_value"]),
            contacts=data["contacts"],
            complaints=data["complaints"],
            last_csat=data["last_csat"],
            last_csat_at=data["last_csat_at"],
            last_nps=data["last_nps"],
            last_nps_at=data["last_nps_at"],
            sentiment_count=data["sentiment_count"],
            sentiment_sum=data["sentiment_sum"],
            recent_sentiments=[list(p) for p in data["recent_sentiments"]],
            open_alerts=list(data["open_alerts"]),
            segment=data["segment"],
            merged_into=data["merged_into"],
            version=data["version"],
            last_offset=data["last_offset"],
            updated_at=data["updated_at"],
        )


class Customer360Book:
    """The 360 states a batch touches: read from ``store`` on first touch, written back
    (one entry per touched customer) and emitted as rows by ``flush``.

    ``store`` is any mapping of customer id -> ``Customer360State.to_dict()``; in the agent,
    a changelog-backed table keyed by customer id (co-partitioned with the events).
    """

    def __init__(self, store: MutableMapping[str, Any] | None = None) -> None:
        self.store: MutableMapping[str, Any] = store if store is not None else {}
        self.touched: dict[str, Customer360State] = {}
        self._loaded: dict[str, int] = {}  # version of each touched state when read

    def state(self, customer_id: str) -> Customer360State:
        state = self.touched.get(customer_id)
        if state is None:
            saved = self.store.get(customer_id)
            state = Customer360State() if saved is None else Customer360State.from_dict(saved)
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
            self.store[customer_id] = state.to_dict()
            rows.append(state.row(customer_id))
        self.touched.clear()
        loaded.clear()
        return rows


# --------------------------------------------------------------------------- recomputation


def _is_contact(record: TouchpointRecord) -> bool:
    payload = record["payload"]
    return payload is not None and payload[0] == CONTACT and record["event_type"] in CONTACT_TYPES


def _is_failure(record: TouchpointRecord) -> bool:
    return record["channel"] in _SELF_SERVICE and record["event_type"] in _FAILURE_TYPES


def _contact_flags(events: Sequence[ResolvedEvent]) -> tuple[set[int], set[int]]:
    """Indexes (into ``events``) of repeat contacts and of contacts after a failure."""
    contacts: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    failures: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        r = ev["record"]
        if _is_contact(r):
            contacts[ev["customer_id"]].append((r["occurred_at"], r["event_id"], i))
        if _is_failure(r):
            failures[ev["customer_id"]].append(r["occurred_at"])
    repeat: set[int] = set()
    switch: set[int] = set()
    for customer_id, mine in contacts.items():
        mine.sort()
        for n, (ts, _, i) in enumerate(mine):
            if n > 0 and mine[n - 1][0] >= ts - REPEAT_CONTACT_MS:
                repeat.add(i)
            if any(ts - SWITCH_AFTER_FAILURE_MS <= f <= ts for f in failures.get(customer_id, ())):
                switch.add(i)
    return repeat, switch


def recompute(
    events: Iterable[ResolvedEvent], period_ms: int = MINUTE_MS
) -> dict[BucketKey, Measures]:
    """The plain batch computation of every measure per (period, dims), for checking.

    ``period_ms``: 60,000 for minutes, 3,600,000 for hours, 86,400,000 for UTC days.
    Feed it the events the streaming path accepted (late ones excluded).
    """
    events = list(events)
    repeat, switch = _contact_flags(events)
    out: dict[BucketKey, Measures] = {}
    for i, ev in enumerate(events):
        r = ev["record"]
        ts = r["occurred_at"]
        key = (
            ts - ts % period_ms,
            r["channel"],
            r["event_type"],
            r["context"]["country"] or "",
            segment_of(r),
        )
        m = out.setdefault(key, Measures())
        m.events += 1
        m.customers.add(ev["customer_id"])
        kind, body = r["payload"] or ("", {})
        b = cast(dict[str, Any], body)
        et = r["event_type"]
        if kind == COMMERCE and et == "order_placed":
            m.orders += 1
            if b.get("items") is not None:
                m.basket_items += b["items"]
                m.basket_orders += 1
        if kind == COMMERCE and et == "payment" and b.get("status") == "approved":
            m.payments_approved += 1
            m.revenue[b["currency"]] = m.revenue.get(b["currency"], 0) + _amount_e4(b["amount"])
        if kind == COMMERCE and et == "payment" and b.get("status") in ("declined", "failed"):
            m.payment_failures += 1
        if kind == WEB and et == "checkout_step" and b.get("checkout_step") == "cart":
            m.checkouts_started += 1
        if kind == CONTACT and b.get("csat") is not None:
            m.csat_responses += 1
            m.csat_sum += b["csat"]
        if kind == CONTACT and b.get("nps") is not None:
            m.nps_promoters += b["nps"] >= 9
            m.nps_passives += 7 <= b["nps"] <= 8
            m.nps_detractors += b["nps"] <= 6
        if kind == CONTACT and (b.get("is_complaint") or et == "complaint"):
            m.complaints += 1
        if kind == SOCIAL and b.get("sentiment") is not None:
            m.sentiment_count += 1
            m.sentiment_sum += b["sentiment"]
        if _is_contact(r):
            m.contacts += 1
            if b.get("wait_seconds") is not None:
                m.wait_seconds.append(b["wait_seconds"])
            if b.get("handle_seconds") is not None:
                m.handle_seconds.append(b["handle_seconds"])
            if b.get("resolved") is not None:
                m.fcr_eligible += 1
                m.fcr_resolved += bool(b["resolved"]) and not b.get("transferred")
            m.repeat_contacts += i in repeat
            m.channel_switches += i in switch
    return out


def count_new_customers(
    events: Iterable[ResolvedEvent], period_ms: int = MINUTE_MS
) -> dict[BucketKey, int]:
    """Per (period, dims): customers whose first event (over all ``events``) is in that period."""
    events = list(events)
    first: dict[str, int] = {}
    for ev in events:
        ts = ev["record"]["occurred_at"]
        cid = ev["customer_id"]
        if cid not in first or ts < first[cid]:
            first[cid] = ts
    seen: dict[BucketKey, set[str]] = defaultdict(set)
    for ev in events:
        r = ev["record"]
        ts = r["occurred_at"]
        period = ts - ts % period_ms
        cid = ev["customer_id"]
        if first[cid] - first[cid] % period_ms == period:
            key = (
                period,
                r["channel"],
                r["event_type"],
                r["context"]["country"] or "",
                segment_of(r),
            )
            seen[key].add(cid)
    return {key: len(ids) for key, ids in seen.items()}
