"""The plain batch computation of every measure, for checking the streaming state."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, cast

from streams.customers.measures import (
    _FAILURE_TYPES,
    _SELF_SERVICE,
    CONTACT_TYPES,
    MINUTE_MS,
    REPEAT_CONTACT_MS,
    SWITCH_AFTER_FAILURE_MS,
    BucketKey,
    Measures,
    _amount_e4,
    segment_of,
)
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    WEB,
    ResolvedEvent,
    TouchpointRecord,
)

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
