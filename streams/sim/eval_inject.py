"""The labelled scenarios and near misses injected into the background, one per person."""

from __future__ import annotations

import math
import random
from typing import Any
from zoneinfo import ZoneInfo

from streams.customers.detect import (
    Rules,
    haversine_km,
    local_hour,
    to_eur,
)
from streams.identity.graph import event_identifiers, offline_components
from streams.sim import records
from streams.sim.eval_background import (
    COUNTRY_BY_CODE,
    DAY,
    HOUR,
    MINUTE,
    Person,
    at_local,
    contact_body,
    eval_uuid,
    injected_record,
    is_contact,
    local_day_start,
    payment_body,
    web_page,
)
from streams.sim.journeys.world import COUNTRIES as _COUNTRIES
from streams.sim.journeys.world import City, Country
from streams.wire.model import (
    COMMERCE,
    CONTACT,
    SOCIAL,
    WEB,
    ContactCentreRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    TouchpointRecord,
    WebRecord,
    payload_body,
)


class Injector:
    """Builds one scenario for one person; returns its events and label (or None)."""

    def __init__(self, rng: random.Random, now_ms: int, rules: Rules) -> None:
        self.rng = rng
        self.now_ms = now_ms
        self.rules = rules

    # ---------------------------------------------------------------- helpers

    def uuid(self) -> str:
        return eval_uuid(self.rng)

    def attributable(self, p: Person) -> list[TouchpointRecord]:
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
        person: Person,
        lo_days: float,
        hi_days: float,
        *,
        need_quiet_ms: int = 2 * HOUR,
        contacts_free_days: float = 7.0,
        hour: float | None = None,
    ) -> int | None:
        """A time in the waking window ``lo..hi`` days ago with no nearby activity (None: no
        such time, or the person has no CRM id: every scenario needs one)."""
        if person.crm is None:
            return None
        zone = ZoneInfo(person.timezone)
        times = [r["occurred_at"] for r in person.events]
        contacts = [r["occurred_at"] for r in person.events if is_contact(r)]
        for _ in range(40):
            ago = self.rng.uniform(lo_days, hi_days) * DAY
            day = local_day_start(self.now_ms - int(ago), zone)
            at = hour if hour is not None else self.rng.uniform(person.wake + 0.5, person.sleep - 2)
            ts = at_local(day, at)
            if ts > self.now_ms - 2 * HOUR:
                continue
            if any(abs(t - ts) < need_quiet_ms for t in times):
                continue
            if any(abs(c - ts) < contacts_free_days * DAY for c in contacts):
                continue
            return ts
        return None

    def away(
        self,
        p: Person,
        lo_km: float,
        hi_km: float,
        lo_days: float,
        hi_days: float,
        **quiet: Any,
    ) -> tuple[int, Country, City] | None:
        """A quiet time ``lo_days..hi_days`` ago and a city ``lo_km..hi_km`` (exclusive) from
        the person's home browser (None: no known browser, quiet time or such city)."""
        if p.geo is None or p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, lo_days, hi_days, **quiet)
        if ts is None:
            return None
        lat, lon = p.geo["lat"], p.geo["lon"]
        cities = [
            (c, city)
            for c in _COUNTRIES
            for city in c.cities
            if lo_km < haversine_km(lat, lon, city.lat, city.lon) < hi_km
        ]
        if not cities:
            return None
        country, city = self.rng.choice(cities)
        return ts, country, city

    def web_ids(self, person: Person) -> IdentifiersRecord:
        return records.identifiers(anonymous_id=person.anonymous_id, customer_id=person.crm)

    def web_event(
        self,
        p: Person,
        event_type: str,
        ts: int,
        page: WebRecord,
        *,
        ids: IdentifiersRecord | None = None,
        context: ContextRecord | None = None,
    ) -> TouchpointRecord:
        """A web-sdk event on the person's known browser (default: at home, cookie + CRM id)."""
        return injected_record(
            self.uuid(), "web", event_type, ts, "web-sdk", ids or self.web_ids(p),
            context or self.home_context(p), (WEB, page),
        )  # fmt: skip

    def failed_checkout(
        self, p: Person, lo_days: float, hi_days: float, error: str, **quiet: Any
    ) -> TouchpointRecord | None:
        """A web payment step failing with ``error`` at a quiet time ``lo..hi`` days ago, on
        the person's known browser (None: no CRM id, browser or quiet time)."""
        if p.crm is None or p.user_agent is None:
            return None
        ts = self.quiet_time(p, lo_days, hi_days, **quiet)
        if ts is None:
            return None
        page = web_page("checkout", success=False, error=error, step="payment")
        return self.web_event(p, "checkout_failed", ts, page)

    def home_context(self, person: Person) -> ContextRecord:
        return records.context(
            person.country, person.geo, person.timezone, "81.2.69.160", person.user_agent
        )

    def amount(self, person: Person, lo_frac: float = 0.0, hi_frac: float = 1.0) -> float:
        lo, hi = COUNTRY_BY_CODE[person.country].amount_range
        r = self.rng.uniform(lo_frac, hi_frac)
        return round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * r), 2)

    def payment(
        self,
        person: Person,
        ts: int,
        amount: float,
        status: str = "approved",
        *,
        channel: str = "web",
        context: ContextRecord | None = None,
        ids: IdentifiersRecord | None = None,
    ) -> TouchpointRecord:
        body = payment_body(amount, person.currency, person.country, status, f"{self.uuid()[:20]}")
        return injected_record(
            self.uuid(),
            channel,
            "payment",
            ts,
            "payments",
            ids or records.identifiers(customer_id=person.crm),
            context or records.context(person.country, timezone=person.timezone),
            (COMMERCE, body),
        )

    def contact(
        self,
        person: Person,
        ts: int,
        medium: str,
        body: ContactCentreRecord,
        event_type: str | None = None,
    ) -> TouchpointRecord:
        return injected_record(
            self.uuid(),
            "contact_centre",
            event_type or medium,
            ts,
            "zendesk" if medium == "email" else "genesys",
            records.identifiers(customer_id=person.crm, phone=person.phone),
            records.context(person.country, timezone=person.timezone),
            (CONTACT, body),
        )

    def routine_times(
        self, person: Person, n: int, lo_days: float, hi_days: float, before: int
    ) -> list[int]:
        zone = ZoneInfo(person.timezone)
        out: list[int] = []
        for _ in range(n):
            day = local_day_start(before - int(self.rng.uniform(lo_days, hi_days) * DAY), zone)
            out.append(at_local(day, self.rng.uniform(person.wake + 0.5, person.sleep - 1)))
        return sorted(out)

    # ---------------------------------------------------------------- scenarios

    def impossible_travel(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        trip = self.away(p, 3000, math.inf, 3, 20, need_quiet_ms=14 * HOUR)
        if trip is None:
            return None
        ts, country, city = trip
        login = self.web_event(p, "login", ts, web_page("login", success=True))
        later = ts + int(self.rng.uniform(20, 90) * MINUTE)
        geo: GeoRecord = {"lat": city.lat, "lon": city.lon, "city": city.name}
        context = records.context(country.code, geo, p.timezone, "177.30.1.2", p.user_agent)
        pay = self.payment(p, later, self.amount(p, 0.3, 0.7), context=context, ids=self.web_ids(p))
        return [login, pay], [pay["event_id"]]

    def new_device_new_country(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
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
        context = records.context(country.code, None, None, "201.20.3.4", None)
        pay = self.payment(
            p,
            ts,
            amount,
            context=context,
            ids=records.identifiers(customer_id=p.crm, device_id=device),
        )
        return [pay], [pay["event_id"]]

    def amount_outlier(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        ts = self.quiet_time(p, 2, 8)
        if ts is None:
            return None
        n = self.rng.randint(8, 14)
        history = [self.payment(p, t, self.amount(p)) for t in self.routine_times(p, n, 1, 35, ts)]
        largest = max(
            [
                *(payload_body(r, COMMERCE) or {"amount": 0.0} for r in history),
                *(b for r in p.events if (b := payload_body(r, COMMERCE)) is not None),
            ],
            key=lambda b: float(b["amount"]),
        )["amount"]
        outlier = self.payment(p, ts, round(float(largest) * self.rng.uniform(10, 40), 2))
        return [*history, outlier], [outlier["event_id"]]

    def velocity_burst(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        ts = self.quiet_time(p, 2, 20)
        if ts is None:
            return None
        n = self.rng.randint(5, 7)
        span = self.rng.uniform(3, 8) * MINUTE
        times = sorted(ts + int(self.rng.random() * span) for _ in range(n))
        if self.rng.random() < 0.5:
            lo, _ = COUNTRY_BY_CODE[p.country].amount_range
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
                self.web_event(
                    p,
                    "password_reset",
                    t,
                    web_page("account", success=True),
                    ids=records.identifiers(
                        anonymous_id=p.anonymous_id, email=p.email, customer_id=p.crm
                    ),
                )
                for t in times
            ]
        return events, [r["event_id"] for r in events]

    def unusual_hour(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        rule = self.rules.unusual_hour
        if p.crm is None or p.user_agent is None:
            return None
        digital = [r for r in self.attributable(p) if r["channel"] in ("web", "mobile")]
        if len(digital) < rule.min_history + 10:
            return None
        cutoff = digital[rule.min_history + 5]["occurred_at"]
        if cutoff > self.now_ms - 3 * DAY:
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
            day = local_day_start(self.rng.randint(cutoff, self.now_ms - 2 * DAY), zone)
            ts = at_local(day, hour + self.rng.uniform(0.1, 0.6))
            if cutoff < ts < self.now_ms - DAY:
                break
        else:
            return None
        ctx = self.home_context(p)
        events = [
            self.web_event(p, "login", ts, web_page("login", success=True), context=ctx),
            self.web_event(p, "page_view", ts + 40_000, web_page("account"), context=ctx),
        ]
        return events, [r["event_id"] for r in events]

    def self_service_failed(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        fail = self.failed_checkout(p, 2, 20, "PSP_TIMEOUT")
        if fail is None:
            return None
        later = fail["occurred_at"] + int(self.rng.uniform(3, 55) * MINUTE)
        body = contact_body(
            f"CC-{self.uuid()[:14]}", "call", resolved=True, reason="checkout_failure"
        )
        call = self.contact(p, later, "call", body)
        return [fail, call], [fail["event_id"], call["event_id"]]

    def high_effort(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        ts = self.quiet_time(p, 9, 25, contacts_free_days=14)
        if ts is None:
            return None
        offsets = sorted([0.0, self.rng.uniform(0.5, 3), self.rng.uniform(3.1, 6)])
        events = []
        for i, off in enumerate(offsets):
            medium = ("call", "chat", "call")[i]
            body = contact_body(
                f"CC-{self.uuid()[:14]}", medium, resolved=i == 2, reason="delivery_delay"
            )
            events.append(self.contact(p, ts + int(off * DAY), medium, body))
        if events[-1]["occurred_at"] > self.now_ms - HOUR:
            return None
        return events, [r["event_id"] for r in events]

    def unhappy_valuable(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        rule = self.rules.unhappy_valuable
        ts = self.quiet_time(p, 2, 10)
        if ts is None:
            return None
        eur = to_eur(1.0, p.currency) or 1.0
        lo, hi = COUNTRY_BY_CODE[p.country].amount_range
        target = rule.min_value_eur * self.rng.uniform(1.3, 2.0) / eur
        n = max(4, math.ceil(target / (hi * 0.8)))
        history = [
            self.payment(p, t, round(target / n, 2)) for t in self.routine_times(p, n, 1, 40, ts)
        ]
        linked_handle = p.handle is not None and any(
            r["identifiers"]["social_handle"] == p.handle for r in self.attributable(p)
        )
        if linked_handle and self.rng.random() < 0.5:
            body = records.social(
                "x",
                message_id=f"x-{self.rng.getrandbits(60)}",
                text="@northwind worst service ever, never again",
                sentiment=round(self.rng.uniform(-0.95, -0.65), 3),
                is_public=True,
            )
            trigger = injected_record(
                self.uuid(),
                "social",
                "mention",
                ts,
                "sprinklr",
                records.identifiers(social_handle=p.handle),
                records.context(None),
                (SOCIAL, body),
            )
            return [*history, trigger], [trigger["event_id"]]
        case = f"CC-{self.uuid()[:14]}"
        call = self.contact(p, ts, "call", contact_body(case, "call", resolved=False))
        survey_body = contact_body(
            case,
            "call",
            resolved=False,
            csat=self.rng.randint(1, rule.max_csat),
            nps=self.rng.randint(0, rule.max_nps),
        )
        survey_at = ts + int(self.rng.uniform(10, 25) * MINUTE)
        survey = self.contact(p, survey_at, "call", survey_body, "survey_response")
        return [*history, call, survey], [survey["event_id"]]

    def complaint_unresolved(self, p: Person) -> tuple[list[TouchpointRecord], list[str]] | None:
        target = int(self.rules.complaint_unresolved.target_hours * HOUR)
        ts = self.quiet_time(p, 4, 20)
        if ts is None or ts + target > self.now_ms - 6 * HOUR:
            return None
        later = [r for r in p.events if ts < r["occurred_at"] <= ts + target + HOUR]
        if any(r["channel"] == "contact_centre" for r in later):
            return None
        case = f"CC-{self.uuid()[:14]}"
        call = self.contact(
            p, ts, "call", contact_body(case, "call", resolved=False, complaint=True)
        )
        body = contact_body(case, "call", resolved=False, complaint=True)
        complaint = self.contact(p, ts + 5 * MINUTE, "call", body, "complaint")
        return [call, complaint], [call["event_id"], complaint["event_id"]]

    # ---------------------------------------------------------------- near misses

    def trip(self, p: Person) -> list[TouchpointRecord] | None:
        """A real journey: home, then 1,000-3,000 km away 8-14 h later, home days later."""
        trip = self.away(p, 1000, 3000, 6, 25, need_quiet_ms=4 * DAY, contacts_free_days=0)
        if trip is None:
            return None
        ts, country, city = trip
        geo: GeoRecord = {"lat": city.lat, "lon": city.lon, "city": city.name}
        away = records.context(country.code, geo, p.timezone, "88.12.1.2", p.user_agent)
        there = ts + int(self.rng.uniform(8, 14) * HOUR)
        back = there + int(self.rng.uniform(1, 3) * DAY)
        return [
            self.web_event(p, "login", t, web_page("login", success=True), context=ctx)
            for t, ctx in (
                (ts, self.home_context(p)),
                (there, away),
                (back, self.home_context(p)),
            )
        ]

    def payment_retry(self, p: Person) -> list[TouchpointRecord] | None:
        """Declined twice, approved on the third try, within minutes."""
        ts = self.quiet_time(p, 2, 30, contacts_free_days=0)
        if ts is None:
            return None
        amount = self.amount(p)
        return [
            self.payment(p, ts + i * int(self.rng.uniform(1, 3) * MINUTE), amount, status)
            for i, status in enumerate(("declined", "declined", "approved"))
        ]

    def two_contacts(self, p: Person) -> list[TouchpointRecord] | None:
        """Two contacts three days apart, the first a failed checkout 2-3 h earlier."""
        fail = self.failed_checkout(p, 5, 30, "HTTP_502", contacts_free_days=10)
        if fail is None:
            return None
        first = fail["occurred_at"] + int(self.rng.uniform(2, 3) * HOUR)
        second = first + int(self.rng.uniform(2.5, 3.5) * DAY)
        return [
            fail,
            self.contact(
                p, first, "call", contact_body(f"CC-{self.uuid()[:14]}", "call", resolved=False)
            ),
            self.contact(
                p, second, "chat", contact_body(f"CC-{self.uuid()[:14]}", "chat", resolved=True)
            ),
        ]
