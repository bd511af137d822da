"""The whole population: households and couples (traps), each person's sessions, placed
over the span."""

from __future__ import annotations

import math

from streams.sim.journeys.base import occurred
from streams.sim.journeys.commerce import Commerce
from streams.sim.journeys.model import (
    CC_C,
    COMMERCE_C,
    MOBILE_C,
    SOCIAL_C,
    TARGETS,
    App,
    GeneratedEvent,
    Person,
    Session,
)
from streams.sim.journeys.world import City, Country


class Journeys(Commerce):
    # ---------------------------------------------------------------- journeys

    def pick_category(self, p: Person) -> int:
        """A category for the next session: the person's habits, nudged towards the mix."""
        total = self.total
        weights = [
            target * aff * ((2.5 if count < target * total else 0.35) if total else 1.0)
            for target, aff, count in zip(TARGETS, p.affinity, self.counts, strict=True)
        ]
        return self.weighted(range(5), weights)

    def run_session(self, p: Person) -> None:
        cat = self.pick_category(p)
        if cat == MOBILE_C and p.apps:
            self.app_session(p)
        elif cat == CC_C:
            self.cc_session(p)
        elif cat == SOCIAL_C and p.handle is not None:
            self.social(p)
        elif cat == COMMERCE_C:
            self.purchase(p)
        else:
            self.web_browse(p)

    def build(self) -> list[GeneratedEvent]:
        sigma = 0.55
        mu = math.log(max(self.per_customer * 0.8, 0.5)) - sigma * sigma / 2
        traps = self.traps
        tablet: App | None = None
        tablet_left = 0
        home: tuple[Country, City] | None = None
        partner: Person | None = None
        for index in range(self.customers):
            p = self.person(index, home if tablet_left > 0 else None)
            if traps.households:
                if tablet_left == 0 and self.rnd() < traps.households / 3:
                    tablet = self.app(p.country)
                    tablet.shared = True
                    tablet_left = self.randint(2, 4)
                    home = (p.country, p.city)
                if tablet is not None and tablet_left > 0:
                    p.apps.append(tablet)
                    p.affinity = (p.affinity[0], max(p.affinity[1], 1.2), *p.affinity[2:])
                    tablet_left -= 1
            if traps.shared_emails:
                if partner is not None:  # the second of a couple: the first one's email
                    p.email, p.email_forms = partner.email, partner.email_forms
                    p.shared_email = True
                    partner = None
                elif self.rnd() < traps.shared_emails / 2:
                    partner = p
                    p.shared_email = True
            self.email_shared = p.shared_email
            self.consent = p.consent
            budget = max(1.0, self.rng.lognormvariate(mu, sigma))
            sessions: list[Session] = []
            produced = 0
            while produced < budget and len(sessions) < 64:
                self.session = Session()
                self.t = 0
                self.run_session(p)
                self.session.duration = self.t
                produced += len(self.session.events)
                sessions.append(self.session)
            self.place(p.index, sessions)
        self.out.sort(key=occurred)
        return self.out

    def place(self, person: int, sessions: list[Session]) -> None:
        """Lay a person's sessions out in order over the span, ending no later than now."""
        rnd = self.rnd
        span = self.span_ms
        busy = sum(s.duration for s in sessions)
        scale = 1.0
        if busy > span * 0.9:
            scale = span * 0.9 / busy
            busy = int(busy * scale)
        gaps = [rnd() for _ in range(len(sessions) + 1)]
        free = (span - busy) / (sum(gaps) or 1.0)
        t = self.now_ms - span
        now = self.now_ms
        out = self.out
        for s, gap in zip(sessions, gaps, strict=False):
            t += int(gap * free)
            for rec, lag, key in s.events:
                occurred = t + int(rec["occurred_at"] * scale)
                rec["occurred_at"] = occurred
                received = occurred + lag
                rec["received_at"] = received if received < now else now
                trap = self.trap_of.get(rec["event_id"], "")
                out.append(GeneratedEvent(rec, person, key, trap))
            t += int(s.duration * scale)
