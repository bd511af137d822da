"""Webhook delivery over real HTTP: an aiohttp receiver on 127.0.0.1, a free port each.

Signed deliveries verify; a receiver that answers 503 (or is not listening yet) gets the
alert after a retry; a receiver that is down for good gets it dead-lettered after N
attempts; and the stream side's enqueue stays fast whatever the receivers do.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from streams.adapters.webhooks import (
    ALERT_ID_HEADER,
    ATTEMPT_HEADER,
    SIGNATURE_HEADER,
    DeadDelivery,
    RetryPolicy,
    Subscriber,
    WebhookDispatcher,
    verify_signature,
)
from streams.customers.detect import Alert

pytestmark = pytest.mark.integration

SECRET = "whsec_integration_5f0c2a9e"
POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.2, timeout_s=2.0)


def alert(i: int, rule: str = "impossible_travel", severity: str = "high") -> Alert:
    return {
        "alert_id": f"alert-{i}",
        "customer_id": f"CRM-{i}",
        "rule": rule,
        "severity": severity,
        "score": 3.5,
        "summary": "usual countries GB; ...",
        "event_ids": [f"e{i}"],
        "evidence": {"distance_km": "9500"},
        "occurred_at": 1_760_000_000_000,
        "detected_at": 1_760_000_000_500,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Receiver:
    """A webhook endpoint that verifies signatures, like a subscriber would."""

    port: int
    secret: str = SECRET
    script: list[int] = field(default_factory=list)  # statuses to answer first
    delay_s: float = 0.0
    verified: list[dict[str, object]] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)
    bad_signatures: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/touchpoints"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts.append(request.headers[ATTEMPT_HEADER])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not verify_signature(self.secret, request.headers.get(SIGNATURE_HEADER), body, 60):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.script:
            return web.Response(status=self.script.pop(0))
        payload = orjson.loads(body)
        assert payload["alert_id"] == request.headers[ALERT_ID_HEADER]
        self.verified.append(payload)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/touchpoints", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def deliver_to(
    receiver: Receiver, sub: Subscriber, *alerts: Alert
) -> tuple[list[DeadDelivery], WebhookDispatcher]:
    """Start ``receiver``, dispatch ``alerts`` to ``sub`` until done, stop both; the dead
    letters and the (stopped) dispatcher, for its stats."""
    await receiver.start()
    dead: list[DeadDelivery] = []
    dispatcher = WebhookDispatcher([sub], dead.append, policy=POLICY)
    await dispatcher.start()
    try:
        for a in alerts:
            dispatcher.enqueue(a)
        await dispatcher.join()
    finally:
        await dispatcher.stop()
        await receiver.stop()
    return dead, dispatcher


def test_signed_deliveries_verify_and_filters_apply() -> None:
    async def scenario() -> None:
        fraud, cx = Receiver(free_port()), Receiver(free_port(), secret="whsec_cx_71d2")
        await fraud.start()
        await cx.start()
        dead: list[DeadDelivery] = []
        subs = [
            Subscriber(
                "fraud",
                fraud.url,
                fraud.secret,
                rules=frozenset({"impossible_travel", "velocity_burst"}),
            ),
            Subscriber("cx", cx.url, cx.secret, rules=frozenset({"high_effort"})),
        ]
        dispatcher = WebhookDispatcher(subs, dead.append, policy=POLICY)
        await dispatcher.start()
        try:
            dispatcher.enqueue(alert(1))
            dispatcher.enqueue(alert(2, rule="high_effort", severity="medium"))
            dispatcher.enqueue(alert(3, rule="velocity_burst"))
            await dispatcher.join()
        finally:
            await dispatcher.stop()
            await fraud.stop()
            await cx.stop()
        assert dead == []
        assert [p["alert_id"] for p in fraud.verified] == ["alert-1", "alert-3"]
        assert [p["alert_id"] for p in cx.verified] == ["alert-2"]
        assert fraud.verified[0]["evidence"] == {"distance_km": "9500"}
        assert fraud.bad_signatures == cx.bad_signatures == 0
        assert dispatcher.stats.delivered == 3

    run(scenario)


def test_a_wrong_secret_is_refused_by_the_receiver_and_dead_lettered() -> None:
    async def scenario() -> None:
        receiver = Receiver(free_port())
        sub = Subscriber("hook", receiver.url, "not-the-shared-secret")
        dead, _ = await deliver_to(receiver, sub, alert(1))
        assert receiver.bad_signatures == 1 and receiver.verified == []
        assert [(d.reason, d.last_status) for d in dead] == [("rejected", 401)]

    run(scenario)


def test_receiver_503_then_recovering_gets_the_alert_after_retries() -> None:
    async def scenario() -> None:
        receiver = Receiver(free_port(), script=[503, 503])
        sub = Subscriber("hook", receiver.url, SECRET)
        dead, dispatcher = await deliver_to(receiver, sub, alert(7))
        assert dead == []
        assert [p["alert_id"] for p in receiver.verified] == ["alert-7"]
        assert receiver.attempts == ["1", "2", "3"]
        assert dispatcher.stats.retries == 2

    run(scenario)


def test_receiver_down_then_up_gets_the_alert() -> None:
    async def scenario() -> None:
        receiver = Receiver(free_port())  # nothing listens on the port yet
        dead: list[DeadDelivery] = []
        sub = Subscriber("hook", receiver.url, SECRET)
        policy = RetryPolicy(max_attempts=10, base_delay_s=0.1, max_delay_s=0.3, timeout_s=2.0)
        dispatcher = WebhookDispatcher([sub], dead.append, policy=policy)
        await dispatcher.start()
        try:
            dispatcher.enqueue(alert(8))
            await asyncio.sleep(0.25)  # at least one connection refused by now
            assert dispatcher.stats.retries >= 1 and receiver.verified == []
            await receiver.start()
            await dispatcher.join()
        finally:
            await dispatcher.stop()
            await receiver.stop()
        assert dead == []
        assert [p["alert_id"] for p in receiver.verified] == ["alert-8"]
        assert int(receiver.attempts[0]) >= 2  # the first attempt(s) never arrived

    run(scenario)


def test_receiver_down_for_good_dead_letters_after_n_attempts() -> None:
    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}/hooks/touchpoints"  # nobody listening
        dead: list[DeadDelivery] = []
        dispatcher = WebhookDispatcher(
            [Subscriber("hook", url, SECRET)], dead.append, policy=POLICY
        )
        await dispatcher.start()
        try:
            dispatcher.enqueue(alert(9))
            dispatcher.enqueue(alert(10))
            await dispatcher.join()
        finally:
            await dispatcher.stop()
        assert [(d.alert_id, d.reason, d.attempts) for d in dead] == [
            ("alert-9", "max_attempts", 4),
            ("alert-10", "max_attempts", 4),
        ]
        assert dead[0].last_status is None and dead[0].last_error
        assert "Connect" in dead[0].last_error or "refused" in dead[0].last_error.lower()
        assert orjson.loads(dead[0].body)["alert_id"] == "alert-9"  # nothing lost

    run(scenario)


def test_enqueue_never_blocks_the_stream() -> None:
    async def scenario() -> None:
        slow = Receiver(free_port(), delay_s=1.5)  # every delivery takes 1.5 s
        await slow.start()
        dead: list[DeadDelivery] = []
        dispatcher = WebhookDispatcher(
            [Subscriber("slow", slow.url, SECRET)], dead.append, queue_size=50, policy=POLICY
        )
        await dispatcher.start()
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        try:
            worst = 0.0
            started = time.perf_counter()
            for i in range(2000):
                t = time.perf_counter()
                dispatcher.enqueue(alert(i))
                worst = max(worst, time.perf_counter() - t)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # the stream yields between batches
            total = time.perf_counter() - started
            await asyncio.sleep(0.3)
            assert ticks >= 10  # the event loop kept running while receivers hang
        finally:
            beat.cancel()
            await dispatcher.stop(drain_timeout_s=0.1)
            await slow.stop()
        # Never blocking is structural: enqueue is a plain function (it cannot await a
        # receiver) and a full queue dead-letters instead of waiting (asserted below). How
        # long a call takes is a speed figure, which belongs in make bench, not here: on
        # these shared machines a single call was measured at 0.17 s once.
        assert not inspect.iscoroutinefunction(WebhookDispatcher.enqueue)
        print(f"2000 enqueues in {total:.3f}s, slowest {worst * 1000:.1f} ms")
        reasons = {d.reason for d in dead}
        assert reasons == {"queue_full", "shutdown"}
        assert sum(1 for d in dead if d.reason == "queue_full") >= 2000 - 51
        # Every alert accounted for. The one in flight at shutdown is dead-lettered too,
        # though the receiver may still have got it: at least once, deduped by alert id.
        delivered = {str(p["alert_id"]) for p in slow.verified}
        assert {d.alert_id for d in dead} | delivered == {f"alert-{i}" for i in range(2000)}
        assert len(delivered) <= 1

    run(scenario)
