"""Social mentions, replies and direct messages (some revealing an email)."""

from __future__ import annotations

from streams.sim import records
from streams.sim.journeys.base import JourneyBase
from streams.sim.journeys.model import SOCIAL_C, Person
from streams.sim.journeys.world import (
    BRAND,
    DM_TEXTS,
    NEGATIVE_TEXTS,
    NEUTRAL_TEXTS,
    POSITIVE_TEXTS,
    SOCIAL_PROPS,
)
from streams.wire.model import SOCIAL, IdentifiersRecord


class Social(JourneyBase):
    # ---------------------------------------------------------------- social

    def social(self, p: Person) -> None:
        rnd = self.rnd
        if p.handle is None:
            return
        handle = p.handle if rnd() < 0.5 else f"@{p.handle}"
        key = f"social_handle:{handle}".encode()
        mood = p.mood + (rnd() - 0.45) * 1.2
        if mood < -0.35:
            texts, lo, hi = NEGATIVE_TEXTS, -0.95, -0.3
        elif mood < 0.25:
            texts, lo, hi = NEUTRAL_TEXTS, -0.2, 0.2
        else:
            texts, lo, hi = POSITIVE_TEXTS, 0.3, 0.95
        text = self.pick(texts).format(brand=BRAND, city=p.city.name)
        message_id = f"{p.platform}-{self.bits(60)}"
        r = rnd()
        kind = "mention" if r < 0.6 else "direct_message" if r < 0.85 else "reply"
        in_reply_to = f"{p.platform}-{self.bits(60)}" if kind == "reply" else None
        ids = records.identifiers(social_handle=handle)
        if kind == "direct_message":  # mostly support requests: neutral to negative
            lo, hi = min(lo, -0.6), min(hi, 0.1)
            template = self.pick(DM_TEXTS)
            if "{email}" in template:
                email = self.email_form(p, 0.3)
                text = template.format(email=email.strip())
                ids["email"] = email
            else:
                text = template
        self.social_event(p, kind, ids, key, text, self.uniform(lo, hi), message_id, in_reply_to)
        if kind == "mention" and rnd() < 0.4:
            # The brand replied; the customer answers, sometimes moving to a DM.
            self.step(120, 1500)
            text = "thanks for getting back to me" if mood > -0.35 else "that doesn't help at all"
            self.social_event(
                p, "reply", records.identifiers(social_handle=handle), key, text,
                self.uniform(lo, hi), f"{p.platform}-{self.bits(60)}",
                f"{p.platform}-{self.bits(60)}",
            )  # fmt: skip
            if rnd() < 0.4:
                self.step(60, 900)
                email = self.email_form(p, 0.3)
                text = f"DMing you now, my email is {email.strip()}"
                ids = records.identifiers(social_handle=handle, email=email)
                self.social_event(
                    p, "direct_message", ids, key, text, self.uniform(lo, hi),
                    f"{p.platform}-{self.bits(60)}", None,
                )  # fmt: skip

    def social_event(
        self,
        p: Person,
        kind: str,
        ids: IdentifiersRecord,
        key: bytes,
        text: str,
        sentiment: float,
        message_id: str,
        in_reply_to: str | None,
    ) -> None:
        payload = records.social(
            p.platform, message_id=message_id, in_reply_to=in_reply_to, text=text,
            sentiment=round(sentiment, 3), is_public=kind != "direct_message",
        )  # fmt: skip
        self.emit(
            "social", kind, "sprinklr", ids, self.social_context(p), (SOCIAL, payload), key,
            self.props(SOCIAL_PROPS), 1000 + int(self.rnd() * 60000), SOCIAL_C,
        )  # fmt: skip
