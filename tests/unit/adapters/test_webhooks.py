"""Webhook signing, subscriber configuration, and the dispatcher's retry/dead-letter logic.

The dispatcher runs against an in-memory transport here; tests/integration/
test_webhooks_http.py does the same over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from streams.adapters.webhooks import (
    ALERT_ID_HEADER,
    ATTEMPT_HEADER,
    SIGNATURE_HEADER,
    DeadDelivery,
    PostResult,
    RetryPolicy,
    Subscriber,
    WebhookDispatcher,
    load_subscribers,
    parse_subscribers,
    sign,
    verify_signature,
)
from streams.customers.detect import Alert, RulesError

REPO = Path(__file__).resolve().parents[3]
SECRET = "whsec_test_0123456789abcdef"
BODY = b'{"alert_id":"a1","rule":"impossible_travel"}'
NOW = 1_760_000_000


def alert(alert_id: str = "a1", rule: str = "impossible_travel", severity: str = "high") -> Alert:
    return {
        "alert_id": alert_id,
        "customer_id": "CRM-1",
        "rule": rule,
        "severity": severity,
        "score": 2.0,
        "summary": "s",
        "event_ids": ["e1"],
        "evidence": {"k": "v"},
        "occurred_at": 1,
        "detected_at": 2,
    }


# --------------------------------------------------------------------------- signatures


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify_signature(SECRET, header, BODY, tolerance_s=300, now_s=NOW + 10)


@pytest.mark.parametrize(
    ("secret", "body", "header_change"),
    [
        ("other-secret", BODY, None),  # wrong secret
        (SECRET, BODY + b" ", None),  # body changed
        (SECRET, BODY.replace(b"a1", b"a2"), None),  # body tampered
        (SECRET, BODY, "digit"),  # signature tampered
        (SECRET, BODY, "time"),  # timestamp changed (signature no longer covers it)
    ],
)
def test_tampering_fails_verification(secret: str, body: bytes, header_change: str | None) -> None:
    header = sign(SECRET, BODY, NOW)
    if header_change == "digit":
        last = header[-1]
        header = header[:-1] + ("0" if last != "0" else "1")
    elif header_change == "time":
        header = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify_signature(secret, header, body, tolerance_s=300, now_s=NOW)


def test_old_and_future_timestamps_fail() -> None:
    header = sign(SECRET, BODY, NOW)
    assert verify_signature(SECRET, header, BODY, tolerance_s=300, now_s=NOW + 300)
    assert not verify_signature(SECRET, header, BODY, tolerance_s=300, now_s=NOW + 301)
    assert not verify_signature(SECRET, header, BODY, tolerance_s=300, now_s=NOW - 301)
    fresh = sign(SECRET, BODY, int(time.time()))
    assert verify_signature(SECRET, fresh, BODY)  # default: now, 5 minutes


@pytest.mark.parametrize(
    "header",
    [
        "",
        None,
        "garbage",
        f"t={NOW}",
        "v1=abc",
        f"t=abc,v1={'0' * 64}",
        f"t={NOW},v1",
        f"t={NOW};v1={'0' * 64}",
    ],
)
def test_malformed_headers_fail(header: str | None) -> None:
    assert not verify_signature(SECRET, header, BODY, now_s=NOW)


def test_rotated_secrets_any_v1_matches() -> None:
    old = sign("old-secret", BODY, NOW).split(",")[1]
    header = f"{sign(SECRET, BODY, NOW)},{old}"
    assert verify_signature(SECRET, header, BODY, now_s=NOW)
    assert verify_signature("old-secret", header, BODY, now_s=NOW)
    assert not verify_signature("", header, BODY, now_s=NOW)


# --------------------------------------------------------------------------- subscribers


ENV = {"FRAUD_SECRET": "s3cr3t-fraud", "CX_SECRET": "s3cr3t-cx"}


def test_subscribers_resolve_secrets_from_the_environment() -> None:
    subs = parse_subscribers(
        [
            {
                "name": "fraud",
                "url": "https://fraud.example.com/hook",
                "secret_env": "FRAUD_SECRET",
                "rules": ["impossible_travel", "velocity_burst"],
                "min_severity": "high",
            },
            {"name": "cx", "url": "http://127.0.0.1:8080/x", "secret_env": "CX_SECRET"},
        ],
        ENV,
    )
    fraud, cx = subs
    assert fraud.secret == "s3cr3t-fraud" and "s3cr3t" not in repr(fraud)
    assert fraud.wants(alert()) and not fraud.wants(alert(rule="high_effort"))
    assert not fraud.wants(alert(severity="medium")) and fraud.wants(alert(severity="critical"))
    assert cx.wants(alert(rule="high_effort", severity="info"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "a", "url": "https://x.example", "secret_env": "MISSING"},
            "subscribers[0] (a).secret_env: environment variable MISSING is not set or empty",
        ),
        (
            {
                "name": "a",
                "url": "https://x.example",
                "secret_env": "CX_SECRET",
                "secret": "inline",
            },
            "subscribers[0] (a).secret: secrets must not be written in the file",
        ),
        (
            {"name": "a", "url": "ftp://x.example", "secret_env": "CX_SECRET"},
            "subscribers[0] (a).url: expected an http(s):// URL",
        ),
        (
            {"name": "a", "url": "https://x.example", "secret_env": "CX_SECRET", "rules": ["nope"]},
            "subscribers[0] (a).rules: unknown rule(s) nope",
        ),
        (
            {
                "name": "a",
                "url": "https://x.example",
                "secret_env": "CX_SECRET",
                "min_severity": "urgent",
            },
            "subscribers[0] (a).min_severity: expected one of",
        ),
        (
            {"name": "a", "url": "https://x.example", "secret_env": "CX_SECRET", "retries": 3},
            "subscribers[0] (a).retries: unknown field",
        ),
        (
            {"url": "https://x.example", "secret_env": "CX_SECRET"},
            "subscribers[0].name: expected a non-empty string",
        ),
    ],
)
def test_bad_subscribers_are_rejected_with_clear_errors(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(RulesError) as err:
        parse_subscribers([entry], ENV)
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_duplicate_names_and_file_loading(tmp_path: Path) -> None:
    entry = {"name": "a", "url": "https://x.example", "secret_env": "CX_SECRET"}
    with pytest.raises(RulesError, match="duplicate subscriber name 'a'"):
        parse_subscribers([entry, entry], ENV)
    assert load_subscribers(REPO / "deploy" / "rules.yaml", {}) == []
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules: {}\nsubscribers:\n  - name: cx\n    url: https://cx.example/hook\n"
        "    secret_env: CX_SECRET\n"
    )
    [cx] = load_subscribers(path, ENV)
    assert cx.secret_env == "CX_SECRET" and cx.secret == "s3cr3t-cx"


# --------------------------------------------------------------------------- retry policy


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=8.0)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # jittered, not constant
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# --------------------------------------------------------------------------- dispatcher


class FakeTransport:
    """Replies from a script: an int is a status, an exception is raised."""

    def __init__(self, script: list[int | BaseException], default: int = 200) -> None:
        self.script = list(script)
        self.default = default
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self.closed = False

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> PostResult:
        self.calls.append((url, body, dict(headers)))
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, BaseException):
            raise step
        return PostResult(step, 0.0 if step == 429 else None)

    async def close(self) -> None:
        self.closed = True


FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.004, timeout_s=1.0)
SUB = Subscriber("hook", "https://hook.example/a", SECRET, "HOOK_SECRET")


async def _run(
    transport: FakeTransport, alerts: list[Alert], **kw: object
) -> tuple[WebhookDispatcher, list[DeadDelivery]]:
    dead: list[DeadDelivery] = []
    dispatcher = WebhookDispatcher([SUB], dead.append, policy=FAST, transport=transport, **kw)  # type: ignore[arg-type]
    await dispatcher.start()
    for a in alerts:
        dispatcher.enqueue(a)
    await asyncio.wait_for(dispatcher.join(), 5)
    await dispatcher.stop()
    return dispatcher, dead


def test_delivery_is_signed_with_idempotency_headers() -> None:
    transport = FakeTransport([])
    dispatcher, dead = asyncio.run(_run(transport, [alert("a1"), alert("a2")]))
    assert dead == [] and dispatcher.stats.delivered == 2 and transport.closed
    for (url, body, headers), expected in zip(transport.calls, ("a1", "a2"), strict=True):
        assert url == SUB.url
        assert orjson.loads(body)["alert_id"] == expected
        assert headers[ALERT_ID_HEADER] == expected and headers[ATTEMPT_HEADER] == "1"
        assert headers["Content-Type"] == "application/json"
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)


def test_5xx_429_and_network_errors_are_retried() -> None:
    transport = FakeTransport([503, 429, ConnectionResetError("reset"), 200])
    dispatcher, dead = asyncio.run(_run(transport, [alert()]))
    assert dead == [] and dispatcher.stats.delivered == 1 and dispatcher.stats.retries == 3
    assert [c[2][ATTEMPT_HEADER] for c in transport.calls] == ["1", "2", "3", "4"]
    assert len({c[1] for c in transport.calls}) == 1  # the same body every time


def test_after_max_attempts_the_delivery_is_dead_lettered() -> None:
    transport = FakeTransport([], default=500)
    dispatcher, dead = asyncio.run(_run(transport, [alert("a9")]))
    [d] = dead
    assert (d.reason, d.attempts, d.last_status, d.alert_id) == ("max_attempts", 4, 500, "a9")
    assert orjson.loads(d.body)["alert_id"] == "a9"
    assert orjson.loads(d.to_json())["alert"]["rule"] == "impossible_travel"
    assert len(transport.calls) == 4 and dispatcher.stats.dead == {"max_attempts": 1}


def test_client_errors_are_not_retried() -> None:
    transport = FakeTransport([410])
    _, dead = asyncio.run(_run(transport, [alert()]))
    assert [(d.reason, d.attempts, d.last_status) for d in dead] == [("rejected", 1, 410)]
    assert len(transport.calls) == 1


def test_full_queue_dead_letters_instead_of_blocking() -> None:
    async def scenario() -> tuple[list[DeadDelivery], int]:
        dead: list[DeadDelivery] = []
        dispatcher = WebhookDispatcher(
            [SUB], dead.append, queue_size=3, policy=FAST, transport=FakeTransport([])
        )
        # Not started: nothing drains the queue, so a blocking enqueue would never return.
        queued = sum(dispatcher.enqueue(alert(f"a{i}")) for i in range(10))
        await dispatcher.start()
        await dispatcher.join()
        await dispatcher.stop()
        return dead, queued

    dead, queued = asyncio.run(scenario())
    assert queued == 3
    assert [d.alert_id for d in dead] == [f"a{i}" for i in range(3, 10)]
    assert {d.reason for d in dead} == {"queue_full"}


def test_stop_dead_letters_whatever_is_left_and_async_sinks_are_awaited() -> None:
    async def scenario() -> list[DeadDelivery]:
        dead: list[DeadDelivery] = []

        async def sink(d: DeadDelivery) -> None:
            await asyncio.sleep(0)
            dead.append(d)

        hang = asyncio.Event()

        class Hanging(FakeTransport):
            async def post(
                self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
            ) -> PostResult:
                await hang.wait()
                return PostResult(200)

        dispatcher = WebhookDispatcher([SUB], sink, policy=FAST, transport=Hanging([]))
        await dispatcher.start()
        for i in range(3):
            dispatcher.enqueue(alert(f"a{i}"))
        await asyncio.sleep(0.05)
        await dispatcher.stop(drain_timeout_s=0.05)
        dispatcher.enqueue(alert("late"))  # after stop: straight to the dead letters
        await dispatcher.join()
        return dead

    dead = asyncio.run(scenario())
    assert sorted(d.alert_id for d in dead) == ["a0", "a1", "a2", "late"]
    assert {d.reason for d in dead} == {"shutdown"}


def test_filters_apply_per_subscriber() -> None:
    fraud = Subscriber("fraud", "https://f.example", SECRET, rules=frozenset({"velocity_burst"}))

    async def scenario() -> tuple[int, int]:
        dispatcher = WebhookDispatcher(
            [SUB, fraud], lambda d: None, policy=FAST, transport=FakeTransport([])
        )
        a = dispatcher.enqueue(alert(rule="velocity_burst"))
        b = dispatcher.enqueue(alert(rule="high_effort"))
        await dispatcher.stop(drain_timeout_s=0)
        return a, b

    assert asyncio.run(scenario()) == (2, 1)
