"""A message the ClickHouse sink cannot read, on any topic it consumes, is dead-lettered with its
original bytes and the sink keeps going (before: the exception ended the sink service), on the
real broker and the embedded ClickHouse."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from streams.adapters.sink import UNREADABLE_OUTPUT
from streams.settings import Settings
from tests.integration.harness import observers, wait_until

pytestmark = pytest.mark.integration


def test_unreadable_output_messages_are_dead_lettered_and_the_sink_goes_on(
    settings: Settings,
) -> None:
    asyncio.run(_scenario(settings))


async def _scenario(settings: Settings) -> None:
    topics = settings.topics
    garbage = [
        (topics.resolved, b"\x00\x01not an envelope"),
        (topics.identity_changes, b"{truncated"),
        (topics.aggregates, b"[1,2"),
        (topics.alerts, b"\x00\x00\x00\x00\x07\xff\xff"),
    ]
    async with observers(settings) as (sink, probe):
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            sent = [await (await producer.send(t, v, key=b"k")) for t, v in garbage]
        finally:
            await producer.stop()
        positions = {(m.topic, m.partition, m.offset) for m in sent}

        async def all_dead_lettered() -> bool:
            n = await sink.scalar(
                f"SELECT count() FROM {{db}}.dead_letters WHERE reason = '{UNREADABLE_OUTPUT}'"
            )
            return bool(n >= len(garbage))

        assert await wait_until(all_dead_lettered, timeout=60), "not all dead-lettered"
        rows = await sink.rows(
            "SELECT source_topic, source_partition, source_offset, hex(original), detail "
            f"FROM {{db}}.dead_letters FINAL WHERE reason = '{UNREADABLE_OUTPUT}'"
        )
        assert {(t, p, o) for t, p, o, _, _ in rows} == positions
        assert {t: orig for t, _, _, orig, _ in rows} == {t: v.hex().upper() for t, v in garbage}
        assert all(detail for *_, detail in rows)
        assert not sink.service.should_stop and sink.service.healthy
        consumed = sorted({t for t, _ in garbage} | {topics.dead_letter})

        async def caught_up() -> bool:
            return not await probe.lag(settings.sink_group_id, consumed)

        assert await wait_until(caught_up, timeout=60), "sink offsets did not reach the end"
