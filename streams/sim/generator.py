"""Synthetic multi-channel customer journeys, encoded and produced to the raw topic.

``generate`` builds realistic touchpoints for a population of people: anonymous web
browsing that later logs in (the linking event carries the cookie *and* the account,
after the events it links), the same person on a phone app and a laptop, failed
checkouts followed within the hour by contact-centre calls or chats and surveys, social
mentions and direct messages (some revealing an email), purchases with payments
(occasionally declined), password resets and push opens. Every event passes
``streams.ingest.stage`` validation; each carries the ground-truth index of its person so
identity stitching can be tested. The same seed gives the same events.

``encode_events`` turns them into Confluent-Avro ``(key, value)`` pairs (optionally a
fraction on the v1 schema) and ``produce`` writes them to Kafka with aiokafka.

Channel mix (share of events): web ~45%, mobile ~30%, contact centre ~12%, social ~8%,
commerce (``CommerceEvent`` payloads: orders, payments, refunds, on the channel where
they happened) ~5%.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, cast

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streams.adapters.kafka import consumer_security
from streams.settings import Settings
from streams.sim.journeys.build import Journeys
from streams.sim.journeys.model import CATEGORY_TARGETS, TRAP_NAMES, GeneratedEvent, Traps, category
from streams.wire.codec import Encoder

__all__ = [
    "CATEGORY_TARGETS",
    "TRAP_NAMES",
    "GeneratedEvent",
    "Traps",
    "category",
    "encode_events",
    "generate",
    "produce",
]

log = logging.getLogger(__name__)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for a while.

    Generating and encoding allocate millions of small dicts and tuples and create no
    reference cycles, so the collector would only re-scan live objects over and over
    (a quarter to a third of the run time); it resumes as it was afterwards.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def generate(
    customers: int,
    *,
    seed: int = 7,
    now_ms: int,
    span_ms: int = 2 * 3600 * 1000,
    events_per_customer: float = 12.0,
    traps: Traps | None = None,
) -> list[GeneratedEvent]:
    """Synthetic journeys of ``customers`` people, sorted by ``occurred_at``.

    Every event lies in ``[now_ms - span_ms, now_ms]``; the same arguments always give
    the same events (ids included). ``events_per_customer`` is the mean per person.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if span_ms <= 0:
        raise ValueError("span_ms must be > 0")
    if not events_per_customer > 0:
        raise ValueError("events_per_customer must be > 0")
    journeys = Journeys(random.Random(seed), customers, now_ms, span_ms, events_per_customer, traps)
    with _gc_paused():
        return journeys.build()


def encode_events(
    events: Sequence[GeneratedEvent],
    codec: Encoder,
    old_schema_fraction: float = 0.0,
    seed: int = 7,
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs in the Confluent wire format.

    About ``old_schema_fraction`` of the events (chosen with ``seed``) are written with
    schema id 1, the v1 schema without ``consent``, as a producer not yet upgraded would.
    """
    if not 0.0 <= old_schema_fraction <= 1.0:
        raise ValueError("old_schema_fraction must be within [0, 1]")
    encode = codec.encode
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    with _gc_paused():
        if old_schema_fraction <= 0.0:
            for ev in events:
                append((ev.key, encode(cast(dict[str, Any], ev.record))))
            return out
        rnd = random.Random(seed).random
        for ev in events:
            if rnd() < old_schema_fraction:
                v1 = {k: v for k, v in ev.record.items() if k != "consent"}
                append((ev.key, encode(v1, 1)))
            else:
                append((ev.key, encode(cast(dict[str, Any], ev.record))))
    return out


_WINDOW: Final = 50_000  # records in flight before waiting for deliveries


async def produce(
    settings: Settings,
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``pairs`` to ``topic`` (default: the raw topic); return how many were delivered.

    Messages are batched per partition (the same partition the Java client's default
    partitioner picks for the key) and submitted as whole batches, which is what lets a
    single Python process go well past 50k messages/s. ``rate`` paces the sending at that
    many messages per second (``None``: as fast as possible). Every delivery is awaited
    before returning; failed ones are logged and not counted. ``progress`` is called
    with the number delivered so far after each chunk of deliveries.
    """
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0")
    if not pairs:
        return 0
    topic = topic or settings.topics.raw
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.app_id}-generator",
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        max_batch_size=512 * 1024,
        **consumer_security(settings),
    )
    batches = _Batches(producer, topic, progress)
    try:
        await producer.start()
        partitions = sorted(await producer.partitions_for(topic))
        n_partitions = len(partitions)
        partition_of: dict[bytes, int] = {}
        # Paced: every tick (1/20 s of messages) the open batches go out, then we wait.
        tick = max(1, int(rate / 20)) if rate is not None else 0
        start = time.monotonic()
        for i, (key, value) in enumerate(pairs):
            if tick and i and i % tick == 0:
                await batches.submit_all()
                batches.reap()
                delay = start + i / cast(float, rate) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            partition = partition_of.get(key, -1)
            if partition < 0:
                partition = partitions[(murmur2(key) & 0x7FFFFFFF) % n_partitions]
                partition_of[key] = partition
            if not batches.add(partition, key, value):
                await batches.submit(partition)
                if not batches.add(partition, key, value):
                    raise ValueError(f"message {i} ({len(value)} bytes) exceeds max_batch_size")
                if batches.in_flight_records >= _WINDOW:
                    await batches.settle(_WINDOW // 2)
                else:
                    batches.reap()
        await batches.submit_all()
        await batches.settle(0)
    finally:
        await producer.stop()
    if batches.failed:
        log.error(
            "%d of %d messages were not delivered: %r",
            batches.failed,
            len(pairs),
            batches.first_error,
        )
    return batches.delivered


class _Batches:
    """``produce``'s open record batches, one per partition, and its deliveries in flight."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, progress: Callable[[int], None] | None
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.progress = progress
        self.builders: dict[int, Any] = {}
        self.in_flight: deque[tuple[asyncio.Future[Any], int]] = deque()
        self.in_flight_records = 0
        self.delivered = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def add(self, partition: int, key: bytes, value: bytes) -> bool:
        """Append to the partition's open batch; False when it is full."""
        builder = self.builders.get(partition)
        if builder is None:
            builder = self.builders[partition] = self.producer.create_batch()
        return builder.append(key=key, value=value, timestamp=None) is not None

    async def submit(self, partition: int) -> None:
        builder = self.builders.pop(partition)
        builder.close()
        count = builder.record_count()
        future = await self.producer.send_batch(builder, self.topic, partition=partition)
        self.in_flight.append((future, count))
        self.in_flight_records += count

    async def submit_all(self) -> None:
        for partition in list(self.builders):
            await self.submit(partition)

    def account(self, future: asyncio.Future[Any], count: int) -> None:
        exc = future.exception()
        if exc is None:
            self.delivered += count
        else:
            self.failed += count
            self.first_error = self.first_error or exc

    async def settle(self, down_to: int) -> None:
        """Await the oldest batches until at most ``down_to`` records are in flight."""
        while self.in_flight and self.in_flight_records > down_to:
            future, count = self.in_flight.popleft()
            self.in_flight_records -= count
            await asyncio.wait([future])
            self.account(future, count)
        if self.progress is not None:
            self.progress(self.delivered)

    def reap(self) -> None:
        """Count the batches already acknowledged, without waiting."""
        reaped = False
        while self.in_flight and self.in_flight[0][0].done():
            future, count = self.in_flight.popleft()
            self.in_flight_records -= count
            self.account(future, count)
            reaped = True
        if reaped and self.progress is not None:
            self.progress(self.delivered)
