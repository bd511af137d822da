"""Location rules: impossible travel between event-time neighbours; a new device in a new
country paying a high value."""

from __future__ import annotations

import bisect
import math
from typing import Any

from streams.customers.alerts import _HOUR, _MINUTE, Alert
from streams.customers.detectors.build import _make_alert
from streams.customers.profile import (
    Profile,
    _duration,
    _money,
    _session_attrs,
    _usual,
    haversine_km,
    to_eur,
)
from streams.customers.rules import ImpossibleTravel, NewDeviceNewCountryHighValue
from streams.wire.model import COMMERCE, GeoRecord, TouchpointRecord, payload_body

# --------------------------------------------------------------------------- detectors


def observe_impossible_travel(
    profile: Profile, record: TouchpointRecord, rule: ImpossibleTravel, now_ms: int
) -> Alert | None:
    """The event against its neighbours in *event time*: the customer's latest location
    before it and, when it arrives late, the earliest one after it. The answer then does
    not depend on the order events arrive in (within the ``_MAX_GEOS`` newest locations).
    """
    geo = record["context"]["geo"]
    if geo is None or not profile.geos:
        return None
    ts = record["occurred_at"]
    geos = profile.geos
    i = bisect.bisect_right(geos, ts, key=lambda g: g[0])
    for other, after in (
        (geos[i - 1] if i else None, False),
        (geos[i] if i < len(geos) else None, True),
    ):
        if other is not None:
            alert = _travel(profile, record, geo, other, after, rule, now_ms)
            if alert is not None:
                return alert
    return None


def _travel(
    profile: Profile,
    record: TouchpointRecord,
    geo: GeoRecord,
    other: list[Any],
    after: bool,
    rule: ImpossibleTravel,
    now_ms: int,
) -> Alert | None:
    """Too fast between this event and ``other`` (a location entry), else None."""
    other_ts, other_id, lat, lon, other_country, other_type = other
    # Cheap bound first: the great-circle distance is at most the degree "Manhattan" sum.
    if (abs(geo["lat"] - lat) + abs(geo["lon"] - lon)) * 111.2 < rule.min_distance_km:
        return None
    distance = haversine_km(lat, lon, geo["lat"], geo["lon"])
    if distance < rule.min_distance_km:
        return None
    ts = record["occurred_at"]
    elapsed = abs(ts - other_ts)
    speed = math.inf if elapsed == 0 else distance / (elapsed / _HOUR)
    if speed <= rule.max_speed_kmh:
        return None
    country = record["context"]["country"] or "?"
    score = 100.0 if math.isinf(speed) else min(100.0, speed / rule.max_speed_kmh)
    speed_text = "simultaneous" if math.isinf(speed) else f"{speed:,.0f} km/h"
    summary = (
        f"usual countries {_usual(profile.countries)}; this {record['event_type']} from "
        f"{country} {_duration(elapsed)} {'before' if after else 'after'} a "
        f"{other_country or '?'} {other_type}: "
        f"{distance:,.0f} km in {_duration(elapsed)} ({speed_text}; limit "
        f"{rule.max_speed_kmh:,.0f} km/h)"
    )
    pair = [record["event_id"], other_id] if after else [other_id, record["event_id"]]
    return _make_alert(
        profile,
        "impossible_travel",
        rule,
        score=score,
        summary=summary,
        event_ids=pair,  # in event time
        evidence={
            "baseline_countries": _usual(profile.countries),
            "previous_event_id" if not after else "next_event_id": other_id,
            "previous_country" if not after else "next_country": other_country or "",
            "previous_location" if not after else "next_location": f"{lat:.4f},{lon:.4f}",
            "observed_country": country,
            "observed_location": f"{geo['lat']:.4f},{geo['lon']:.4f}",
            "distance_km": f"{distance:.0f}",
            "elapsed_s": f"{elapsed / 1000:.0f}",
            "speed_kmh": "inf" if math.isinf(speed) else f"{speed:.0f}",
            "threshold_kmh": f"{rule.max_speed_kmh:g}",
        },
        occurred_at=max(ts, other_ts),
        now_ms=now_ms,
    )


def _payment(record: TouchpointRecord) -> dict[str, Any] | None:
    if record["event_type"] != "payment":
        return None
    body = payload_body(record, COMMERCE)
    if body is None or body.get("status") == "refunded" or not body["amount"] > 0:
        return None
    return body


def observe_new_device_new_country(
    profile: Profile, record: TouchpointRecord, rule: NewDeviceNewCountryHighValue, now_ms: int
) -> Alert | None:
    body = _payment(record)
    if body is None or profile.seen < rule.min_history or not profile.countries:
        return None
    value = to_eur(body["amount"], body["currency"])
    if value is None or value < rule.min_amount_eur:
        return None
    device, country = _session_attrs(profile, record, int(rule.session_minutes * _MINUTE))
    if device is None or country is None:
        return None
    # "Never seen" before this session: a login from the new device a minute earlier
    # (already folded in) does not make the device known.
    since = record["occurred_at"] - int(rule.session_minutes * _MINUTE)
    fresh = {(e[1], e[2]) for e in profile.fresh if e[0] >= since}
    if device in profile.devices and ("d", device) not in fresh:
        return None
    if country in profile.countries and ("c", country) not in fresh:
        return None
    money = _money(body["amount"], body["currency"])
    summary = (
        f"usual countries {_usual(profile.countries)}, {len(profile.devices)} known devices; "
        f"this payment of {money} (~{value:,.0f} EUR) from {country} on a device never seen "
        f"before (high value from {rule.min_amount_eur:,.0f} EUR)"
    )
    return _make_alert(
        profile,
        "new_device_new_country_high_value",
        rule,
        score=value / rule.min_amount_eur if rule.min_amount_eur else value,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_countries": _usual(profile.countries),
            "known_devices": str(len(profile.devices)),
            "observed_country": country,
            "observed_device": device,
            "amount": f"{body['amount']:.2f}",
            "currency": body["currency"],
            "amount_eur": f"{value:.2f}",
            "threshold_eur": f"{rule.min_amount_eur:g}",
        },
        occurred_at=record["occurred_at"],
        now_ms=now_ms,
    )
