"""Builders of touchpoints, profiles and detectors for the detector and customer-stage tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.customers.detect import (
    RULE_NAMES,
    Alert,
    Detector,
    Profile,
    Rules,
    fold,
)
from streams.sim import records
from streams.wire.codec import SchemaRegistry
from streams.wire.model import COMMERCE, CONTACT, SOCIAL, WEB, TouchpointRecord

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = REPO / "schemas"
REGISTRY = SchemaRegistry.from_dir(SCHEMAS)
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_760_000_000_000  # 2025-10-09 08:53:20 UTC
LONDON = (51.5074, -0.1278)
SAO_PAULO = (-23.5505, -46.6333)
PARIS = (48.8566, 2.3522)
_n = iter(range(10**9))


# --------------------------------------------------------------------------- builders


def rec(
    event_type: str = "page_view",
    channel: str = "web",
    ts: int = T0,
    *,
    country: str | None = "GB",
    geo: tuple[float, float] | None = None,
    tz: str | None = "Europe/London",
    device: str | None = None,
    ua: str | None = None,
    payload: tuple[str, Any] | None = None,
    event_id: str | None = None,
) -> TouchpointRecord:
    if payload is None and channel in ("web", "mobile"):
        payload = (WEB, records.web(None))
    return records.touchpoint(
        event_id or f"ev-{next(_n)}",
        channel,
        event_type,
        ts,
        ts,
        "test",
        records.identifiers(device_id=device, customer_id="CRM-1"),
        records.context(
            country,
            None if geo is None else {"lat": geo[0], "lon": geo[1], "city": None},
            tz,
            user_agent=ua,
        ),
        payload,
        {},
        None,
    )


def pay(
    amount: float,
    ts: int = T0,
    *,
    currency: str = "GBP",
    status: str = "approved",
    country: str | None = "GB",
    device: str | None = None,
    geo: tuple[float, float] | None = None,
    channel: str = "web",
    event_type: str = "payment",
    event_id: str | None = None,
) -> TouchpointRecord:
    body = records.commerce(amount, currency, merchant="Northwind GB", status=status, items=1)
    return rec(
        event_type,
        channel,
        ts,
        country=country,
        device=device,
        geo=geo,
        payload=(COMMERCE, body),
        event_id=event_id,
    )


def contact(
    event_type: str = "call",
    ts: int = T0,
    *,
    case: str | None = None,
    resolved: bool | None = None,
    complaint: bool | None = None,
    csat: int | None = None,
    nps: int | None = None,
    event_id: str | None = None,
) -> TouchpointRecord:
    body = records.contact_centre(
        contact_id=case,
        medium="call",
        resolved=resolved,
        is_complaint=complaint,
        csat=csat,
        nps=nps,
    )
    return rec(event_type, "contact_centre", ts, payload=(CONTACT, body), event_id=event_id)


def social(sentiment: float, ts: int = T0) -> TouchpointRecord:
    body = records.social("x", text="meh", sentiment=sentiment, is_public=True)
    return rec("mention", "social", ts, country=None, tz=None, payload=(SOCIAL, body))


def only(rule: str, **settings: Any) -> Detector:
    """A detector with just ``rule`` enabled (others off), with ``settings`` applied."""
    data = {name: {"enabled": name == rule} for name in RULE_NAMES}
    data[rule].update(settings)
    return Detector(Rules.from_mapping({"rules": data}))


def run(detector: Detector, profile: Profile, records: list[TouchpointRecord]) -> list[Alert]:
    alerts: list[Alert] = []
    for r in records:
        alerts += detector.process(profile, r, r["occurred_at"])[1]
    return alerts


def history(
    n: int, start: int = T0 - 30 * DAY, step: int = HOUR, **kw: Any
) -> Iterator[TouchpointRecord]:
    for i in range(n):
        yield rec("page_view", ts=start + i * step, **kw)


def day_person(
    profile: Profile, tz: str | None, n: int = 70, utc_hours: tuple[int, ...] = (8, 12, 18)
) -> None:
    """n events at these UTC hours over the 40 days before T0 (London: BST, UTC+1)."""
    day0 = T0 - T0 % DAY - 40 * DAY
    for i in range(n):
        ts = day0 + (i // 3) * DAY + utc_hours[i % 3] * HOUR + 10 * MIN
        fold(profile, rec("page_view", ts=ts, tz=tz))
