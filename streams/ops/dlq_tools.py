"""Operating the dead-letter topic: look at it, and replay it after a fix."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.adapters.kafka import consumer_security
from streams.settings import Settings
from streams.wire.dlq import SOURCE_TOPIC, TRUNCATED, parse_dead_letter_headers

__all__ = ["replay_dead_letters", "show_dead_letters"]


async def show_dead_letters(settings: Settings, *, limit: int) -> list[str]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **consumer_security(settings),
    )
    await consumer.start()
    try:
        topic = settings.topics.dead_letter
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(0, ends[tp] - limit))
        lines: list[tuple[int, str]] = []
        remaining = {tp for tp in parts if ends[tp] > 0}
        deadline = time.monotonic() + 10
        while remaining and time.monotonic() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                for m in messages:
                    meta = parse_dead_letter_headers(m.headers)
                    lines.append(
                        (
                            m.timestamp,
                            f"{meta.get('dlq.source.topic')}[{meta.get('dlq.source.partition')}]"
                            f"@{meta.get('dlq.source.offset')} {meta.get('dlq.reason')}: "
                            f"{meta.get('dlq.detail')} ({len(m.value or b'')} bytes)",
                        )
                    )
                    if m.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        return [text for _, text in sorted(lines)[-limit:]]
    finally:
        await consumer.stop()


async def replay_dead_letters(
    settings: Settings, *, reasons: set[str], dry_run: bool
) -> tuple[int, int]:
    """Send dead letters back to their source topic; commits so each is replayed once."""
    consumer = AIOKafkaConsumer(
        settings.topics.dead_letter,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.app_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_security(settings),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        **consumer_security(settings),
    )
    await consumer.start()
    await producer.start()
    sent = skipped = 0
    try:
        idle = 0
        while idle < 3:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batches:
                idle += 1
                continue
            idle = 0
            futures = []
            for messages in batches.values():
                for m in messages:
                    meta = parse_dead_letter_headers(m.headers)
                    if reasons and meta.get("dlq.reason") not in reasons:
                        skipped += 1
                        continue
                    if meta.get(TRUNCATED) == "true":  # not the original bytes: cannot replay
                        skipped += 1
                        continue
                    sent += 1
                    if not dry_run:
                        target = meta.get(SOURCE_TOPIC, settings.topics.raw)
                        futures.append(await producer.send(target, m.value, key=m.key))
            for future in futures:
                await future
            if not dry_run:
                await consumer.commit()
        return sent, skipped
    finally:
        await producer.stop()
        await consumer.stop()
