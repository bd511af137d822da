"""Time-of-day rule: activity at a local hour the customer has not used, judged against
the hours used *before* the event in event time (``hours_before``)."""

from __future__ import annotations

import bisect

from streams.customers.alerts import Alert
from streams.customers.detectors.build import _make_alert
from streams.customers.profile import (
    _DIGITAL,
    _MAX_EARLY,
    Profile,
    _local_minute,
    _zone_of,
    local_hour,
)
from streams.customers.rules import UnusualHour
from streams.wire.model import TouchpointRecord


def _hour_gap(hours: list[int], hour: int) -> int:
    """Circular distance in hours from ``hour`` to the nearest hour with activity."""
    best = 24
    for h, count in enumerate(hours):
        if count:
            d = abs(h - hour)
            d = min(d, 24 - d)
            if d < best:
                best = d
    return best


def _hour_ranges(hours: list[int]) -> str:
    used = [h for h in range(24) if hours[h]]
    if not used:
        return "none"
    ranges: list[tuple[int, int]] = []
    for h in used:
        if ranges and ranges[-1][1] == h - 1:
            ranges[-1] = (ranges[-1][0], h)
        else:
            ranges.append((h, h))
    if len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] == 23:  # wraps midnight
        first = ranges.pop(0)
        ranges[-1] = (ranges[-1][0], first[1])
    return ", ".join(f"{a:02d}-{(b + 1) % 24:02d}" for a, b in ranges)


def hours_before(profile: Profile, ts: int) -> tuple[list[int], int]:
    """The hours used before event time ``ts`` (the histogram, with the hours first used
    later at 0) and how many web/app events came before it. Events arrive out of event
    time (catch-up, merges), and what happened after an event is no baseline for it.

    Exact up to ``_MAX_EARLY`` events (beyond that the count is the masked histogram's).
    """
    if ts > profile.last_ms:  # in order: all of it
        return profile.hours, sum(profile.hours)
    hours = [
        n if 0 < first < ts else 0
        for n, first in zip(profile.hours, profile.hour_first, strict=True)
    ]
    early = profile.early
    count = bisect.bisect_left(early, ts)
    if count >= _MAX_EARLY:
        count = max(count, sum(hours))
    return hours, count


def observe_unusual_hour(
    profile: Profile, record: TouchpointRecord, rule: UnusualHour, now_ms: int
) -> Alert | None:
    if record["channel"] not in _DIGITAL:
        return None
    ts = record["occurred_at"]
    hours, history = hours_before(profile, ts)
    if history < rule.min_history:
        return None  # cold start: no statistical alert
    zone = _zone_of(profile, record)
    hour = local_hour(ts, zone)
    gap = _hour_gap(hours, hour)
    if gap < rule.min_gap_hours:
        return None
    minute = _local_minute(ts, zone)
    usual = _hour_ranges(hours)
    summary = (
        f"usual active hours {usual} ({zone or 'UTC'}, {history} events); "
        f"this {record['event_type']} at {hour:02d}:{minute:02d} local, {gap} h from any "
        f"hour used before"
    )
    return _make_alert(
        profile,
        "unusual_hour",
        rule,
        score=gap / rule.min_gap_hours,
        summary=summary,
        event_ids=[record["event_id"]],
        evidence={
            "baseline_hours": usual,
            "baseline_events": str(history),
            "timezone": zone or "UTC",
            "observed_hour": str(hour),
            "gap_hours": str(gap),
            "threshold_gap_hours": str(rule.min_gap_hours),
        },
        occurred_at=ts,
        now_ms=now_ms,
    )
