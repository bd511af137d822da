"""Contact-centre contacts: calls, chats and emails with complaints, refunds and surveys."""

from __future__ import annotations

from streams.sim import records
from streams.sim.journeys.base import clamp
from streams.sim.journeys.digital import Digital
from streams.sim.journeys.model import CC_C, COMMERCE_C, Person
from streams.sim.journeys.people import People
from streams.sim.journeys.world import (
    CC_PROPS,
    CC_QUEUES,
    CC_REASON_WEIGHTS,
    CC_REASONS,
    PAY_PROPS,
    SHOP,
)
from streams.wire.model import COMMERCE, CONTACT, ContactCentreRecord, IdentifiersRecord


class ContactCentre(People, Digital):
    # ---------------------------------------------------------------- contact centre

    def contact(self, p: Person, reason: str, complaint_rate: float = 0.06) -> bool:
        """A call, chat or email (maybe a complaint, a refund, a survey); True if resolved."""
        rnd = self.rnd
        r = rnd()
        medium = "call" if r < 0.55 else "chat" if r < 0.85 else "email"
        verified = p.registered and rnd() < 0.65
        ids, key, source, wait, handle = self.reached_by(p, medium, verified)
        resolved = rnd() < (0.55 if reason in ("checkout_failure", "payment_declined") else 0.75)
        transferred = rnd() < 0.18
        complaint = rnd() < complaint_rate
        contact_id = f"CC-{self.hex(14)}"
        queue = CC_QUEUES[reason]
        if p.locale[:2] not in ("en",) and rnd() < 0.6:
            queue = f"{queue}-{p.locale[:2]}"
        agent = f"AG-{self.randint(1000, 1399)}"
        context = self.cc_context(p)
        payload = records.contact_centre(
            contact_id=contact_id, medium=medium, queue=queue, agent_id=agent, reason=reason,
            wait_seconds=round(wait, 1), handle_seconds=round(handle, 1), resolved=resolved,
            transferred=transferred, is_complaint=complaint,
        )  # fmt: skip
        # occurred_at is when the contact came in; its wait and handle time follow.
        lag = 500 + int(rnd() * 4000)
        self.emit(
            "contact_centre", medium, source, ids, context, (CONTACT, payload), key,
            self.props(CC_PROPS), lag, CC_C,
        )  # fmt: skip
        self.t += int((wait + handle) * 1000) if medium != "email" else int(handle * 1000)
        self.follow_ups(p, payload, ids, key, lag, complaint)
        self.trap = ""
        return resolved

    def reached_by(
        self, p: Person, medium: str, verified: bool
    ) -> tuple[IdentifiersRecord, bytes, str, float, float]:
        """What the contact centre's system knows of the person on this medium: their
        identifiers and key, the system, and the wait and handle times (seconds)."""
        rnd = self.rnd
        if medium == "call":
            # Caller id (E.164 or as the carrier presents it), else what the IVR or agent took.
            r = rnd()
            phone = (
                p.phone_e164
                if r < 0.55
                else p.phone_national
                if r < 0.75
                else p.phone_international
                if r < 0.9
                else p.phone_typed
            )
            ids = records.identifiers(phone=phone, customer_id=p.customer_id if verified else None)
            if self.traps.centre_phone and self.rnd() < self.traps.centre_phone:
                # The agent typed the centre's own number into the caller's record.
                phone = self.centre_phone(p)
                ids = records.identifiers(phone=phone, customer_id=p.customer_id)
                self.trap = "centre_phone"
            key = f"phone:{phone}".encode()
            source = "genesys"
            wait = clamp(self.rng.lognormvariate(4.5, 0.8), 3, 3600)
            handle = clamp(self.rng.lognormvariate(5.8, 0.6), 30, 7200)
        elif medium == "chat":
            if p.registered:
                ids = records.identifiers(
                    customer_id=p.customer_id, email=p.email if rnd() < 0.4 else None
                )
                key = f"customer_id:{p.customer_id}".encode()
            else:
                email = self.email_form(p, 0.5)
                ids = records.identifiers(email=email, phone=p.phone_typed if rnd() < 0.3 else None)
                key = f"email:{email}".encode()
            source = "genesys"
            wait = clamp(self.rng.lognormvariate(3.6, 0.8), 2, 1800)
            handle = clamp(self.rng.lognormvariate(6.2, 0.5), 60, 7200)
        else:
            email = self.email_form(p, 0.5)
            ids = records.identifiers(email=email, customer_id=p.customer_id if verified else None)
            key = f"email:{email}".encode()
            source = "zendesk"
            wait = clamp(self.rng.lognormvariate(8.0, 0.7), 300, 86400)
            handle = clamp(self.rng.lognormvariate(5.5, 0.5), 60, 3600)
        return ids, key, source, wait, handle

    def follow_ups(
        self,
        p: Person,
        payload: ContactCentreRecord,
        ids: IdentifiersRecord,
        key: bytes,
        lag: int,
        complaint: bool,
    ) -> None:
        """After a contact: the complaint logged, a refund, a survey answered."""
        rnd = self.rnd
        resolved = payload["resolved"]
        if complaint:
            self.step(20, 300)
            body: ContactCentreRecord = {**payload, "is_complaint": True}
            self.emit(
                "contact_centre", "complaint", "salesforce", {**ids}, self.cc_context(p),
                (CONTACT, body), key, self.props(CC_PROPS), lag, CC_C,
            )  # fmt: skip
            p.mood = -1.0
        if payload["reason"] == "return_request" and resolved and rnd() < 0.5:
            self.step(30, 600)
            refund = self.sale(
                p, order_id=f"ORD-{self.hex(12).upper()}", transaction_id=f"TX-{self.hex(20)}",
                amount=self.amount(p), payment_method=p.payment_method, status="refunded",
                items=1,
            )  # fmt: skip
            self.emit(
                "contact_centre", "refund", "payments",
                records.identifiers(customer_id=p.customer_id) if p.registered else {**ids},
                self.cc_context(p), (COMMERCE, refund),
                f"customer_id:{p.customer_id}".encode() if p.registered else key,
                self.props(PAY_PROPS), 1000, COMMERCE_C,
            )  # fmt: skip
        if rnd() < 0.35:
            self.step(120, 1200)
            good = resolved and not complaint
            csat = self.randint(4, 5) if good else self.randint(1, 3)
            nps = self.randint(7, 10) if good else self.randint(0, 6)
            survey: ContactCentreRecord = {
                **payload,
                "csat": csat if rnd() < 0.95 else None,
                "nps": nps if rnd() < 0.8 else None,
            }
            self.emit(
                "contact_centre", "survey_response", "medallia", {**ids}, self.cc_context(p),
                (CONTACT, survey), key, {}, 2000 + int(rnd() * 30000), CC_C,
            )  # fmt: skip
            if good:
                p.mood = 0.0

    def cc_session(self, p: Person) -> None:
        reason = self.weighted(CC_REASONS, CC_REASON_WEIGHTS)
        if reason == "account_access" and p.registered and self.rnd() < 0.5:
            b = self.pick_browser(p)
            sid = self.hex(16)
            loc = p.locale.lower()
            url = f"{SHOP}/{loc}/account/reset"
            payload = records.web(sid, url=url, page_type="account", success=True)
            anon = b.cookies[b.cookie]
            ids = records.identifiers(anonymous_id=anon, email=self.email_form(p, 0.3))
            self.web(p, b, sid, "password_reset", payload, (ids, f"anonymous_id:{anon}".encode()))
            self.step(300, 1500)
        self.contact(p, reason)
