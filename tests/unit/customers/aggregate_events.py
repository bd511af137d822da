"""Builders of resolved events for the aggregate and customer-stage tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from streams.customers.aggregates import AddOutcome, AggregatorState
from streams.customers.measures import (
    DAY_MS,
    MINUTE_MS,
    Measures,
)
from streams.customers.rows import (
    AggregateRow,
    combine,
)
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    IDENTIFIER_KINDS,
    MOBILE,
    SOCIAL,
    WEB,
    ResolvedEvent,
    TouchpointRecord,
)

T0 = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS  # a UTC midnight
NOW = T0 + 30 * DAY_MS
LATE = 5 * MINUTE_MS


# --------------------------------------------------------------------------- event builders


def identifiers_of(**kw: str) -> dict[str, str | None]:
    return {k: kw.get(k) for k in IDENTIFIER_KINDS}


_counter = iter(range(10**9))


def ev(
    customer: str,
    ts: int,
    channel: str = "web",
    event_type: str = "page_view",
    payload: tuple[str, dict[str, Any]] | None = None,
    *,
    country: str | None = "GB",
    ids: dict[str, str | None] | None = None,
    properties: dict[str, str] | None = None,
    event_id: str | None = None,
) -> ResolvedEvent:
    record = {
        "event_id": event_id or f"e{next(_counter):08d}",
        "channel": channel,
        "event_type": event_type,
        "occurred_at": ts,
        "received_at": ts,
        "source": "test",
        "identifiers": ids or identifiers_of(customer_id=customer),
        "context": {
            "country": country,
            "geo": None,
            "ip": None,
            "user_agent": None,
            "locale": None,
            "timezone": None,
        },
        "payload": payload,
        "properties": properties or {},
        "consent": None,
    }
    return {"customer_id": customer, "record": cast(TouchpointRecord, record)}


def web(step: str | None = None, success: bool | None = None) -> tuple[str, dict[str, Any]]:
    return (
        WEB,
        {
            "session_id": "s",
            "url": None,
            "referrer": None,
            "page_type": None,
            "search_query": None,
            "product_id": None,
            "checkout_step": step,
            "success": success,
            "error_code": None,
        },
    )


def mobile() -> tuple[str, dict[str, Any]]:
    return (
        MOBILE,
        {
            "session_id": "s",
            "app_version": "1",
            "os": "ios",
            "screen": None,
            "push_campaign": None,
            "support_topic": None,
            "success": False,
            "error_code": None,
        },
    )


def commerce(
    status: str, amount: float = 10.0, currency: str = "GBP", items: int | None = 2
) -> tuple[str, dict[str, Any]]:
    return (
        COMMERCE,
        {
            "order_id": "o",
            "transaction_id": "t",
            "amount": amount,
            "currency": currency,
            "merchant": None,
            "merchant_category": None,
            "payment_method": None,
            "status": status,
            "items": items,
        },
    )


def contact(
    wait: float | None = 30.0,
    handle: float | None = 200.0,
    resolved: bool | None = True,
    transferred: bool | None = False,
    complaint: bool | None = False,
    csat: int | None = None,
    nps: int | None = None,
) -> tuple[str, dict[str, Any]]:
    return (
        CONTACT,
        {
            "contact_id": "c",
            "medium": "call",
            "queue": "q",
            "agent_id": "a",
            "reason": "r",
            "wait_seconds": wait,
            "handle_seconds": handle,
            "resolved": resolved,
            "transferred": transferred,
            "is_complaint": complaint,
            "csat": csat,
            "nps": nps,
        },
    )


def social(sentiment: float | None) -> tuple[str, dict[str, Any]]:
    return (
        SOCIAL,
        {
            "platform": "x",
            "message_id": "m",
            "in_reply_to": None,
            "text": None,
            "sentiment": sentiment,
            "is_public": True,
        },
    )


def call(customer: str, ts: int, **kw: Any) -> ResolvedEvent:
    return ev(customer, ts, "contact_centre", "call", contact(**kw))


def failure(customer: str, ts: int, event_type: str = "checkout_failed") -> ResolvedEvent:
    return ev(customer, ts, "web", event_type, web("payment", False))


def run(
    events: Sequence[ResolvedEvent], state: AggregatorState | None = None, **kw: Any
) -> tuple[AggregatorState, list[AggregateRow], list[AddOutcome]]:
    state = state or AggregatorState(0, **kw)
    outcomes = [state.add(e, NOW) for e in events]
    return state, state.flush(NOW), outcomes


def totals(rows: Sequence[AggregateRow]) -> Measures:
    out = Measures()
    for m in combine(rows).values():
        out.merge(m)
    return out
