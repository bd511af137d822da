"""Alerts to webhook subscribers: signed JSON, bounded queues, retries, dead letters.

Subscribers are configured in the rules file (``deploy/rules.yaml``)::

    subscribers:
      - name: fraud-desk
        url: https://fraud.example.com/hooks/touchpoints
        secret_env: TOUCHPOINTS_WEBHOOK_FRAUD_DESK_SECRET   # the variable's NAME
        rules: [impossible_travel, velocity_burst]          # optional filter
        min_severity: high                                   # optional filter

Secrets never appear in the file: ``secret_env`` names an environment variable and
:func:`load_subscribers` takes the environment mapping from the settings.

Each delivery is an HTTP ``POST`` of the alert as JSON with headers::

    Content-Type: application/json
    X-Touchpoints-Alert-Id: <alert id>          (idempotency key: the same on replays)
    X-Touchpoints-Delivery-Attempt: <n>
    X-Touchpoints-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver checks the signature with :func:`verify_signature` (or the same three lines
in any language: split the header, recompute the HMAC over ``"<t>." + raw body``,
compare in constant time, and reject timestamps older than a tolerance to stop
replays), then de-duplicates on the alert id.

:class:`WebhookDispatcher` never blocks the stream: :meth:`~WebhookDispatcher.enqueue`
is synchronous and non-blocking; each subscriber has its own bounded queue and worker.
Network errors, timeouts, 5xx, 408 and 429 are retried with exponential backoff and
jitter; after ``max_attempts`` (or a 4xx rejection, or a full queue, or shutdown) the
delivery goes to the dead-letter callback with a reason: never lost, never blocking.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

import aiohttp
import orjson

from streams.adapters.webhook_subscribers import (
    Subscriber,
    load_subscribers,
    parse_subscribers,
    sign,
    verify_signature,
)
from streams.customers.detect import Alert

__all__ = [
    "ALERT_ID_HEADER",
    "ATTEMPT_HEADER",
    "SIGNATURE_HEADER",
    "AiohttpTransport",
    "DeadDelivery",
    "DeadReason",
    "DispatchStats",
    "PostResult",
    "RetryPolicy",
    "Subscriber",
    "Transport",
    "WebhookDispatcher",
    "load_subscribers",
    "parse_subscribers",
    "sign",
    "verify_signature",
]


log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Touchpoints-Signature"
ALERT_ID_HEADER: Final = "X-Touchpoints-Alert-Id"
ATTEMPT_HEADER: Final = "X-Touchpoints-Delivery-Attempt"
_USER_AGENT: Final = "touchpoints-webhooks/1"

# --------------------------------------------------------------------------- transport


@dataclass(frozen=True, slots=True)
class PostResult:
    status: int
    retry_after_s: float | None = None


class Transport(Protocol):
    """How a delivery reaches the network (swappable in tests)."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> PostResult: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """aiohttp client session, created on first use (never at import time)."""

    def __init__(self, limit_per_host: int = 8) -> None:
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> PostResult:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit_per_host=self._limit_per_host)
            self._session = aiohttp.ClientSession(connector=connector)
        async with self._session.post(
            url,
            data=body,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            await response.read()
            return PostResult(response.status, _retry_after(response.headers.get("Retry-After")))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None


# --------------------------------------------------------------------------- dispatcher


class DeadReason(StrEnum):
    QUEUE_FULL = "queue_full"  # the subscriber's queue was full when the alert came
    MAX_ATTEMPTS = "max_attempts"  # retried max_attempts times without success
    REJECTED = "rejected"  # a 4xx (other than 408/429) or a redirect: retrying won't help
    SHUTDOWN = "shutdown"  # still queued or in flight when the dispatcher stopped (an
    # in-flight one may have reached the receiver too: delivery is at least once)


@dataclass(frozen=True, slots=True)
class DeadDelivery:
    """A delivery that did not reach its subscriber; enough to redeliver it later."""

    subscriber: str
    url: str
    alert_id: str
    rule: str
    body: bytes  # the exact JSON that would have been signed and sent
    reason: DeadReason
    attempts: int
    last_status: int | None
    last_error: str | None
    failed_at_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "subscriber": self.subscriber,
                "url": self.url,
                "alert_id": self.alert_id,
                "rule": self.rule,
                "reason": self.reason.value,
                "attempts": self.attempts,
                "last_status": self.last_status,
                "last_error": self.last_error,
                "failed_at": self.failed_at_ms,
                "alert": orjson.Fragment(self.body),
            }
        )


_BULK_REASONS: Final = frozenset({DeadReason.QUEUE_FULL, DeadReason.SHUTDOWN})

DeadLetterSink = Callable[[DeadDelivery], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before retry ``attempt + 1``: exponential, capped, "equal jitter"."""
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return cap / 2 + rng.random() * cap / 2


@dataclass(slots=True)
class DispatchStats:
    enqueued: int = 0
    filtered: int = 0
    delivered: int = 0
    retries: int = 0
    dead: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Pending:
    alert_id: str
    rule: str
    body: bytes


_RETRYABLE: Final = frozenset({408, 425, 429})


class WebhookDispatcher:
    """Delivers alerts to subscribers in the background; see the module docstring.

    Lifecycle: ``await start()``, then ``enqueue(alert)`` from the stream (sync, never
    blocks), ``await stop()`` on shutdown (drains for a while, dead-letters the rest).
    """

    def __init__(
        self,
        subscribers: Sequence[Subscriber],
        dead_letter: DeadLetterSink,
        *,
        queue_size: int = 1000,
        policy: RetryPolicy | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.subscribers = tuple(subscribers)
        self.policy = policy or RetryPolicy()
        self.stats = DispatchStats()
        self._dead_letter = dead_letter
        self._queue_size = queue_size
        self._transport: Transport = transport or AiohttpTransport()
        self._clock = clock
        self._rng = rng or random.Random()  # jitter only, not security
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._stopped = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for sub in self.subscribers:
            queue = self._queue(sub)
            task = asyncio.create_task(self._work(sub, queue), name=f"webhook:{sub.name}")
            self._workers.append(task)

    async def join(self) -> None:
        """Wait until every queued delivery has been delivered or dead-lettered."""
        for queue in self._queues.values():
            await queue.join()
        await self._flush_background()

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Let queues drain for up to ``drain_timeout_s``, then dead-letter what is left."""
        self._stopped = True
        if self._workers:
            try:
                await asyncio.wait_for(self._drain(), drain_timeout_s)
            except TimeoutError:
                pass
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        for sub in self.subscribers:
            queue = self._queues.get(sub.name)
            while queue is not None and not queue.empty():
                item = queue.get_nowait()
                queue.task_done()
                self._dead(sub, item, DeadReason.SHUTDOWN, 0, None, "dispatcher stopped")
        await self._flush_background()
        await self._transport.close()

    async def _drain(self) -> None:
        for queue in self._queues.values():
            await queue.join()

    async def _flush_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ---------------------------------------------------------------- stream side

    def enqueue(self, alert: Alert) -> int:
        """Queue ``alert`` for every subscriber that wants it; returns how many queued.

        Synchronous and O(subscribers): a full queue dead-letters (``queue_full``)
        instead of waiting.
        """
        body: bytes | None = None
        queued = 0
        for sub in self.subscribers:
            if not sub.wants(alert):
                self.stats.filtered += 1
                continue
            if body is None:
                body = orjson.dumps(alert)
            item = _Pending(alert["alert_id"], alert["rule"], body)
            if self._stopped:
                self._dead(sub, item, DeadReason.SHUTDOWN, 0, None, "dispatcher stopped")
                continue
            try:
                self._queue(sub).put_nowait(item)
            except asyncio.QueueFull:
                self._dead(
                    sub, item, DeadReason.QUEUE_FULL, 0, None, f"queue of {self._queue_size} full"
                )
                continue
            self.stats.enqueued += 1
            queued += 1
        return queued

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    # ---------------------------------------------------------------- delivery

    def _queue(self, sub: Subscriber) -> asyncio.Queue[_Pending]:
        queue = self._queues.get(sub.name)
        if queue is None:
            queue = self._queues[sub.name] = asyncio.Queue(self._queue_size)
        return queue

    async def _work(self, sub: Subscriber, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._deliver(sub, item)
            except asyncio.CancelledError:
                self._dead(sub, item, DeadReason.SHUTDOWN, 0, None, "dispatcher stopped")
                raise
            except Exception as exc:  # noqa: BLE001 - a bug here must not lose the alert
                log.exception("webhook %s: unexpected error delivering %s", sub.name, item.alert_id)
                self._dead(sub, item, DeadReason.MAX_ATTEMPTS, 0, None, f"internal: {exc!r}")
            finally:
                queue.task_done()

    async def _deliver(self, sub: Subscriber, item: _Pending) -> None:
        policy = self.policy
        status: int | None = None
        error: str | None = None
        for attempt in range(1, policy.max_attempts + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": _USER_AGENT,
                ALERT_ID_HEADER: item.alert_id,
                ATTEMPT_HEADER: str(attempt),
                SIGNATURE_HEADER: sign(sub.secret, item.body, timestamp),
            }
            retry_after: float | None = None
            try:
                result = await self._transport.post(sub.url, item.body, headers, policy.timeout_s)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            else:
                status, error, retry_after = result.status, None, result.retry_after_s
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    return
                if status not in _RETRYABLE and status < 500:
                    self._dead(sub, item, DeadReason.REJECTED, attempt, status, f"HTTP {status}")
                    return
                error = f"HTTP {status}"
            if attempt < policy.max_attempts:
                self.stats.retries += 1
                delay = policy.delay(attempt, self._rng)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), policy.max_delay_s)
                log.info(
                    "webhook %s: %s for %s (attempt %d), retrying in %.2fs",
                    sub.name,
                    error,
                    item.alert_id,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
        self._dead(sub, item, DeadReason.MAX_ATTEMPTS, policy.max_attempts, status, error)

    def _dead(
        self,
        sub: Subscriber,
        item: _Pending,
        reason: DeadReason,
        attempts: int,
        status: int | None,
        error: str | None,
    ) -> None:
        dead = DeadDelivery(
            subscriber=sub.name,
            url=sub.url,
            alert_id=item.alert_id,
            rule=item.rule,
            body=item.body,
            reason=reason,
            attempts=attempts,
            last_status=status,
            last_error=error,
            failed_at_ms=int(self._clock() * 1000),
        )
        self.stats.dead[reason.value] += 1
        # A full queue or a shutdown can dead-letter thousands at once: keep those quiet.
        level = logging.INFO if reason in _BULK_REASONS else logging.WARNING
        log.log(
            level,
            "webhook %s: dead-lettered alert %s (%s after %d attempts: %s)",
            sub.name,
            item.alert_id,
            reason.value,
            attempts,
            error,
        )
        try:
            result = self._dead_letter(dead)
        except Exception:  # noqa: BLE001 - keep the body in the log rather than lose it
            log.exception("dead-letter sink failed; delivery was %s", dead.to_json().decode())
            return
        if inspect.isawaitable(result):
            future = asyncio.ensure_future(result)
            self._background.add(future)
            future.add_done_callback(self._background_done(dead))

    def _background_done(self, dead: DeadDelivery) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            self._background.discard(future)
            if not future.cancelled() and future.exception() is not None:
                log.error(
                    "dead-letter sink failed (%r); delivery was %s",
                    future.exception(),
                    dead.to_json().decode(),
                )

        return done
