"""The journey builder's state and small helpers: random draws, contexts, ``emit``."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, TypeVar

from streams.sim import records
from streams.sim.journeys.model import (
    JUNK,
    App,
    Browser,
    GeneratedEvent,
    Person,
    Session,
    Traps,
)
from streams.sim.journeys.world import COUNTRIES, UUID_CLEAR, UUID_SET, Country
from streams.wire.model import (
    CommerceRecord,
    ContextRecord,
    GeoRecord,
    IdentifiersRecord,
    MobileRecord,
    Payload,
)

_T = TypeVar("_T")


class JourneyBase:
    """Builds people and their sessions; one instance per ``generate`` call."""

    def __init__(
        self,
        rng: random.Random,
        customers: int,
        now_ms: int,
        span_ms: int,
        per_customer: float,
        traps: Traps | None = None,
    ) -> None:
        self.rng = rng
        self.traps = traps or Traps.none()
        self.trap = ""  # the trap the events emitted now carry
        self.email_shared = False  # the person whose sessions are built shares their email
        self.trap_of: dict[str, str] = {}  # event id -> trap
        self.centre_phones: dict[str, str] = {}  # country -> the contact centre's number
        self.rnd = rng.random
        self.bits = rng.getrandbits
        self.customers = customers
        self.now_ms = now_ms
        self.span_ms = span_ms
        self.per_customer = per_customer
        self.counts = [0, 0, 0, 0, 0]
        self.total = 0
        self.out: list[GeneratedEvent] = []
        self.phone_next: dict[tuple[str, str], int] = {}
        width = max(6, len(str(customers * 10)))
        self.customer_ids = rng.sample(range(1, 10**width), customers)
        self.customer_width = width
        self.suffix_width = max(3, len(str(customers * 10)))
        self.suffixes = rng.sample(range(10**self.suffix_width), customers)
        self.loyalty_ids = rng.sample(range(10**8, 10**10), customers)
        self.phone_start = {c.code: rng.randrange(10**6) for c in COUNTRIES}
        # The session being built and its clock (ms from the session's start).
        self.session = Session()
        self.t = 0
        self.consent: str | None = None

    # ---------------------------------------------------------------- small helpers

    def uuid(self) -> str:
        h = f"{(self.bits(128) & UUID_CLEAR) | UUID_SET:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def hex(self, chars: int) -> str:
        return f"{self.bits(chars * 4):0{chars}x}"

    def step(self, lo_s: float, hi_s: float) -> None:
        self.t += int((lo_s + (hi_s - lo_s) * self.rnd()) * 1000)

    def pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self.rnd() * len(seq))]

    def randint(self, lo: int, hi: int) -> int:
        return lo + int(self.rnd() * (hi - lo + 1))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.rnd()

    def weighted(self, seq: Sequence[_T], weights: Sequence[float]) -> _T:
        r = self.rnd() * sum(weights)
        for item, w in zip(seq, weights, strict=True):
            r -= w
            if r < 0:
                return item
        return seq[-1]

    def props(self, pool: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, str]:
        """0..4 properties (a contiguous run of the pool, from a random start)."""
        rnd = self.rnd
        r = rnd()
        n = 0 if r < 0.25 else 1 if r < 0.55 else 2 if r < 0.8 else 3 if r < 0.92 else 4
        if n == 0:
            return {}
        size = len(pool)
        start = int(rnd() * size)
        out: dict[str, str] = {}
        for j in range(start, start + min(n, size)):
            name, values = pool[j % size]
            out[name] = values[int(rnd() * len(values))]
        return out

    def email_form(self, p: Person, odd: float) -> str:
        return self.pick(p.email_forms) if self.rnd() < odd else p.email

    # ---------------------------------------------------------------- contexts

    def web_context(self, p: Person, b: Browser) -> ContextRecord:
        # The geo is where the IP address geolocates.
        return records.context(p.country.code, b.geo, p.city.timezone, b.ip, b.user_agent, p.locale)

    def app_context(self, p: Person, a: App, ip: str) -> ContextRecord:
        c = p.city
        geo: GeoRecord = {
            "lat": round(c.lat + (self.rnd() - 0.5) * 0.15, 5),
            "lon": round(c.lon + (self.rnd() - 0.5) * 0.2, 5),
            "city": c.name if self.rnd() < 0.7 else None,
        }
        return records.context(p.country.code, geo, c.timezone, ip, a.user_agent, p.locale)

    def cc_context(self, p: Person) -> ContextRecord:
        return records.context(p.country.code, timezone=p.city.timezone, locale=p.locale)

    def social_context(self, p: Person) -> ContextRecord:
        country = p.country.code if self.rnd() < 0.7 else None
        return records.context(country, locale=p.locale if self.rnd() < 0.8 else None)

    # ---------------------------------------------------------------- emit

    def emit(
        self,
        channel: str,
        event_type: str,
        source: str,
        ids: IdentifiersRecord,
        context: ContextRecord,
        payload: tuple[str, Payload],
        key: bytes,
        properties: dict[str, str],
        lag: int,
        cat: int,
    ) -> None:
        # occurred_at is made absolute, and received_at set, when the session is placed.
        record = records.touchpoint(
            self.uuid(), channel, event_type, self.t, 0, source, ids, context, payload,
            properties, self.consent,
        )  # fmt: skip
        trap = self.trap or ("shared_email" if self.email_shared and ids.get("email") else "")
        if self.traps.junk and self.rnd() < self.traps.junk:
            kind, value = self.pick(JUNK)
            if not ids.get(kind):
                record["identifiers"] = {**ids, kind: value}  # type: ignore[misc]
                trap = trap or "junk"
        if trap:
            self.trap_of[record["event_id"]] = trap
        self.session.events.append((record, lag, key))
        self.counts[cat] += 1
        self.total += 1

    def app_ip(self, p: Person) -> str:
        return self.ip(p.country)

    def ip(self, country: Country) -> str:
        return f"{self.pick(country.ip_prefixes)}.{self.randint(0, 255)}.{self.randint(1, 254)}"

    def sale(self, p: Person, **given: Any) -> CommerceRecord:
        """A commerce payload in the person's currency, sold by the brand in their country."""
        return records.commerce(
            currency=p.country.currency, merchant=f"Northwind {p.country.code}", **given
        )

    def amount(self, p: Person) -> float:
        lo, hi = p.country.amount_range
        value = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * self.rnd())
        return float(round(value)) if p.country.currency == "JPY" else round(value, 2)


def copy_context(ctx: ContextRecord) -> ContextRecord:
    geo = ctx["geo"]
    return {**ctx, "geo": None if geo is None else {**geo}}


def occurred(event: GeneratedEvent) -> int:
    return event.record["occurred_at"]


def clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def mobile(session_id: str, app: App, **given: Any) -> MobileRecord:
    """An app event's payload: the session, the app's version and OS, and ``given``."""
    return records.mobile(session_id, app_version=app.app_version, os=app.os, **given)
