"""The walking skeleton end to end: real Kafka, the Faust worker, the embedded ClickHouse."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.adapters.clickhouse import ClickHouse, connect
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.samples import bad_samples, valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import parse_dead_letter_headers
from tests.integration.harness import landed_ids, produce_raw, read_topic

pytestmark = pytest.mark.integration


def _codec(settings: Settings) -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)


def _records(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` valid events with ids ``<prefix>0``, ``<prefix>1``, ..."""
    now = int(time.time() * 1000)
    return [valid_template(now, f"{prefix}{i}") for i in range(n)]


async def _prepare_with(settings: Settings, records: list[dict[str, Any]]) -> None:
    """Fresh topics and tables, then ``records`` on the raw topic under keys k0, k1, ..."""
    prepare(settings)
    codec = _codec(settings)
    await produce_raw(
        settings, [(f"k{i}".encode(), codec.encode(r)) for i, r in enumerate(records)]
    )


def test_good_events_land_in_clickhouse_and_every_bad_input_in_the_dlq(settings: Settings) -> None:
    codec = _codec(settings)
    now = int(time.time() * 1000)
    events = generate(40, seed=11, now_ms=now)
    good = encode_events(events, codec, old_schema_fraction=0.2, seed=11)
    bad = bad_samples(codec, now, duplicate_of=dict(events[0].record), duplicate_key=events[0].key)
    # interleave: every bad message sits between good ones
    traffic: list[tuple[bytes, bytes]] = []
    step = max(1, len(good) // len(bad))
    for i, sample in enumerate(bad):
        traffic.extend(good[i * step : (i + 1) * step])
        traffic.append((sample.key, sample.value))
    traffic.extend(good[len(bad) * step :])
    good_ids = {e.record["event_id"] for e in events}
    db = settings.clickhouse_database

    async def scenario() -> None:
        prepare(settings)
        await produce_raw(settings, traffic)
        async with running(settings) as pipeline:
            assert await landed_ids(pipeline, db, len(good_ids)) == good_ids
            dead = await wait_for(pipeline, f"SELECT count() FROM {db}.dead_letters", len(bad))
            assert dead == len(bad)
            reasons = await query(
                pipeline, f"SELECT reason, original FROM {db}.dead_letters ORDER BY source_offset"
            )
            assert sorted(r for r, _ in reasons) == sorted(s.reason for s in bad)
        dlq = await read_topic(settings, settings.topics.dead_letter, len(bad))
        by_value = {m.value: m for m in dlq}
        assert len(dlq) == len(bad)
        for sample in bad:
            message = by_value[sample.value]
            assert message.key == sample.key
            assert message.value == sample.value, sample.name  # original bytes, untouched
            meta = parse_dead_letter_headers(message.headers)
            assert meta["dlq.reason"] == sample.reason, sample.name
            assert meta["dlq.source.topic"] == settings.topics.raw
            assert int(meta["dlq.source.offset"]) >= 0 and meta["dlq.detail"]

    asyncio.run(scenario())


class _FailingClient:
    """A real ClickHouse client whose inserts fail while ``broken`` is set."""

    def __init__(self, inner: ClickHouse) -> None:
        self.inner = inner
        self.broken = True
        self.attempts = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if "schema_migrations" not in str(args[0]):
            self.attempts += 1
            if self.broken:
                raise ConnectionError("ClickHouse is down (test)")
        return self.inner.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _committed(settings: Settings) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(settings.sink_group_id).get(settings.sink_group_id, {})
        return {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if meta.offset >= 0
        }
    finally:
        admin.close()


def _end_offsets(settings: Settings, topic: str) -> dict[tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        ends = consumer.end_offsets(parts)
        return {(tp.topic, tp.partition): off for tp, off in ends.items() if off > 0}
    finally:
        consumer.close()


def _valid_committed(settings: Settings) -> dict[tuple[str, int], int]:
    return {k: v for k, v in _committed(settings).items() if k[0] == settings.topics.resolved}


def test_offsets_are_committed_only_after_clickhouse_accepts_the_batch(settings: Settings) -> None:
    records = _records("c", 50)
    db = settings.clickhouse_database

    async def scenario() -> None:
        await _prepare_with(settings, records)
        failing: list[_FailingClient] = []

        def broken_factory() -> ClickHouse:
            client = _FailingClient(connect(settings))
            failing.append(client)
            return client  # type: ignore[return-value]

        async with running(settings, clickhouse_factory=broken_factory) as pipeline:
            deadline = time.monotonic() + 30
            while (not failing or failing[0].attempts < 2) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert failing and failing[0].attempts >= 2, "the sink never tried to insert"
            assert not any(t == settings.topics.resolved for t, _ in _committed(settings))
            assert await query(pipeline, f"SELECT count() FROM {db}.touchpoints") == [(0,)]
            failing[0].broken = False  # ClickHouse comes back: the same batch now lands
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", 50) == 50
        ends = _end_offsets(settings, settings.topics.resolved)
        assert ends and _valid_committed(settings) == ends

    asyncio.run(scenario())


def test_replayed_output_creates_no_duplicates(settings: Settings) -> None:
    """A crash after insert but before commit replays the batch: still one row per event."""
    records = _records("r", 30)
    db = settings.clickhouse_database

    async def scenario() -> None:
        await _prepare_with(settings, records)
        async with running(settings) as pipeline:
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", 30) == 30
        # Forget the sink's committed offsets: the next run re-reads and re-inserts everything.
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        try:
            admin.delete_groups([settings.sink_group_id])
        finally:
            admin.close()
        assert _committed(settings) == {}
        async with running(settings) as pipeline:
            deadline = time.monotonic() + 30
            ends = _end_offsets(settings, settings.topics.resolved)
            while time.monotonic() < deadline and _valid_committed(settings) != ends:
                await asyncio.sleep(0.3)
            assert ends and _valid_committed(settings) == ends, "the sink did not re-read the topic"
            rows = await query(
                pipeline, f"SELECT count(), uniqExact(event_id) FROM {db}.touchpoints_v"
            )
            assert rows == [(30, 30)]

    asyncio.run(scenario())


def test_dedupe_state_survives_a_restart(settings: Settings) -> None:
    codec = _codec(settings)
    first = _records("d", 20)
    db = settings.clickhouse_database

    async def scenario() -> None:
        prepare(settings)
        await produce_raw(settings, [(b"same-key", codec.encode(r)) for r in first])
        async with running(settings) as pipeline:
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", 20) == 20
        # new worker process state: the dedupe table comes back from its changelog
        await produce_raw(settings, [(b"same-key", codec.encode(r)) for r in first[:5]])
        async with running(settings) as pipeline:
            dups = await wait_for(
                pipeline,
                f"SELECT count() FROM {db}.dead_letters WHERE reason = 'duplicate_event_id'",
                5,
            )
            assert dups == 5
            assert await query(pipeline, f"SELECT count() FROM {db}.touchpoints") == [(20,)]

    asyncio.run(scenario())


def test_dead_letters_replay_byte_for_byte_after_a_fix(settings: Settings) -> None:
    """Rejected under a too-strict limit; after the limit is fixed, a replay ingests them."""
    from streams.ops.dlq_tools import replay_dead_letters

    records = _records("big", 5)
    for r in records:
        r["properties"] = {"note": "z" * 800}
    strict = settings.model_copy(update={"max_message_bytes": 512})
    db = settings.clickhouse_database

    async def scenario() -> None:
        await _prepare_with(strict, records)
        async with running(strict) as pipeline:
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.dead_letters", 5) == 5
            reasons = await query(pipeline, f"SELECT DISTINCT reason FROM {db}.dead_letters")
            assert reasons == [("oversize_message",)]
        sent, skipped = await replay_dead_letters(
            settings, reasons={"oversize_message"}, dry_run=False
        )
        assert (sent, skipped) == (5, 0)
        again, _ = await replay_dead_letters(settings, reasons=set(), dry_run=True)
        assert again == 0, "a replay consumer group replays each dead letter once"
        async with running(settings) as pipeline:  # fixed: default 64 KiB limit
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", 5) == 5
            ids = {r[0] for r in await query(pipeline, f"SELECT event_id FROM {db}.touchpoints")}
            assert ids == {r["event_id"] for r in records}

    asyncio.run(scenario())
