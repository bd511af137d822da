"""Web and app sessions: browsing, logging in (the linking events), app opens and pushes."""

from __future__ import annotations

from streams.sim import records
from streams.sim.journeys.base import JourneyBase, copy_context, mobile
from streams.sim.journeys.model import MOBILE_C, WEB_C, App, Browser, Person
from streams.sim.journeys.world import (
    APP_PROPS,
    CATEGORIES_SHOP,
    MINUTE,
    PUSH_CAMPAIGNS,
    SCREENS,
    SHOP,
    SUPPORT_TOPICS,
    WEB_PROPS,
    WEB_REFERRERS,
)
from streams.wire.model import (
    MOBILE,
    WEB,
    ContextRecord,
    IdentifiersRecord,
    MobileRecord,
    WebRecord,
)


class Digital(JourneyBase):
    # ---------------------------------------------------------------- web

    def web_ids(self, p: Person, b: Browser) -> tuple[IdentifiersRecord, bytes]:
        anon = b.cookies[b.cookie]
        if b.linked:
            ids = records.identifiers(anonymous_id=anon, customer_id=p.customer_id)
            return ids, f"customer_id:{p.customer_id}".encode()
        return records.identifiers(anonymous_id=anon), f"anonymous_id:{anon}".encode()

    def web(
        self,
        p: Person,
        b: Browser,
        sid: str,
        event_type: str,
        payload: WebRecord,
        ids: tuple[IdentifiersRecord, bytes] | None = None,
    ) -> None:
        ident, key = ids if ids is not None else self.web_ids(p, b)
        lag = 40 + int(self.rnd() * 1500)
        self.emit(
            "web",
            event_type,
            "web-sdk",
            ident,
            self.web_context(p, b),
            (WEB, payload),
            key,
            self.props(WEB_PROPS),
            lag,
            WEB_C,
        )

    def web_page(self, p: Person, b: Browser, sid: str, first: bool = False) -> None:
        r = self.rnd()
        loc = p.locale.lower()
        referrer = self.pick(WEB_REFERRERS) if first else f"{SHOP}/{loc}/"
        if r < 0.55:
            r2 = self.rnd()
            if r2 < 0.2:
                page_type, url, product = "home", f"{SHOP}/{loc}/", None
            elif r2 < 0.5:
                cat = self.pick(CATEGORIES_SHOP)
                page_type, url, product = "category", f"{SHOP}/{loc}/c/{cat}", None
            else:
                product = f"SKU-{self.randint(10000, 10599)}"
                page_type, url = "product", f"{SHOP}/{loc}/p/{product}"
            payload = records.web(
                sid, url=url, referrer=referrer, page_type=page_type, product_id=product
            )
            self.web(p, b, sid, "page_view", payload)
        elif r < 0.78:
            query = self.pick(p.country.search_terms)
            url = f"{SHOP}/{loc}/search?q={query.replace(' ', '+')}"
            payload = records.web(
                sid, url=url, referrer=referrer, page_type="search", search_query=query
            )
            self.web(p, b, sid, "search", payload)
        elif r < 0.95:
            product = f"SKU-{self.randint(10000, 10599)}"
            url = f"{SHOP}/{loc}/p/{product}"
            payload = records.web(
                sid, url=url, page_type="product", product_id=product, success=True
            )
            self.web(p, b, sid, "add_to_cart", payload)
        else:
            product = f"SKU-{self.randint(10000, 10599)}"
            payload = records.web(
                sid, url=f"{SHOP}/{loc}/cart", page_type="cart", product_id=product
            )
            self.web(p, b, sid, "remove_from_cart", payload)

    def web_login(self, p: Person, b: Browser, sid: str) -> None:
        """Sign up or log in on this browser: the event that links the cookie to the person."""
        loc = p.locale.lower()
        anon = b.cookies[b.cookie]
        akey = f"anonymous_id:{anon}".encode()
        if not p.registered:
            payload = records.web(
                sid, url=f"{SHOP}/{loc}/signup", page_type="account", success=True
            )
            ids = records.identifiers(
                anonymous_id=anon,
                customer_id=p.customer_id,
                login_id=p.login_id,
                email=self.email_form(p, 0.3),
                phone=p.phone_typed if self.rnd() < 0.5 else None,
            )
            self.web(p, b, sid, "signup", payload, (ids, akey))
            p.registered = True
            b.linked = True
            self.step(5, 40)
            return
        login_url = f"{SHOP}/{loc}/login"
        if self.rnd() < 0.1:
            payload = records.web(
                sid, url=login_url, page_type="login", success=False, error_code="INVALID_PASSWORD"
            )
            self.web(
                p,
                b,
                sid,
                "login_failed",
                payload,
                (records.identifiers(anonymous_id=anon, login_id=p.login_id), akey),
            )
            self.step(5, 30)
            if self.rnd() < 0.6:
                payload = records.web(
                    sid, url=f"{SHOP}/{loc}/account/reset", page_type="account", success=True
                )
                ids = records.identifiers(anonymous_id=anon, email=self.email_form(p, 0.3))
                self.web(p, b, sid, "password_reset", payload, (ids, akey))
                self.step(60, 300)  # reading the reset email
        payload = records.web(sid, url=login_url, page_type="login", success=True)
        ids = records.identifiers(
            anonymous_id=anon,
            customer_id=p.customer_id,
            login_id=p.login_id,
            email=self.email_form(p, 0.3) if self.rnd() < 0.3 else None,
        )
        self.web(p, b, sid, "login", payload, (ids, akey))
        b.linked = True
        self.step(3, 30)

    def pick_browser(self, p: Person) -> Browser:
        b = p.browsers[0] if len(p.browsers) == 1 or self.rnd() < 0.65 else p.browsers[1]
        if len(b.cookies) > 1 and b.cookie == 0 and self.rnd() < 0.2:
            b.cookie = 1  # cookies cleared: anonymous again
            b.linked = False
        return b

    def web_browse(self, p: Person) -> None:
        b = self.pick_browser(p)
        sid = self.hex(16)
        n = self.randint(2, 6)
        login_at = self.randint(1, n) if not b.linked and self.rnd() < 0.45 else -1
        for i in range(n):
            if i == login_at:
                self.web_login(p, b, sid)
            self.web_page(p, b, sid, first=i == 0)
            self.step(4, 75)
        if b.linked and self.rnd() < 0.06:
            payload = records.web(sid, url=f"{SHOP}/{p.locale.lower()}/logout", page_type="account")
            self.web(p, b, sid, "logout", payload)

    # ---------------------------------------------------------------- mobile

    def app_event(
        self,
        p: Person,
        a: App,
        ctx: ContextRecord,
        event_type: str,
        payload: MobileRecord,
        ids: IdentifiersRecord | None = None,
    ) -> None:
        if ids is None:
            ids = records.identifiers(
                device_id=a.device_id, customer_id=p.customer_id if a.logged_in else None
            )
        lag = 80 + int(self.rnd() * 3000) if self.rnd() < 0.93 else int(self.rnd() * 10 * MINUTE)
        self.emit(
            "mobile",
            event_type,
            a.source,
            ids,
            copy_context(ctx),
            (MOBILE, payload),
            f"device_id:{a.device_id}".encode(),
            self.props(APP_PROPS),
            lag,
            MOBILE_C,
        )

    def app_login(self, p: Person, a: App, ctx: ContextRecord, sid: str) -> None:
        """Log in on the app: links the device to the account."""
        if self.rnd() < 0.1:
            payload = mobile(sid, a, screen="login", success=False, error_code="INVALID_PASSWORD")
            ids = records.identifiers(device_id=a.device_id, login_id=p.login_id)
            self.app_event(p, a, ctx, "login_failed", payload, ids)
            self.step(5, 30)
            if self.rnd() < 0.5:
                payload = mobile(sid, a, screen="password_reset", success=True)
                ids = records.identifiers(device_id=a.device_id, email=self.email_form(p, 0.2))
                self.app_event(p, a, ctx, "password_reset", payload, ids)
                self.step(60, 240)
        payload = mobile(sid, a, screen="login", success=True)
        ids = records.identifiers(
            device_id=a.device_id,
            customer_id=p.customer_id,
            login_id=p.login_id,
            email=p.email if self.rnd() < 0.2 else None,
        )
        self.app_event(p, a, ctx, "login", payload, ids)
        a.logged_in = True
        self.step(2, 20)

    def app_session(self, p: Person) -> None:
        a = p.apps[0] if len(p.apps) == 1 or self.rnd() < 0.75 else p.apps[1]
        if a.shared:  # the family tablet: whoever used it last logged out
            a.logged_in = False
            self.trap = "family_tablet"
        try:
            self.app_session_on(p, a)
        finally:
            self.trap = ""

    def app_session_on(self, p: Person, a: App) -> None:
        ctx = self.app_context(p, a, self.app_ip(p))
        sid = self.hex(16)
        if self.rnd() < 0.25:
            campaign = self.pick(PUSH_CAMPAIGNS)
            self.app_event(
                p, a, ctx, "push_open", mobile(sid, a, screen="home", push_campaign=campaign)
            )
        else:
            self.app_event(p, a, ctx, "app_open", mobile(sid, a, screen="home"))
        self.step(2, 20)
        n = self.randint(1, 5)
        login_at = (
            self.randint(0, n - 1) if not a.logged_in and p.registered and self.rnd() < 0.5 else -1
        )
        for i in range(n):
            if i == login_at:
                self.app_login(p, a, ctx, sid)
            self.app_event(p, a, ctx, "screen_view", mobile(sid, a, screen=self.pick(SCREENS)))
            self.step(3, 60)
        if self.rnd() < 0.06:
            topic = self.pick(SUPPORT_TOPICS)
            self.app_event(
                p, a, ctx, "in_app_support", mobile(sid, a, screen="support", support_topic=topic)
            )
            self.step(10, 90)
        if self.rnd() < 0.6:
            self.app_event(p, a, ctx, "app_close", mobile(sid, a, screen=self.pick(SCREENS)))
