"""A message no stage can process, written to an internal topic (a foreign writer, a bug), no
longer stops its stage for good: after ``POISON_ATTEMPTS`` failed tries its batch is taken
apart, the poisoned message is dead-lettered with its original bytes and the stage goes on.
Real broker, in-process worker and sink, embedded ClickHouse."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition

from streams.runtime.protocol import INTERNAL_ERROR
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import parse_dead_letter_headers
from streams.wire.envelope import pack

pytestmark = pytest.mark.integration


def _poison(settings: Settings) -> list[tuple[str, bytes]]:
    t = settings.topics
    return [
        (t.checked, b"\x00garbage frame"),
        (t.valid, pack([{"a": "email:x@example.com"}])),  # no record
        (t.valid, b"not json at all"),
        (t.identity_ops, pack([{"no": "tag"}])),
        (t.resolved, pack([{"t": "e", "c": "c1"}])),  # an event item without its record
    ]


async def _dead_letters(settings: Settings) -> list[dict[str, str | bytes]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topic = settings.topics.dead_letter
        parts = [AioTopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out_by_tp: dict[int, list[dict[str, str | bytes]]] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(len(m) for m in out_by_tp.values()) < sum(
            ends.values()
        ):
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                out_by_tp.setdefault(tp.partition, []).extend(
                    {**parse_dead_letter_headers(m.headers), "value": m.value or b""}
                    for m in messages
                )
        return [d for ds in out_by_tp.values() for d in ds]
    finally:
        await consumer.stop()


def test_poisoned_internal_messages_are_dead_lettered_and_every_stage_goes_on(
    settings: Settings,
) -> None:
    now = int(time.time() * 1000)
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    records = []
    for i in range(40):
        record = valid_template(now, f"good-{i}")
        record["identifiers"] = {"email": f"person{i % 10}@example.com"}
        records.append(record)
    poison = _poison(settings)
    db = settings.clickhouse_database

    async def scenario() -> tuple[int, list[dict[str, str | bytes]], set[str]]:
        prepare(settings)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            for topic, value in poison:  # ahead of the good events on every partition
                for partition in range(settings.topic_partitions):
                    await producer.send_and_wait(topic, value, partition=partition)
            for r in records:
                await producer.send_and_wait(
                    settings.topics.raw, codec.encode(r), key=r["event_id"].encode()
                )
        finally:
            await producer.stop()
        async with running(settings) as pipeline:
            landed = await wait_for(
                pipeline, f"SELECT count() FROM {db}.touchpoints_v", len(records), timeout=150
            )
            await wait_for(
                pipeline,
                f"SELECT count() FROM {db}.dead_letters WHERE reason = '{INTERNAL_ERROR}'",
                len(poison) * settings.topic_partitions,
                timeout=60,
            )
            rows = await query(pipeline, f"SELECT count() FROM {db}.touchpoints_v")
            assert rows[0][0] == landed
            failing = set(pipeline.failing)
        return landed, await _dead_letters(settings), failing

    landed, dead, failing = asyncio.run(scenario())
    assert landed == len(records), "good events behind the poisoned ones did not land"
    assert failing == set(), f"stages still failing: {failing}"
    internal = [d for d in dead if d.get("dlq.reason") == INTERNAL_ERROR]
    got = sorted((str(d["dlq.source.topic"]), bytes(d["value"])) for d in internal)  # type: ignore[arg-type]
    want = sorted((t, v) for t, v in poison for _ in range(settings.topic_partitions))
    assert got == want
    assert all("stage:" in str(d["dlq.detail"]) for d in internal)
