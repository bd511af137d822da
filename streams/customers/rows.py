"""The rows the customer stage sends to ClickHouse (``cx_partials``, ``alert_partials``,
``customer_360``): their columns, keys and versions, and how views combine them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Final

from streams.customers.measures import BucketKey, Measures

# --------------------------------------------------------------------------- rows


def _money(values: Mapping[str, int]) -> dict[str, Any]:
    return {currency: Decimal(v).scaleb(-4) for currency, v in values.items()}


_PLAIN_E4: Final = 10**24  # below it, ``Decimal(v).scaleb(-4)`` is exact (28 digits)


def money_text(values: Mapping[str, int]) -> dict[str, Any]:
    """``_money`` as the exact strings the aggregates topic carries (``str`` of each
    Decimal), without making the Decimals: ``12345`` -> ``"1.2345"``."""
    out: dict[str, Any] = {}
    for currency, v in values.items():
        if -_PLAIN_E4 < v < _PLAIN_E4:
            units, e4 = divmod(abs(v), 10_000)
            out[currency] = f"{'-' if v < 0 else ''}{units}.{e4:04d}"
        else:
            out[currency] = str(Decimal(v).scaleb(-4))
    return out


Money = Callable[[Mapping[str, int]], dict[str, Any]]


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

    def values(self, money: Money = _money) -> list[Any]:
        """The columns' values; money maps as Decimals (``money_text``: exact strings)."""
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
            money(m.revenue),
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

    def values(self, money: Money = _money) -> list[Any]:  # (no money column)
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

    def values(self, money: Money = _money) -> list[Any]:
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
            money(self.lifetime_value),
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
