"""Purchases on the web or the app: checkout, payments (some declined), orders, and the
contacts and posts that follow a failure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams.sim import records
from streams.sim.journeys.base import copy_context, mobile
from streams.sim.journeys.contact import ContactCentre
from streams.sim.journeys.model import COMMERCE_C, Person
from streams.sim.journeys.social import Social
from streams.sim.journeys.world import (
    APP_PROPS,
    MERCHANT_CATEGORIES,
    MINUTE,
    MOBILE_CHECKOUT_ERRORS,
    PAY_PROPS,
    SHOP,
    WEB_CHECKOUT_ERRORS,
    WEB_PROPS,
)
from streams.wire.model import COMMERCE, ContextRecord, IdentifiersRecord


@dataclass(frozen=True, slots=True)
class Checkout:
    """Where a purchase is paid: the channel and system, what it knows of the person, and
    how a failure of its payment step is reported."""

    channel: str
    source: str
    ids: IdentifiersRecord
    key: bytes
    context: ContextRecord
    fail: Callable[[str], None]
    errors: tuple[str, ...]


class Commerce(ContactCentre, Social):
    # ---------------------------------------------------------------- commerce

    def payment(
        self,
        p: Person,
        channel: str,
        order_id: str,
        amount: float,
        method: str,
        status: str,
        items: int,
    ) -> None:
        ids = records.identifiers(
            customer_id=p.customer_id,
            loyalty_id=p.loyalty_id if self.rnd() < 0.6 else None,
            email=p.email if self.rnd() < 0.3 else None,
        )
        payload = self.sale(
            p,
            order_id=order_id,
            transaction_id=f"TX-{self.hex(20)}",
            amount=amount,
            merchant_category=self.pick(MERCHANT_CATEGORIES),
            payment_method=method,
            status=status,
            items=items,
        )
        context = self.cc_context(p)  # a payment service knows the country, not the device
        self.emit(
            channel,
            "payment",
            "payments",
            ids,
            context,
            (COMMERCE, payload),
            f"customer_id:{p.customer_id}".encode(),
            self.props(PAY_PROPS),
            200 + int(self.rnd() * 2000),
            COMMERCE_C,
        )

    def order_placed(
        self,
        p: Person,
        channel: str,
        source: str,
        ids: IdentifiersRecord,
        context: ContextRecord,
        key: bytes,
        order_id: str,
        amount: float,
        method: str,
        items: int,
    ) -> None:
        payload = self.sale(
            p, order_id=order_id, amount=amount, payment_method=method, status="approved",
            items=items,
        )  # fmt: skip
        if p.loyalty_id and self.rnd() < 0.7:
            ids = {**ids, "loyalty_id": p.loyalty_id}
        self.emit(
            channel,
            "order_placed",
            source,
            ids,
            context,
            (COMMERCE, payload),
            key,
            self.props(WEB_PROPS if channel == "web" else APP_PROPS),
            100 + int(self.rnd() * 1500),
            COMMERCE_C,
        )

    def purchase(self, p: Person) -> None:
        rnd = self.rnd
        use_app = bool(p.apps) and p.registered and rnd() < 0.45
        order_id = f"ORD-{self.hex(12).upper()}"
        amount = self.amount(p)
        items = self.randint(1, 4)
        method = p.payment_method if rnd() < 0.8 else self.pick(p.country.payment_methods)
        c = self.app_checkout(p) if use_app else self.web_checkout(p)
        channel, source, ids, key, context = c.channel, c.source, c.ids, c.key, c.context
        fail, errors = c.fail, c.errors
        r = rnd()
        failed_reason: str | None = None
        if r < 0.7:
            self.payment(p, channel, order_id, amount, method, "approved", items)
            self.step(1, 4)
            self.order_placed(
                p, channel, source, ids, context, key, order_id, amount, method, items
            )
        elif r < 0.84:
            self.payment(p, channel, order_id, amount, method, "declined", items)
            self.step(1, 3)
            fail("PAYMENT_DECLINED")
            if rnd() < 0.4:
                self.step(30, 240)
                other = self.pick(p.country.payment_methods)
                self.payment(p, channel, order_id, amount, other, "approved", items)
                self.step(1, 4)
                self.order_placed(
                    p, channel, source, ids, context, key, order_id, amount, other, items
                )
            else:
                failed_reason = "payment_declined"
        else:
            fail(self.pick(errors))
            failed_reason = "checkout_failure"
        if failed_reason is not None:
            self.after_failure(p, failed_reason)

    def app_checkout(self, p: Person) -> Checkout:
        """To the checkout on the person's (first) app, logging in if need be."""
        a = p.apps[0]
        ctx = self.app_context(p, a, self.app_ip(p))
        sid = self.hex(16)
        self.app_event(p, a, ctx, "app_open", mobile(sid, a, screen="home"))
        self.step(2, 15)
        if not a.logged_in:
            self.app_login(p, a, ctx, sid)
        for screen in ("product", "cart", "checkout"):
            self.app_event(p, a, ctx, "screen_view", mobile(sid, a, screen=screen))
            self.step(8, 90)

        def fail(code: str) -> None:
            payload = mobile(sid, a, screen="checkout", success=False, error_code=code)
            self.app_event(p, a, ctx, "checkout_failed", payload)

        ids = records.identifiers(device_id=a.device_id, customer_id=p.customer_id)
        key = f"device_id:{a.device_id}".encode()
        return Checkout(
            "mobile", a.source, ids, key, copy_context(ctx), fail, MOBILE_CHECKOUT_ERRORS
        )

    def web_checkout(self, p: Person) -> Checkout:
        """To the payment step on one of the person's browsers, logging in if need be."""
        b = self.pick_browser(p)
        sid = self.hex(16)
        loc = p.locale.lower()
        self.web_page(p, b, sid, first=True)
        self.step(5, 60)
        if not b.linked:
            self.web_login(p, b, sid)
        product = f"SKU-{self.randint(10000, 10599)}"
        payload = records.web(
            sid, url=f"{SHOP}/{loc}/p/{product}", page_type="product", product_id=product,
            success=True,
        )  # fmt: skip
        self.web(p, b, sid, "add_to_cart", payload)
        self.step(10, 120)
        for step in ("cart", "shipping", "payment"):
            payload = records.web(
                sid, url=f"{SHOP}/{loc}/checkout/{step}", page_type="checkout",
                checkout_step=step, success=True,
            )  # fmt: skip
            self.web(p, b, sid, "checkout_step", payload)
            self.step(10, 100)
        ids, key = self.web_ids(p, b)
        context = self.web_context(p, b)

        def fail(code: str) -> None:
            payload = records.web(
                sid, url=f"{SHOP}/{loc}/checkout/payment", page_type="checkout",
                checkout_step="payment", success=False, error_code=code,
            )  # fmt: skip
            self.web(p, b, sid, "checkout_failed", payload)

        return Checkout("web", "web-sdk", ids, key, context, fail, WEB_CHECKOUT_ERRORS)

    def after_failure(self, p: Person, reason: str) -> None:
        """A failed purchase: calls within the hour (again if not sorted out), a post."""
        rnd = self.rnd
        p.mood = -1.0
        if rnd() < 0.7:
            self.t += int((2 + 50 * rnd()) * MINUTE)  # calls within the hour
            if not self.contact(p, reason, complaint_rate=0.25) and rnd() < 0.35:
                self.step(120, 900)  # not sorted out: they try again
                self.contact(p, reason, complaint_rate=0.4)
        if p.handle is not None and rnd() < 0.25:
            self.step(60, 900)
            self.social(p)
