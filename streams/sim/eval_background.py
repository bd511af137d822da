"""The background of the labelled stream: the generator's traffic over weeks, made normal
(see "Normal traffic" in :mod:`streams.sim.eval_data`), and the record builders the
injected scenarios share."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from streams.sim import records
from streams.sim.generator import GeneratedEvent, Traps, generate
from streams.sim.journeys.world import COUNTRIES as _COUNTRIES
from streams.wire.model import (
    CONTACT,
    CommerceRecord,
    ContactCentreRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    Payload,
    TouchpointRecord,
    WebRecord,
    payload_body,
)

MINUTE: Final = 60_000
HOUR: Final = 3_600_000
DAY: Final = 86_400_000
DEFAULT_NOW_MS: Final = 1_760_000_000_000
_CONTACTS: Final = frozenset({"call", "chat", "email", "complaint"})
COUNTRY_BY_CODE: Final = {c.code: c for c in _COUNTRIES}


# --------------------------------------------------------------------------- records


def web_page(
    page_type: str,
    *,
    success: bool | None = None,
    error: str | None = None,
    step: str | None = None,
) -> WebRecord:
    url = f"https://shop.example.com/{page_type}"
    return records.web(
        None, url=url, page_type=page_type, checkout_step=step, success=success, error_code=error
    )


def contact_body(
    contact_id: str,
    medium: str,
    *,
    resolved: bool,
    complaint: bool = False,
    reason: str = "order_status",
    csat: int | None = None,
    nps: int | None = None,
) -> ContactCentreRecord:
    return records.contact_centre(
        contact_id=contact_id, medium=medium, queue="general", agent_id="AG-1000",
        reason=reason, wait_seconds=60.0, handle_seconds=300.0, resolved=resolved,
        transferred=False, is_complaint=complaint, csat=csat, nps=nps,
    )  # fmt: skip


def payment_body(
    amount: float, currency: str, country: str, status: str, tx: str
) -> CommerceRecord:
    return records.commerce(
        amount, currency, order_id=f"ORD-{tx[:12].upper()}", transaction_id=f"TX-{tx}",
        merchant=f"Northwind {country}", merchant_category="5651", payment_method="card_visa",
        status=status, items=1,
    )  # fmt: skip


# --------------------------------------------------------------------------- people


@dataclass(slots=True)
class Person:
    index: int
    customer_id: str
    crm: str | None  # CRM id seen on its events (None: never identified)
    country: str
    timezone: str
    events: list[TouchpointRecord]
    geo: GeoRecord | None = None
    user_agent: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    phone: str | None = None
    handle: str | None = None
    wake: float = 8.0  # local hour the waking window opens
    sleep: float = 23.0  # local hour it closes (may be > 24: past midnight)

    @property
    def currency(self) -> str:
        return COUNTRY_BY_CODE[self.country].currency if self.country in COUNTRY_BY_CODE else "EUR"


def people_of(events: Sequence[GeneratedEvent], rng: random.Random) -> dict[int, Person]:
    by_person: dict[int, list[TouchpointRecord]] = defaultdict(list)
    for e in events:
        by_person[e.person].append(e.record)
    people: dict[int, Person] = {}
    for index in sorted(by_person):
        records = by_person[index]
        crms = Counter(r["identifiers"]["customer_id"] for r in records)
        crms.pop(None, None)
        crm = crms.most_common(1)[0][0] if crms else None
        countries = Counter(r["context"]["country"] for r in records if r["context"]["country"])
        zones = Counter(r["context"]["timezone"] for r in records if r["context"]["timezone"])
        person = Person(
            index=index,
            customer_id=crm or f"person-{index}",
            crm=crm,
            country=countries.most_common(1)[0][0] if countries else "GB",
            timezone=zones.most_common(1)[0][0] if zones else "Europe/London",
            events=records,
            wake=rng.uniform(7.0, 10.0),
            sleep=rng.uniform(22.0, 24.0),
        )
        for r in records:
            ids, ctx = r["identifiers"], r["context"]
            if r["channel"] == "web" and ctx["geo"] is not None and person.geo is None:
                person.geo = {**ctx["geo"]}
                person.user_agent = ctx["user_agent"]
                person.anonymous_id = ids["anonymous_id"]
            if ids["email"] and person.email is None:
                person.email = ids["email"].strip().lower()
            if ids["phone"] and person.phone is None and r["channel"] == "contact_centre":
                person.phone = ids["phone"]
            if ids["social_handle"] and ids["email"] and person.handle is None:
                person.handle = ids["social_handle"]  # linked to the account by a DM
        people[index] = person
    return people


# --------------------------------------------------------------------------- normal traffic


def local_day_start(ts_ms: int, zone: ZoneInfo) -> datetime:
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def at_local(day: datetime, hour: float) -> int:
    """Epoch ms of ``hour`` (fractional, may exceed 24) on local ``day``."""
    naive = day.replace(tzinfo=None) + timedelta(hours=hour)
    return int(naive.replace(tzinfo=day.tzinfo).timestamp() * 1000)


def _sessions(records: list[TouchpointRecord], gap_ms: int) -> list[list[TouchpointRecord]]:
    blocks: list[list[TouchpointRecord]] = []
    last_end = -(10**18)
    for r in records:
        if r["occurred_at"] - last_end > gap_ms or not blocks:
            blocks.append([])
        blocks[-1].append(r)
        last_end = max(last_end, r["occurred_at"])
    return blocks


def _retime(person: Person, rng: random.Random, now_ms: int, notes: Counter[str]) -> None:
    """Move each session to a time inside the person's waking window, same local day."""
    zone = ZoneInfo(person.timezone)
    out: list[TouchpointRecord] = []
    not_before = 0
    for block in _sessions(person.events, 3 * HOUR):
        start = block[0]["occurred_at"]
        end = max(r["occurred_at"] for r in block)
        day = local_day_start(start, zone)
        new_start = at_local(day, rng.uniform(person.wake, person.sleep - 0.25))
        while new_start < not_before:
            day = day + timedelta(days=1)
            new_start = at_local(day, rng.uniform(person.wake, person.sleep - 0.25))
        delta = new_start - start
        if end + delta > now_ms:
            notes["sessions dropped (re-timed past now)"] += 1
            continue
        for r in block:
            lag = r["received_at"] - r["occurred_at"]
            r["occurred_at"] += delta
            r["received_at"] = min(r["occurred_at"] + lag, now_ms)
            out.append(r)
        notes["sessions re-timed into waking hours"] += 1
        not_before = end + delta + 30 * MINUTE
    person.events = out


def case_of(record: TouchpointRecord) -> str | None:
    payload = record["payload"]
    if payload is None or payload[0] != CONTACT:
        return None
    body: dict[str, Any] = payload[1]  # type: ignore[assignment]
    contact_id = body.get("contact_id")
    return str(contact_id) if contact_id else record["event_id"]


def is_contact(record: TouchpointRecord) -> bool:
    return record["channel"] == "contact_centre" and record["event_type"] in _CONTACTS


def _resolve_complaints(
    person: Person, rng: random.Random, now_ms: int, notes: Counter[str]
) -> None:
    """Give each complaint a resolving call-back (same case) 2-30 h later."""
    added: list[TouchpointRecord] = []
    done: set[str] = set()
    for r in person.events:
        body = payload_body(r, CONTACT)
        if body is None:
            continue
        if not (r["event_type"] == "complaint" or body.get("is_complaint")):
            continue
        case = case_of(r)
        if case is None or case in done:
            continue
        done.add(case)
        ts = r["occurred_at"] + int(rng.uniform(2, 30) * HOUR)
        if ts > now_ms:
            continue
        follow = contact_body(case, "call", resolved=True, reason="complaint_follow_up")
        record = injected_record(
            eval_uuid(rng),
            "contact_centre",
            "call",
            ts,
            "genesys",
            {**r["identifiers"]},
            records.context(person.country, timezone=person.timezone),
            (CONTACT, follow),
        )
        added.append(record)
        notes["complaint call-backs added"] += 1
    if added:
        person.events = sorted([*person.events, *added], key=lambda r: r["occurred_at"])


def _drop_friction(person: Person, notes: Counter[str]) -> None:
    """No failure->contact within the hour; at most two contact cases in any 7 days."""
    events = person.events
    contact_times = [r["occurred_at"] for r in events if is_contact(r)]
    keep: list[TouchpointRecord] = []
    for r in events:
        if r["event_type"] in ("checkout_failed", "login_failed") and r["channel"] in (
            "web",
            "mobile",
        ):
            t = r["occurred_at"]
            if any(t <= c <= t + HOUR + MINUTE for c in contact_times):
                notes["failures dropped (contact within the hour)"] += 1
                continue
        keep.append(r)
    # Contact cases: keep a case only if fewer than two kept cases started in 7 days.
    case_start: dict[str, int] = {}
    for r in keep:
        case = case_of(r)
        if case is not None and is_contact(r):
            case_start.setdefault(case, r["occurred_at"])
    kept_starts: list[int] = []
    dropped: set[str] = set()
    for case, start in sorted(case_start.items(), key=lambda kv: kv[1]):
        if sum(1 for s in kept_starts if start - s < 7 * DAY + HOUR) >= 2:
            dropped.add(case)
        else:
            kept_starts.append(start)
    if dropped:
        notes["contact cases dropped (over 2 in 7 days)"] += len(dropped)
        keep = [r for r in keep if case_of(r) not in dropped]
    person.events = keep


def normal_stream(
    customers: int,
    *,
    seed: int = 7,
    now_ms: int = DEFAULT_NOW_MS,
    span_days: float = 45.0,
    events_per_customer: float = 45.0,
    traps: Traps | None = None,
) -> tuple[list[GeneratedEvent], dict[str, int]]:
    """The post-processed background alone (no injections), and what was changed."""
    _, events, notes = build_background(
        customers, seed, now_ms, span_days, events_per_customer, traps or Traps.none()
    )
    return events, dict(notes)


def build_background(
    customers: int,
    seed: int,
    now_ms: int,
    span_days: float,
    events_per_customer: float,
    traps: Traps,
) -> tuple[dict[int, Person], list[GeneratedEvent], Counter[str]]:
    raw = generate(
        customers,
        seed=seed,
        now_ms=now_ms - 6 * HOUR,
        span_ms=int(span_days * DAY),
        events_per_customer=events_per_customer,
        traps=traps,
    )
    keys = {e.record["event_id"]: e.key for e in raw}
    trap_of = {e.record["event_id"]: e.trap for e in raw if e.trap}
    rng = random.Random(seed * 7919 + 17)
    people = people_of(raw, rng)
    notes: Counter[str] = Counter()
    for person in people.values():
        _retime(person, rng, now_ms, notes)
        _resolve_complaints(person, rng, now_ms, notes)
        _drop_friction(person, notes)
    kept = {r["event_id"] for p in people.values() for r in p.events}
    dropped = [e for e in raw if e.record["event_id"] not in kept]
    notes["events dropped in total"] = len(dropped)
    events = [
        GeneratedEvent(
            r, p.index, keys.get(r["event_id"], person_key(p)), trap_of.get(r["event_id"], "")
        )
        for p in people.values()
        for r in p.events
    ]
    events.sort(key=lambda e: e.record["occurred_at"])
    return people, events, notes


def person_key(person: Person) -> bytes:
    if person.crm:
        return f"customer_id:{person.crm}".encode()
    return f"person:{person.index}".encode()


# --------------------------------------------------------------------------- injection


def eval_uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def injected_record(
    event_id: str,
    channel: str,
    event_type: str,
    ts: int,
    source: str,
    ids: IdentifiersRecord,
    context: ContextRecord,
    payload: tuple[str, Payload] | None,
) -> TouchpointRecord:
    return records.touchpoint(
        event_id, channel, event_type, ts, ts + 1500, source, ids, context, payload,
        {"eval": "injected"}, "granted",
    )  # fmt: skip
