"""Money rules: an amount far outside the customer's own history (robust, per currency);
a velocity burst of payments or password resets."""

from __future__ import annotations

import math
from typing import Any

from streams.customers.alerts import _MINUTE, Alert
from streams.customers.detectors.build import _make_alert
from streams.customers.detectors.travel import _payment
from streams.customers.profile import Profile, _duration, _in_window, _money
from streams.customers.rules import AmountOutlier, VelocityBurst
from streams.wire.model import COMMERCE, TouchpointRecord, payload_body


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


def amounts_before(profile: Profile, currency: str, ts: int) -> list[list[Any]]:
    """The approved payments ``[ts, amount]`` in ``currency`` before event time ``ts``."""
    history = profile.amounts.get(currency, [])
    if ts > profile.last_ms:  # in order: all of them
        return history
    return [e for e in history if e[0] < ts]


def observe_amount_outlier(
    profile: Profile, record: TouchpointRecord, rule: AmountOutlier, now_ms: int
) -> Alert | None:
    body = _payment(record)
    if body is None:
        return None
    history = amounts_before(profile, body["currency"], record["occurred_at"])
    if len(history) < rule.min_history:
        return None  # cold start: no statistical alert
    amount = body["amount"]
    logs = [math.log(e[1]) for e in history if e[1] > 0]
    if len(logs) < rule.min_history:
        return None
    med = _median(logs)
    mad = max(_median([abs(v - med) for v in logs]), 0.1)  # floor: amounts all alike
    z = (math.log(amount) - med) / (1.4826 * mad)
    typical = math.exp(med)
    ratio = amount / typical
    if z < rule.min_robust_z or ratio < rule.min_ratio_to_median:
        return None
    largest = max(e[1] for e in history)
    cur = body["currency"]
    summary = (
        f"usual payments median {_money(typical, cur)} (largest {_money(largest, cur)}, "
        f"{len(logs)} payments); this payment {_money(amount, cur)} is {ratio:,.0f}x the "
        f"median (robust z {z:.1f})"
    )
    return _make_alert(
        profile,
        "amount_outlier",
        rule,
        score=z,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_median": f"{typical:.2f}",
            "baseline_mad_log": f"{mad:.4f}",
            "baseline_largest": f"{largest:.2f}",
            "baseline_payments": str(len(logs)),
            "observed_amount": f"{amount:.2f}",
            "currency": cur,
            "ratio_to_median": f"{ratio:.2f}",
            "robust_z": f"{z:.2f}",
        },
        occurred_at=record["occurred_at"],
        now_ms=now_ms,
    )


def observe_velocity_burst(
    profile: Profile, record: TouchpointRecord, rule: VelocityBurst, now_ms: int
) -> Alert | None:
    event_type = record["event_type"]
    if event_type == "payment" and payload_body(record, COMMERCE) is not None:
        entries, what = profile.payments, "payments"
    elif event_type == "password_reset":
        entries, what = profile.resets, "password resets"
    else:
        return None
    ts = record["occurred_at"]
    window = int(rule.window_minutes * _MINUTE)
    recent = _in_window(entries, ts - window, ts)
    count = len(recent) + 1
    if count < rule.min_events:
        return None
    ids = [e[1] for e in recent] + [record["event_id"]]
    span = max(ts, *(e[0] for e in recent)) - min(ts, *(e[0] for e in recent))
    summary = (
        f"usually no burst; {count} {what} in {_duration(span)} "
        f"(alert from {rule.min_events} within {rule.window_minutes:g} min)"
    )
    return _make_alert(
        profile,
        "velocity_burst",
        rule,
        score=count / rule.min_events,
        summary=summary,
        event_ids=ids,
        evidence={
            "kind": what,
            "observed_count": str(count),
            "observed_span_s": f"{span / 1000:.0f}",
            "threshold_count": str(rule.min_events),
            "window_minutes": f"{rule.window_minutes:g}",
        },
        occurred_at=ts,
        now_ms=now_ms,
    )
