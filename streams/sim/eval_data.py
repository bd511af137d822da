"""Labelled evaluation streams for the detectors, and the metrics that score them.

:func:`labelled_stream` takes normal traffic from :func:`streams.sim.generator.generate`
over several weeks, makes it a realistic *background* (see "Normal traffic" below),
and injects labelled anomalies and friction journeys for some customers, one scenario
per chosen customer:

=================================== ==================================================
rule                                injected
=================================== ==================================================
impossible_travel                   a home login, then 20-90 min later a payment with a
                                    geo on another continent (known browser, usual
                                    amount)
new_device_new_country_high_value   a payment of 1.5-5x the value threshold from a new
                                    device id in a country never used (customer with
                                    too few payments for amount statistics)
amount_outlier                      8-14 ordinary payments over a month, then one of
                                    10-40x the largest
velocity_burst                      5-7 card-testing payments, or 5-7 password resets,
                                    within 3-8 min
unusual_hour                        a web login and pages at the hour of the local day
                                    farthest from any hour the customer has used
                                    (customers with a long history only)
self_service_failed                 a failed web checkout, then a call 3-55 min later
high_effort                         three distinct contacts within 2-6 days
unhappy_valuable                    payments worth ~1.3-2x the high-value threshold,
                                    then a call and a CSAT 1-2 / NPS 0-4 survey (or a
                                    negative public mention when the handle is known)
complaint_unresolved                a call logged as a complaint and never resolved
=================================== ==================================================

Near misses (unlabelled, counted as normal) test the precision side: a real trip
(1,000-3,000 km, 8-14 h later, home days later), a payment declined twice then approved
within minutes, and two contacts three days apart, the first 2-3 h after a failed
checkout.

Each label is (customer, rule, injected event ids). An alert matches a label when the
rules are equal and the alert's ``event_ids`` share an id with the label; matching on
event ids (not customer ids) lets the same labels score the real pipeline, whose
customer ids come from identity resolution.

Normal traffic
--------------
The generator was built for short windows (two hours by default). Stretched over
weeks, three of its habits would read as anomalies, so the background is post-processed
here (``generator.py`` is left alone; each fix is counted in ``LabelledStream.notes``):

* sessions are placed uniformly over the 24 h of the day, so every customer is active at
  every hour: sessions are moved to the same day within the person's waking window
  (07-10h to 22-24h local, in the person's own time zone);
* the channel mix (12 % contact centre) means ~3 contacts per customer per month, and
  friction journeys (failed checkout -> call within the hour; complaints that nobody
  resolves) are built in: in the background, a failed web/app step that is followed by
  a contact within the hour is dropped (the contact stays), contact cases beyond two in
  any 7 days are dropped, and complaints get the resolving call-back that a real contact
  centre would make (2-30 h later, same case id). Friction then only occurs where it is
  injected and labelled;
* customers whose injected payments make them high-value lose the background's low
  CSAT/NPS answers and negative posts (else ``unhappy_valuable`` would rightly fire on
  them, unlabelled).

``raw_generator_alerts`` measures what the detectors say about the generator's output
untouched, for the record.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from streams.customers.detect import (
    RULE_NAMES,
    Alert,
    Detector,
    Profile,
    Rules,
    haversine_km,
    is_unhappy,
    local_hour,
    to_eur,
)
from streams.identity.graph import event_identifiers, offline_components
from streams.ingest.stage import Accepted, IngestPolicy, ingest_message
from streams.sim.generator import _COUNTRIES, GeneratedEvent, Traps, generate
from streams.wire.codec import AvroCodec
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    WEB,
    CommerceRecord,
    ContactCentreRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    Payload,
    SocialRecord,
    TouchpointRecord,
    WebRecord,
)

__all__ = [
    "DetectorMetrics",
    "EvalReport",
    "Label",
    "LabelledStream",
    "StreamEvent",
    "encode_stream",
    "evaluate",
    "format_report",
    "labelled_stream",
    "normal_stream",
    "raw_generator_alerts",
    "run_detector",
    "run_offline_eval",
]

_MINUTE: Final = 60_000
_HOUR: Final = 3_600_000
_DAY: Final = 86_400_000
DEFAULT_NOW_MS: Final = 1_760_000_000_000
DEFAULT_TRAPS: Final = Traps()
_CONTACTS: Final = frozenset({"call", "chat", "email", "complaint"})
_COUNTRY: Final = {c.code: c for c in _COUNTRIES}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One touchpoint of the evaluation stream, with its ground-truth customer."""

    record: TouchpointRecord
    customer_id: str  # the person's CRM id (ground truth, what resolution should find)
    person: int
    key: bytes  # Kafka key its producing system would use
    anomalous: bool = False  # one of the events a label points at
    trap: str = ""  # the identity trap it carries (``streams.sim.generator.Traps``), if any


@dataclass(frozen=True, slots=True)
class Label:
    customer_id: str
    rule: str
    event_ids: tuple[str, ...]


@dataclass(slots=True)
class LabelledStream:
    events: list[StreamEvent]  # sorted by occurred_at
    labels: list[Label]
    now_ms: int
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def normal_event_count(self) -> int:
        return sum(1 for e in self.events if not e.anomalous)


# --------------------------------------------------------------------------- records


def _ids(**values: str | None) -> IdentifiersRecord:
    ids: IdentifiersRecord = {
        "anonymous_id": None,
        "device_id": None,
        "customer_id": None,
        "login_id": None,
        "email": None,
        "phone": None,
        "social_handle": None,
        "loyalty_id": None,
    }
    ids.update(values)  # type: ignore[typeddict-item]
    return ids


def _context(
    country: str | None,
    geo: GeoRecord | None = None,
    timezone: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    locale: str | None = None,
) -> ContextRecord:
    return {
        "country": country,
        "geo": None if geo is None else {**geo},
        "ip": ip,
        "user_agent": user_agent,
        "locale": locale,
        "timezone": timezone,
    }


def _web(
    page_type: str,
    *,
    success: bool | None = None,
    error: str | None = None,
    step: str | None = None,
) -> WebRecord:
    return {
        "session_id": None,
        "url": f"https://shop.example.com/{page_type}",
        "referrer": None,
        "page_type": page_type,
        "search_query": None,
        "product_id": None,
        "checkout_step": step,
        "success": success,
        "error_code": error,
    }


def _contact(
    contact_id: str,
    medium: str,
    *,
    resolved: bool,
    complaint: bool = False,
    reason: str = "order_status",
    csat: int | None = None,
    nps: int | None = None,
) -> ContactCentreRecord:
    return {
        "contact_id": contact_id,
        "medium": medium,
        "queue": "general",
        "agent_id": "AG-1000",
        "reason": reason,
        "wait_seconds": 60.0,
        "handle_seconds": 300.0,
        "resolved": resolved,
        "transferred": False,
        "is_complaint": complaint,
        "csat": csat,
        "nps": nps,
    }


def _payment(amount: float, currency: str, country: str, status: str, tx: str) -> CommerceRecord:
    return {
        "order_id": f"ORD-{tx[:12].upper()}",
        "transaction_id": f"TX-{tx}",
        "amount": amount,
        "currency": currency,
        "merchant": f"Northwind {country}",
        "merchant_category": "5651",
        "payment_method": "card_visa",
        "status": status,
        "items": 1,
    }


# --------------------------------------------------------------------------- people


@dataclass(slots=True)
class _Person:
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
        return _COUNTRY[self.country].currency if self.country in _COUNTRY else "EUR"


def _people(events: Sequence[GeneratedEvent], rng: random.Random) -> dict[int, _Person]:
    by_person: dict[int, list[TouchpointRecord]] = defaultdict(list)
    for e in events:
        by_person[e.person].append(e.record)
    people: dict[int, _Person] = {}
    for index in sorted(by_person):
        records = by_person[index]
        crms = Counter(r["identifiers"]["customer_id"] for r in records)
        crms.pop(None, None)
        crm = crms.most_common(1)[0][0] if crms else None
        countries = Counter(r["context"]["country"] for r in records if r["context"]["country"])
        zones = Counter(r["context"]["timezone"] for r in records if r["context"]["timezone"])
        person = _Person(
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


def _local_day_start(ts_ms: int, zone: ZoneInfo) -> datetime:
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _at_local(day: datetime, hour: float) -> int:
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


def _retime(person: _Person, rng: random.Random, now_ms: int, notes: Counter[str]) -> None:
    """Move each session to a time inside the person's waking window, same local day."""
    zone = ZoneInfo(person.timezone)
    out: list[TouchpointRecord] = []
    not_before = 0
    for block in _sessions(person.events, 3 * _HOUR):
        start = block[0]["occurred_at"]
        end = max(r["occurred_at"] for r in block)
        day = _local_day_start(start, zone)
        new_start = _at_local(day, rng.uniform(person.wake, person.sleep - 0.25))
        while new_start < not_before:
            day = day + timedelta(days=1)
            new_start = _at_local(day, rng.uniform(person.wake, person.sleep - 0.25))
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
        not_before = end + delta + 30 * _MINUTE
    person.events = out


def _case(record: TouchpointRecord) -> str | None:
    payload = record["payload"]
    if payload is None or payload[0] != CONTACT:
        return None
    body: dict[str, Any] = payload[1]  # type: ignore[assignment]
    contact_id = body.get("contact_id")
    return str(contact_id) if contact_id else record["event_id"]


def _is_contact(record: TouchpointRecord) -> bool:
    return record["channel"] == "contact_centre" and record["event_type"] in _CONTACTS


def _resolve_complaints(
    person: _Person, rng: random.Random, now_ms: int, notes: Counter[str]
) -> None:
    """Give each complaint a resolving call-back (same case) 2-30 h later."""
    added: list[TouchpointRecord] = []
    done: set[str] = set()
    for r in person.events:
        body = _body(r, CONTACT)
        if body is None:
            continue
        if not (r["event_type"] == "complaint" or body.get("is_complaint")):
            continue
        case = _case(r)
        if case is None or case in done:
            continue
        done.add(case)
        ts = r["occurred_at"] + int(rng.uniform(2, 30) * _HOUR)
        if ts > now_ms:
            continue
        follow = _contact(case, "call", resolved=True, reason="complaint_follow_up")
        record = _record(
            _uuid(rng),
            "contact_centre",
            "call",
            ts,
            "genesys",
            {**r["identifiers"]},
            _context(person.country, timezone=person.timezone),
            (CONTACT, follow),
        )
        added.append(record)
        notes["complaint call-backs added"] += 1
    if added:
        person.events = sorted([*person.events, *added], key=lambda r: r["occurred_at"])


def _drop_friction(person: _Person, notes: Counter[str]) -> None:
    """No failure->contact within the hour; at most two contact cases in any 7 days."""
    events = person.events
    contact_times = [r["occurred_at"] for r in events if _is_contact(r)]
    keep: list[TouchpointRecord] = []
    for r in events:
        if r["event_type"] in ("checkout_failed", "login_failed") and r["channel"] in (
            "web",
            "mobile",
        ):
            t = r["occurred_at"]
            if any(t <= c <= t + _HOUR + _MINUTE for c in contact_times):
                notes["failures dropped (contact within the hour)"] += 1
                continue
        keep.append(r)
    # Contact cases: keep a case only if fewer than two kept cases started in 7 days.
    case_start: dict[str, int] = {}
    for r in keep:
        case = _case(r)
        if case is not None and _is_contact(r):
            case_start.setdefault(case, r["occurred_at"])
    kept_starts: list[int] = []
    dropped: set[str] = set()
    for case, start in sorted(case_start.items(), key=lambda kv: kv[1]):
        if sum(1 for s in kept_starts if start - s < 7 * _DAY + _HOUR) >= 2:
            dropped.add(case)
        else:
            kept_starts.append(start)
    if dropped:
        notes["contact cases dropped (over 2 in 7 days)"] += len(dropped)
        keep = [r for r in keep if _case(r) not in dropped]
    person.events = keep


def _body(record: TouchpointRecord, kind: str) -> dict[str, Any] | None:
    payload = record["payload"]
    if payload is None or payload[0] != kind:
        return None
    body: dict[str, Any] = payload[1]  # type: ignore[assignment]
    return body


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
    _, events, notes = _background(
        customers, seed, now_ms, span_days, events_per_customer, traps or Traps.none()
    )
    return events, dict(notes)


def _background(
    customers: int,
    seed: int,
    now_ms: int,
    span_days: float,
    events_per_customer: float,
    traps: Traps,
) -> tuple[dict[int, _Person], list[GeneratedEvent], Counter[str]]:
    raw = generate(
        customers,
        seed=seed,
        now_ms=now_ms - 6 * _HOUR,
        span_ms=int(span_days * _DAY),
        events_per_customer=events_per_customer,
        traps=traps,
    )
    keys = {e.record["event_id"]: e.key for e in raw}
    trap_of = {e.record["event_id"]: e.trap for e in raw if e.trap}
    rng = random.Random(seed * 7919 + 17)
    people = _people(raw, rng)
    notes: Counter[str] = Counter()
    for person in people.values():
        _retime(person, rng, now_ms, notes)
        _resolve_complaints(person, rng, now_ms, notes)
        _drop_friction(person, notes)
    kept = {r["event_id"] for p in people.values() for r in p.events}
    dropped = [e for e in raw if e.record["event_id"] not in kept]
    notes["events dropped in total"] = len(dropped)
    events = [
        GeneratedEvent(r, p.index, keys.get(r["event_id"], _key(p)), trap_of.get(r["event_id"], ""))
        for p in people.values()
        for r in p.events
    ]
    events.sort(key=lambda e: e.record["occurred_at"])
    return people, events, notes


def _key(person: _Person) -> bytes:
    if person.crm:
        return f"customer_id:{person.crm}".encode()
    return f"person:{person.index}".encode()


# --------------------------------------------------------------------------- injection


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _record(
    event_id: str,
    channel: str,
    event_type: str,
    ts: int,
    source: str,
    ids: IdentifiersRecord,
    context: ContextRecord,
    payload: tuple[str, Payload] | None,
) -> TouchpointRecord:
    return {
        "event_id": event_id,
        "channel": channel,
        "event_type": event_type,
        "occurred_at": ts,
        "received_at": ts + 1500,
        "source": source,
        "identifiers": ids,
        "context": context,
        "payload": payload,
        "properties": {"eval": "injected"},
        "consent": "granted",
    }


class _Injector:
    """Builds one scenario for one person; returns its events and label (or None)."""

    def __init__(self, rng: random.Random, now_ms: int, rules: Rules) -> None:
        self.rng = rng
        self.now_ms = now_ms
        self.rules = rules

    # ---------------------------------------------------------------- helpers

    def uuid(self) -> str:
        return _uuid(self.rng)

    def attributable(self, p: _Person) -> list[TouchpointRecord]:
        """The person's events that their CRM id reaches through their own identifiers.

        A history the person built on identifiers never seen with their CRM id (a cookie
        that never logs in, a phone never given) belongs to them only in the generator's
        ground truth: no identity resolution can attribute it. Scenarios whose label needs
        that history (unusual hour, unhappy valuable via a social handle) draw on this.
        """
        if p.crm is None:
            return []
        component = next(
            (c for c in offline_components(p.events) if f"customer_id:{p.crm}" in c),
            frozenset(),
        )
        return [r for r in p.events if component.intersection(event_identifiers(r))]

    def quiet_time(
        self,
        person: _Person,
        lo_days: float,
        hi_days: float,
        *,
        need_quiet_ms: int = 2 * _HOUR,
        contacts_free_days: float = 7.0,
        hour: float | None = None,
    ) -> int | None:
        """A time in the waking window ``lo..hi`` days ago with no nearby activity."""
        zone = ZoneInfo(person.timezone)
        times = [r["occurred_at"] for r in person.events]
        contacts = [r["occurred_at"] for r in person.events if _is_contact(r)]
        for _ in range(40):
            ago = self.rng.uniform(lo_days, hi_days) * _DAY
            day = _local_day_start(self.now_ms - int(ago), zone)
            at = hour if hour is not None else self.rng.uniform(person.wake + 0.5, person.sleep - 2)
            ts = _at_local(day, at)
            if ts > self.now_ms - 2 * _HOUR:
                continue
            if any(abs(t - ts) < need_quiet_ms for t in times):
                continue
            if any(abs(c - ts) < contacts_free_days * _DAY for c in contacts):
                continue
            return ts
        return None

    def web_ids(self, person: _Person) -> IdentifiersRecord:
        return _ids(anonymous_id=person.anonymous_id, customer_id=person.crm)

    def home_context(self, person: _Person) -> ContextRecord:
        return _context(
            person.country, person.geo, person.timezone, "81.2.69.160", person.user_agent
        )

    def amount(self, person: _Person, lo_frac: float = 0.0, hi_frac: float = 1.0) -> float:
        lo, hi = _COUNTRY[person.country].amount_range
        r = self.rng.uniform(lo_frac, hi_frac)
        return round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * r), 2)

    def payment(
        self,
        person: _Person,
        ts: int,
        amount: float,
        status: str = "approved",
        *,
        channel: str = "web",
        context: ContextRecord | None = None,
        ids: IdentifiersRecord | None = None,
    ) -> TouchpointRecord:
        body = _payment(amount, person.currency, person.country, status, f"{self.uuid()[:20]}")
        return _record(
            self.uuid(),
            channel,
            "payment",
            ts,
            "payments",
            ids or _ids(customer_id=person.crm),
            context or _context(person.country, timezone=person.timezone),
            (COMMERCE, body),
        )

    def contact(
        self,
        person: _Person,
        ts: int,
        medium: str,
        body: ContactCentreRecord,
        event_type: str | None = None,
    ) -> TouchpointRecord:
        return _record(
            self.uuid(),
            "contact_centre",
            event_type or medium,
            ts,
            "zendesk" if medium == "email" else "genesys",
            _ids(customer_id=person.crm, phone=person.phone),
            _context(person.country, timezone=person.timezone),
            (CONTACT, body),
        )

    def routine_times(
        self, person: _Person, n: int, lo_days: float, hi_days: float, before: int
    ) -> list[int]:
        zone = ZoneInfo(person.timezone)
        out: list[int] = []
        for _ in range(n):
            day = _local_day_start(before - int(self.rng.uniform(lo_days, hi_days) * _DAY), zone)
            out.append(_at_local(day, self.rng.uniform(person.wake + 0.5, person.sleep - 1)))
        return sorted(out)

    # ---------------------------------------------------------------- scenarios

    def impossible_travel(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        if p.geo is None or p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, 3, 20, need_quiet_ms=14 * _HOUR)
        if ts is None:
            return None
        far = [
            (c, city)
            for c in _COUNTRIES
            for city in c.cities
            if haversine_km(p.geo["lat"], p.geo["lon"], city.lat, city.lon) > 3000
        ]
        if not far:
            return None
        country, city = self.rng.choice(far)
        login = _record(
            self.uuid(),
            "web",
            "login",
            ts,
            "web-sdk",
            self.web_ids(p),
            self.home_context(p),
            (WEB, _web("login", success=True)),
        )
        later = ts + int(self.rng.uniform(20, 90) * _MINUTE)
        geo: GeoRecord = {"lat": city.lat, "lon": city.lon, "city": city.name}
        context = _context(country.code, geo, p.timezone, "177.30.1.2", p.user_agent)
        pay = self.payment(p, later, self.amount(p, 0.3, 0.7), context=context, ids=self.web_ids(p))
        return [login, pay], [pay["event_id"]]

    def new_device_new_country(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        rule = self.rules.new_device_new_country_high_value
        payments = sum(1 for r in p.events if r["event_type"] == "payment")
        if p.crm is None or payments >= self.rules.amount_outlier.min_history - 1:
            return None
        ts = self.quiet_time(p, 2, 20)
        if ts is None or sum(1 for r in p.events if r["occurred_at"] < ts) < rule.min_history:
            return None
        others = [c for c in _COUNTRIES if c.code != p.country]
        country = self.rng.choice(others)
        eur = to_eur(1.0, p.currency) or 1.0
        amount = round(rule.min_amount_eur * self.rng.uniform(1.5, 5.0) / eur, 2)
        device = self.uuid()
        context = _context(country.code, None, None, "201.20.3.4", None)
        pay = self.payment(
            p, ts, amount, context=context, ids=_ids(customer_id=p.crm, device_id=device)
        )
        return [pay], [pay["event_id"]]

    def amount_outlier(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 2, 8)
        if ts is None:
            return None
        n = self.rng.randint(8, 14)
        history = [self.payment(p, t, self.amount(p)) for t in self.routine_times(p, n, 1, 35, ts)]
        largest = max(
            [
                *(_body(r, COMMERCE) or {"amount": 0.0} for r in history),
                *(b for r in p.events if (b := _body(r, COMMERCE)) is not None),
            ],
            key=lambda b: float(b["amount"]),
        )["amount"]
        outlier = self.payment(p, ts, round(float(largest) * self.rng.uniform(10, 40), 2))
        return [*history, outlier], [outlier["event_id"]]

    def velocity_burst(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 2, 20)
        if ts is None:
            return None
        n = self.rng.randint(5, 7)
        span = self.rng.uniform(3, 8) * _MINUTE
        times = sorted(ts + int(self.rng.random() * span) for _ in range(n))
        if self.rng.random() < 0.5:
            lo, _ = _COUNTRY[p.country].amount_range
            events = [
                self.payment(
                    p,
                    t,
                    round(lo * self.rng.uniform(0.05, 0.3), 2),
                    "declined" if self.rng.random() < 0.7 else "approved",
                )
                for t in times
            ]
        else:
            events = [
                _record(
                    self.uuid(),
                    "web",
                    "password_reset",
                    t,
                    "web-sdk",
                    _ids(anonymous_id=p.anonymous_id, email=p.email, customer_id=p.crm),
                    self.home_context(p),
                    (WEB, _web("account", success=True)),
                )
                for t in times
            ]
        return events, [r["event_id"] for r in events]

    def unusual_hour(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        rule = self.rules.unusual_hour
        if p.crm is None or p.user_agent is None:
            return None
        digital = [r for r in self.attributable(p) if r["channel"] in ("web", "mobile")]
        if len(digital) < rule.min_history + 10:
            return None
        cutoff = digital[rule.min_history + 5]["occurred_at"]
        if cutoff > self.now_ms - 3 * _DAY:
            return None
        hours = [0] * 24
        for r in digital:
            hours[local_hour(r["occurred_at"], r["context"]["timezone"] or p.timezone)] += 1
        gaps = []
        for h in range(24):
            gap = min(min(abs(h - u), 24 - abs(h - u)) for u in range(24) if hours[u])
            gaps.append((gap, h))
        gap, hour = max(gaps)
        if gap < rule.min_gap_hours:
            return None
        zone = ZoneInfo(p.timezone)
        for _ in range(20):
            day = _local_day_start(self.rng.randint(cutoff, self.now_ms - 2 * _DAY), zone)
            ts = _at_local(day, hour + self.rng.uniform(0.1, 0.6))
            if cutoff < ts < self.now_ms - _DAY:
                break
        else:
            return None
        ctx = self.home_context(p)
        events = [
            _record(
                self.uuid(),
                "web",
                "login",
                ts,
                "web-sdk",
                self.web_ids(p),
                ctx,
                (WEB, _web("login", success=True)),
            ),
            _record(
                self.uuid(),
                "web",
                "page_view",
                ts + 40_000,
                "web-sdk",
                self.web_ids(p),
                ctx,
                (WEB, _web("account")),
            ),
        ]
        return events, [r["event_id"] for r in events]

    def self_service_failed(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        if p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, 2, 20)
        if ts is None:
            return None
        fail = _record(
            self.uuid(),
            "web",
            "checkout_failed",
            ts,
            "web-sdk",
            self.web_ids(p),
            self.home_context(p),
            (WEB, _web("checkout", success=False, error="PSP_TIMEOUT", step="payment")),
        )
        later = ts + int(self.rng.uniform(3, 55) * _MINUTE)
        body = _contact(f"CC-{self.uuid()[:14]}", "call", resolved=True, reason="checkout_failure")
        call = self.contact(p, later, "call", body)
        return [fail, call], [fail["event_id"], call["event_id"]]

    def high_effort(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 9, 25, contacts_free_days=14)
        if ts is None:
            return None
        offsets = sorted([0.0, self.rng.uniform(0.5, 3), self.rng.uniform(3.1, 6)])
        events = []
        for i, off in enumerate(offsets):
            medium = ("call", "chat", "call")[i]
            body = _contact(
                f"CC-{self.uuid()[:14]}", medium, resolved=i == 2, reason="delivery_delay"
            )
            events.append(self.contact(p, ts + int(off * _DAY), medium, body))
        if events[-1]["occurred_at"] > self.now_ms - _HOUR:
            return None
        return events, [r["event_id"] for r in events]

    def unhappy_valuable(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        rule = self.rules.unhappy_valuable
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 2, 10)
        if ts is None:
            return None
        eur = to_eur(1.0, p.currency) or 1.0
        lo, hi = _COUNTRY[p.country].amount_range
        target = rule.min_value_eur * self.rng.uniform(1.3, 2.0) / eur
        n = max(4, math.ceil(target / (hi * 0.8)))
        history = [
            self.payment(p, t, round(target / n, 2)) for t in self.routine_times(p, n, 1, 40, ts)
        ]
        linked_handle = p.handle is not None and any(
            r["identifiers"]["social_handle"] == p.handle for r in self.attributable(p)
        )
        if linked_handle and self.rng.random() < 0.5:
            body: SocialRecord = {
                "platform": "x",
                "message_id": f"x-{self.rng.getrandbits(60)}",
                "in_reply_to": None,
                "text": "@northwind worst service ever, never again",
                "sentiment": round(self.rng.uniform(-0.95, -0.65), 3),
                "is_public": True,
            }
            trigger = _record(
                self.uuid(),
                "social",
                "mention",
                ts,
                "sprinklr",
                _ids(social_handle=p.handle),
                _context(None),
                (SOCIAL, body),
            )
            return [*history, trigger], [trigger["event_id"]]
        case = f"CC-{self.uuid()[:14]}"
        call = self.contact(p, ts, "call", _contact(case, "call", resolved=False))
        survey_body = _contact(
            case,
            "call",
            resolved=False,
            csat=self.rng.randint(1, rule.max_csat),
            nps=self.rng.randint(0, rule.max_nps),
        )
        survey_at = ts + int(self.rng.uniform(10, 25) * _MINUTE)
        survey = self.contact(p, survey_at, "call", survey_body, "survey_response")
        return [*history, call, survey], [survey["event_id"]]

    def complaint_unresolved(self, p: _Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        target = int(self.rules.complaint_unresolved.target_hours * _HOUR)
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 4, 20)
        if ts is None or ts + target > self.now_ms - 6 * _HOUR:
            return None
        later = [r for r in p.events if ts < r["occurred_at"] <= ts + target + _HOUR]
        if any(r["channel"] == "contact_centre" for r in later):
            return None
        case = f"CC-{self.uuid()[:14]}"
        call = self.contact(p, ts, "call", _contact(case, "call", resolved=False, complaint=True))
        body = _contact(case, "call", resolved=False, complaint=True)
        complaint = self.contact(p, ts + 5 * _MINUTE, "call", body, "complaint")
        return [call, complaint], [call["event_id"], complaint["event_id"]]

    # ---------------------------------------------------------------- near misses

    def trip(self, p: _Person) -> list[TouchpointRecord] | None:
        """A real journey: home, then 1,000-3,000 km away 8-14 h later, home days later."""
        if p.geo is None or p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, 6, 25, need_quiet_ms=4 * _DAY, contacts_free_days=0)
        if ts is None:
            return None
        near = [
            (c, city)
            for c in _COUNTRIES
            for city in c.cities
            if 1000 < haversine_km(p.geo["lat"], p.geo["lon"], city.lat, city.lon) < 3000
        ]
        if not near:
            return None
        country, city = self.rng.choice(near)
        geo: GeoRecord = {"lat": city.lat, "lon": city.lon, "city": city.name}
        away = _context(country.code, geo, p.timezone, "88.12.1.2", p.user_agent)
        there = ts + int(self.rng.uniform(8, 14) * _HOUR)
        back = there + int(self.rng.uniform(1, 3) * _DAY)
        return [
            _record(
                self.uuid(),
                "web",
                "login",
                t,
                "web-sdk",
                self.web_ids(p),
                ctx,
                (WEB, _web("login", success=True)),
            )
            for t, ctx in (
                (ts, self.home_context(p)),
                (there, away),
                (back, self.home_context(p)),
            )
        ]

    def payment_retry(self, p: _Person) -> list[TouchpointRecord] | None:
        """Declined twice, approved on the third try, within minutes."""
        if p.crm is None:
            return None
        ts = self.quiet_time(p, 2, 30, contacts_free_days=0)
        if ts is None:
            return None
        amount = self.amount(p)
        return [
            self.payment(p, ts + i * int(self.rng.uniform(1, 3) * _MINUTE), amount, status)
            for i, status in enumerate(("declined", "declined", "approved"))
        ]

    def two_contacts(self, p: _Person) -> list[TouchpointRecord] | None:
        """Two contacts three days apart, the first a failed checkout 2-3 h earlier."""
        if p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, 5, 30, contacts_free_days=10)
        if ts is None:
            return None
        fail = _record(
            self.uuid(),
            "web",
            "checkout_failed",
            ts,
            "web-sdk",
            self.web_ids(p),
            self.home_context(p),
            (WEB, _web("checkout", success=False, error="HTTP_502", step="payment")),
        )
        first = ts + int(self.rng.uniform(2, 3) * _HOUR)
        second = first + int(self.rng.uniform(2.5, 3.5) * _DAY)
        return [
            fail,
            self.contact(
                p, first, "call", _contact(f"CC-{self.uuid()[:14]}", "call", resolved=False)
            ),
            self.contact(
                p, second, "chat", _contact(f"CC-{self.uuid()[:14]}", "chat", resolved=True)
            ),
        ]


def labelled_stream(
    customers: int = 2000,
    *,
    seed: int = 7,
    now_ms: int = DEFAULT_NOW_MS,
    span_days: float = 45.0,
    events_per_customer: float = 45.0,
    per_rule: int | None = None,
    rules: Rules | None = None,
    traps: Traps | None = DEFAULT_TRAPS,
) -> LabelledStream:
    """Normal background plus ``per_rule`` labelled scenarios per rule (default 2 %).

    The background carries the generator's identity ``traps`` (family tablets, shared
    emails, the contact centre's number, junk values; ``None``: none), each event
    tagged with its trap (``StreamEvent.trap``) for the pairwise identity score
    (:mod:`streams.sim.eval_identity`).
    """
    rules = rules or Rules.default()
    people, background, notes = _background(
        customers, seed, now_ms, span_days, events_per_customer, traps or Traps.none()
    )
    per_rule = per_rule if per_rule is not None else max(3, customers // 50)
    rng = random.Random(seed * 104729 + 3)
    injector = _Injector(rng, now_ms, rules)
    scenarios = {
        "impossible_travel": injector.impossible_travel,
        "new_device_new_country_high_value": injector.new_device_new_country,
        "amount_outlier": injector.amount_outlier,
        "velocity_burst": injector.velocity_burst,
        "unusual_hour": injector.unusual_hour,
        "self_service_failed": injector.self_service_failed,
        "high_effort": injector.high_effort,
        "unhappy_valuable": injector.unhappy_valuable,
        "complaint_unresolved": injector.complaint_unresolved,
    }
    assert tuple(scenarios) == RULE_NAMES
    candidates = list(people.values())
    rng.shuffle(candidates)
    used: set[int] = set()
    labels: list[Label] = []
    injected: list[StreamEvent] = []
    keys = {e.record["event_id"]: e.key for e in background}
    for rule in RULE_NAMES:
        made = 0
        for person in candidates:
            if made >= per_rule:
                break
            if person.index in used:
                continue
            built = scenarios[rule](person)
            if built is None:
                continue
            records, anomalous = built
            if any(_body(r, COMMERCE) for r in records):
                # Injected payments can make the customer high-value: keep their
                # background free of the unhappy signals that rule looks for.
                before = len(person.events)
                person.events = [
                    r for r in person.events if not is_unhappy(r, rules.unhappy_valuable)
                ]
                notes["unhappy signals dropped (customers made high-value)"] += before - len(
                    person.events
                )
            used.add(person.index)
            made += 1
            labels.append(Label(person.customer_id, rule, tuple(anomalous)))
            marked = set(anomalous)
            for r in records:
                event = StreamEvent(
                    r, person.customer_id, person.index, _key(person), r["event_id"] in marked
                )
                injected.append(event)
        notes[f"scenarios injected: {rule}"] = made
    # Near misses for the precision side: normal behaviour close to a rule's threshold.
    decoys = {
        "trip": injector.trip,
        "payment_retry": injector.payment_retry,
        "two_contacts": injector.two_contacts,
    }
    for name, build in decoys.items():
        made = 0
        for person in candidates:
            if made >= per_rule:
                break
            if person.index in used:
                continue
            decoy = build(person)
            if decoy is None:
                continue
            used.add(person.index)
            made += 1
            injected.extend(
                StreamEvent(r, person.customer_id, person.index, _key(person)) for r in decoy
            )
        notes[f"near misses injected: {name}"] = made
    kept = {r["event_id"] for p in people.values() for r in p.events}
    events = [
        StreamEvent(
            e.record,
            people[e.person].customer_id,
            e.person,
            keys[e.record["event_id"]],
            trap=e.trap,
        )
        for e in background
        if e.record["event_id"] in kept
    ]
    events.extend(injected)
    events.sort(key=lambda e: e.record["occurred_at"])
    return LabelledStream(events, labels, now_ms, dict(notes))


def encode_stream(stream: LabelledStream, codec: AvroCodec) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs in the Confluent wire format, in event-time order."""
    return [(e.key, codec.encode(e.record)) for e in stream.events]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class DetectorMetrics:
    rule: str
    alerts: int
    labels: int
    true_alerts: int  # alerts that match a label
    detected: int  # labels matched by at least one alert
    false_alerts: int
    precision: float
    recall: float
    false_per_10k: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    detectors: dict[str, DetectorMetrics]
    overall: DetectorMetrics
    normal_event_count: int


def _metrics(
    rule: str, alerts: int, labels: int, true_alerts: int, detected: int, normal: int
) -> DetectorMetrics:
    false = alerts - true_alerts
    precision = true_alerts / alerts if alerts else (1.0 if labels == 0 else 0.0)
    recall = detected / labels if labels else 1.0
    return DetectorMetrics(
        rule,
        alerts,
        labels,
        true_alerts,
        detected,
        false,
        precision,
        recall,
        false / normal * 10_000 if normal else 0.0,
    )


def evaluate(
    alerts: Iterable[Alert], labels: Sequence[Label], normal_event_count: int
) -> EvalReport:
    """Per-detector precision, recall and false alerts per 10,000 normal events.

    An alert is true when a label of the same rule shares one of its event ids; a label
    is detected when at least one alert is true for it.
    """
    by_event: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        for event_id in label.event_ids:
            by_event[(label.rule, event_id)].append(i)
    counts: dict[str, list[int]] = {rule: [0, 0, 0] for rule in RULE_NAMES}  # alerts, true
    detected: set[int] = set()
    for alert in alerts:
        c = counts.setdefault(alert["rule"], [0, 0, 0])
        c[0] += 1
        matched = {i for e in alert["event_ids"] for i in by_event.get((alert["rule"], e), ())}
        if matched:
            c[1] += 1
            detected |= matched
    label_counts = Counter(label.rule for label in labels)
    detected_counts = Counter(labels[i].rule for i in detected)
    detectors = {
        rule: _metrics(
            rule, c[0], label_counts[rule], c[1], detected_counts[rule], normal_event_count
        )
        for rule, c in counts.items()
    }
    overall = _metrics(
        "overall",
        sum(m.alerts for m in detectors.values()),
        len(labels),
        sum(m.true_alerts for m in detectors.values()),
        len(detected),
        normal_event_count,
    )
    return EvalReport(detectors, overall, normal_event_count)


def format_report(report: EvalReport) -> list[str]:
    """``EVAL <detector> precision=<p> recall=<r> false_per_10k=<f>`` lines, then overall."""
    lines = []
    for m in [*report.detectors.values(), report.overall]:
        lines.append(
            f"EVAL {m.rule} precision={m.precision:.3f} recall={m.recall:.3f} "
            f"false_per_10k={m.false_per_10k:.2f}"
        )
    return lines


def run_detector(
    events: Iterable[tuple[str, TouchpointRecord]],
    detector: Detector,
    end_ms: int,
    tick_every_ms: int = _HOUR,
) -> list[Alert]:
    """Run ``detector`` over ``(customer_id, record)`` in event-time order, as the agent.

    Processing time is simulated as the event time; every ``tick_every_ms`` of it, and
    once at ``end_ms``, customers with open complaints get a ``tick``.
    """
    profiles: dict[str, Profile] = {}
    alerts: list[Alert] = []
    next_tick = -1
    for customer_id, record in events:
        ts = record["occurred_at"]
        if next_tick < 0:
            next_tick = ts - ts % tick_every_ms + tick_every_ms
        while ts >= next_tick:
            for profile in profiles.values():
                if profile.complaints:
                    alerts.extend(detector.tick(profile, next_tick)[1])
            next_tick += tick_every_ms
        found = profiles.get(customer_id)
        if found is None:
            found = profiles[customer_id] = Profile(customer_id)
        alerts.extend(detector.process(found, record, ts)[1])
    for profile in profiles.values():
        alerts.extend(detector.tick(profile, end_ms)[1])
    return alerts


def raw_generator_alerts(
    customers: int,
    *,
    seed: int = 7,
    now_ms: int = DEFAULT_NOW_MS,
    span_days: float = 45.0,
    events_per_customer: float = 45.0,
    rules: Rules | None = None,
) -> tuple[int, Counter[str]]:
    """Alerts per rule on the generator's output as is (no post-processing, no injection)."""
    raw = generate(
        customers,
        seed=seed,
        now_ms=now_ms,
        span_ms=int(span_days * _DAY),
        events_per_customer=events_per_customer,
    )
    alerts = run_detector(((f"person-{e.person}", e.record) for e in raw), Detector(rules), now_ms)
    return len(raw), Counter(a["rule"] for a in alerts)


def _ingested(stream: LabelledStream, codec: AvroCodec) -> list[tuple[str, TouchpointRecord]]:
    """Every event through Avro and the ingest step, as the pipeline would see it."""
    policy = IngestPolicy()
    out: list[tuple[str, TouchpointRecord]] = []
    for e in stream.events:
        outcome = ingest_message(codec.encode(e.record), codec, policy, stream.now_ms)  # type: ignore[arg-type]
        if not isinstance(outcome, Accepted):
            raise ValueError(f"event {e.record['event_id']} fails ingest: {outcome}")
        out.append((e.customer_id, outcome.record))
    return out


def run_offline_eval(
    customers: int = 2000,
    seed: int = 7,
    *,
    rules: Rules | None = None,
    codec: AvroCodec | None = None,
    now_ms: int = DEFAULT_NOW_MS,
) -> EvalReport:
    """The pure detector over a labelled stream, per customer in event-time order.

    With a ``codec``, events go through Avro encoding and ``ingest_message`` first (and
    any that fail validation raise).
    """
    stream = labelled_stream(customers, seed=seed, now_ms=now_ms, rules=rules)
    if codec is not None:
        events = _ingested(stream, codec)
    else:
        events = [(e.customer_id, e.record) for e in stream.events]
    alerts = run_detector(events, Detector(rules), now_ms)
    return evaluate(alerts, stream.labels, stream.normal_event_count)
