"""``make bench``: throughput of the pipeline against a ceiling measured in the same run.

Ingest stage: N Avro touchpoints are produced to a fresh raw topic, then

* ceiling: a plain aiokafka consumer + fastavro decode loop over the same topic;
* pipeline: the Faust worker (decode, validate, normalise, dedupe, produce valid
  topic) and the ClickHouse sink, until every row is in ClickHouse.

Prints ``BENCH <stage> events_per_s=... ceiling_events_per_s=... ratio=... peak_rss_mb=...``.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid

import click
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.generator import encode_events, generate, produce
from streams.kafka import consumer_security
from streams.runner import prepare, query, running
from streams.settings import Settings

__all__ = ["run_bench"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _ceiling(settings: Settings, codec: AvroCodec, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=10_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **consumer_security(settings),
    )
    await consumer.start()
    try:
        parts = range(settings.topic_partitions)  # created by prepare() with this count
        consumer.assign([TopicPartition(settings.topics.raw, p) for p in parts])
        await consumer.seek_to_beginning()
        seen = 0
        started = 0.0
        decode = codec.decode
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not started and batches:
                started = time.perf_counter()
            for messages in batches.values():
                for m in messages:
                    decode(m.value)
                seen += len(messages)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def _pipeline(settings: Settings, expected: int) -> float:
    db = settings.clickhouse_database
    async with running(settings) as pipeline:
        started = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if started is None and pipeline.first_batch_at is not None:
                started = pipeline.first_batch_at
            rows = (await query(pipeline, f"SELECT count() FROM {db}.touchpoints"))[0][0]
            if rows >= expected:
                break
            await asyncio.sleep(0.1)
        finished = time.perf_counter()
        if started is None:
            raise RuntimeError("the pipeline processed nothing")
        return int(rows) / (finished - started)


async def run_bench(settings: Settings, *, events: int) -> None:
    run = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={
            "topic_prefix": f"bench{run}.",
            "app_id": f"bench-{run}",
            "clickhouse_database": f"bench_{run}",
        }
    )
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now_ms = int(time.time() * 1000)
    customers = max(1, events // 12)
    t0 = time.perf_counter()
    generated = generate(customers, seed=1, now_ms=now_ms)
    pairs = encode_events(generated, codec, seed=1)
    click.echo(
        f"generated {len(pairs):,} events for {customers:,} customers "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    prepare(settings)
    t0 = time.perf_counter()
    await produce(settings, pairs)
    click.echo(f"produced in {time.perf_counter() - t0:.1f}s")
    n = len(pairs)

    ceiling = await _ceiling(settings, codec, n)
    click.echo(f"ceiling (aiokafka consumer + fastavro decode): {ceiling:,.0f} events/s")
    rate = await _pipeline(settings, n)
    click.echo(f"pipeline (Faust ingest -> valid topic -> ClickHouse sink): {rate:,.0f} events/s")
    click.echo(
        f"BENCH ingest events_per_s={rate:.0f} ceiling_events_per_s={ceiling:.0f} "
        f"ratio={rate / ceiling:.3f} peak_rss_mb={_peak_rss_mb():.0f}"
    )
