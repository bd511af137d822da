"""``make bench``: each stage's throughput against a ceiling measured in the same run.

One process, one worker, a real broker, the embedded ClickHouse:

1. N generated touchpoints are produced to a fresh raw topic.
2. Ceilings, on the same data: a plain aiokafka consumer + fastavro decode loop (ingest);
   the pure identity step over the normalised records (identity); the pure aggregates
   step (aggregates); the pure detectors (alerts). No Kafka bookkeeping, no state I/O.
3. The pipeline (all agents + sink) consumes the backlog; a stage's rate is N divided by
   the time from the first ingest batch until that stage has processed all N.
4. Alert latency: a steady stream of fresh events at ``--latency-rate`` events/s; each
   alert's latency is its arrival on the alerts topic minus the produce time of the
   newest event that triggered it.
5. Identity memory: the identity state of 100,000 synthetic customers (3.1 identifiers
   each) built by the pure protocol and held as the worker's in-memory table holds it;
   resident bytes per identifier, and MiB per million customers (the last line).

Prints one line per stage: ``BENCH <stage> events_per_s=... ceiling_events_per_s=...
ratio=... peak_rss_mb=...`` (+ ``clickhouse_rows_per_s`` for aggregates), and
``BENCH alert_latency p50_ms=... p99_ms=... at_events_per_s=...`` and
``BENCH identity_memory ...``.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import metrics
from streams.adapters.kafka import consumer_security
from streams.customers.aggregates import AggregatorState
from streams.customers.detect import Detector, Profile
from streams.identity.graph import IdentityNode, IdentityRules, JsonState, LinkOp, ops_for_event
from streams.ingest.stage import Accepted, IngestPolicy, ingest_message
from streams.runtime.runner import prepare, query, running
from streams.settings import Settings
from streams.sim.generator import encode_events, generate, produce
from streams.wire.codec import ALERT_SUBJECT, TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.model import TouchpointRecord

__all__ = ["run_bench"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _counter(counter: Any, **labels: str) -> float:
    metric = counter.labels(**labels) if labels else counter
    return float(metric._value.get())


async def _decode_ceiling(settings: Settings, codec: AvroCodec, expected: int) -> float:
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
        parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        seen, started = 0, 0.0
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


def _pure_ceilings(records: list[TouchpointRecord]) -> dict[str, float]:
    """events/s of each pure step alone, on the same normalised records, one core."""
    out: dict[str, float] = {}
    rules = IdentityRules()
    node, state = IdentityNode(rules), JsonState()
    started = time.perf_counter()
    for i in range(0, len(records), 2000):
        ops = [op for r in records[i : i + 2000] for op in ops_for_event(r, rules)[0]]
        node.handle_batch(ops, state)
    out["identity"] = len(records) / (time.perf_counter() - started)

    agg = AggregatorState(0, lateness_ms=3 * 3600 * 1000)
    started = time.perf_counter()
    for i, r in enumerate(records):
        agg.add({"customer_id": r["identifiers"]["email"] or r["event_id"], "record": r}, 0, i)
        if i % 2000 == 1999:
            agg.flush(0)
    agg.flush(0)
    out["aggregates"] = len(records) / (time.perf_counter() - started)

    detector = Detector()
    profiles: dict[str, Profile] = {}
    started = time.perf_counter()
    for r in records:
        key = r["identifiers"]["email"] or r["identifiers"]["anonymous_id"] or r["event_id"]
        profile = profiles.get(key) or Profile(key)
        profiles[key], _ = detector.process(profile, r, r["occurred_at"])
    out["alerts"] = len(records) / (time.perf_counter() - started)
    return out


def _current_rss() -> int:
    """Resident bytes now (Linux), not the peak."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _identity_memory(customers: int) -> tuple[int, float]:
    """Bytes the identity state takes per identifier, as the worker's in-memory table holds
    it (orjson values). Synthetic customers: a cookie, a device and an email each, a phone
    for one in ten, linked over three events; every hop of the protocol is followed."""
    rules = IdentityRules()
    node, state = IdentityNode(rules), JsonState()
    identifiers = 0
    gc.collect()
    before = _current_rss()
    pending: list[Any] = []
    for i in range(customers):
        email, device, cookie = (
            f"email:c{i}@example.com",
            f"device_id:d{i:012d}",
            f"anonymous_id:a{i}",
        )
        pending.append(LinkOp((email, device), f"e{i}a", i, None))
        pending.append(LinkOp((cookie, email), f"e{i}b", i, None))
        identifiers += 3
        if i % 10 == 0:
            pending.append(LinkOp((email, f"phone:+4477{i:08d}"), f"e{i}c", i, None))
            identifiers += 1
        if len(pending) >= 5000:
            while pending:
                pending = node.handle_batch(pending, state).ops
    while pending:
        pending = node.handle_batch(pending, state).ops
    gc.collect()
    used = _current_rss() - before
    assert len(state.raw) > identifiers  # identifiers + customers: the state was built
    return identifiers, used / identifiers


def _identity_memory_apart(customers: int) -> tuple[int, float]:
    """``_identity_memory`` in a fresh interpreter: this one's allocator has pages to reuse
    after the pipeline ran, which would hide the growth."""
    code = f"from streams.sim.bench import _identity_memory; print(*_identity_memory({customers}))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), float(out[1])


async def _pipeline_rates(settings: Settings, expected: int) -> dict[str, float]:
    """Run the pipeline over the backlog; seconds from the first batch to each stage's end."""
    db = settings.clickhouse_database
    raw = settings.topics.raw
    stages: dict[str, Callable[[], float]] = {
        "ingest": lambda: _counter(metrics.EVENTS_CONSUMED, topic=raw),
        "identity": lambda: _counter(metrics.IDENTITY_OUTPUTS, kind="resolved"),
        "customers": lambda: _counter(metrics.CUSTOMER_EVENTS),
    }
    base = {name: read() for name, read in stages.items()}
    rows_base = _counter(metrics.CLICKHOUSE_ROWS, table="touchpoints")
    done: dict[str, float] = {}
    async with running(settings) as pipeline:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and len(done) < len(stages) + 1:
            now = time.perf_counter()
            for name, read in stages.items():
                if name not in done and read() - base[name] >= expected:
                    done[name] = now
            if "clickhouse" not in done:
                rows = (await query(pipeline, f"SELECT count() FROM {db}.touchpoints"))[0][0]
                if rows >= expected:
                    done["clickhouse"] = time.perf_counter()
            await asyncio.sleep(0.05)
        started = pipeline.first_batch_at
        if started is None or len(done) < len(stages) + 1:
            raise RuntimeError(f"the pipeline did not finish: {sorted(done)}")
        rows_written = _counter(metrics.CLICKHOUSE_ROWS, table="touchpoints") - rows_base
    rates = {name: expected / (t - started) for name, t in done.items()}
    rates["clickhouse_rows_per_s"] = rows_written / (done["clickhouse"] - started)
    return rates


async def _alert_latency(
    settings: Settings, codec: AvroCodec, rate: float, seconds: float
) -> tuple[float, float, int, float]:
    """p50/p99 ms from producing the newest triggering event to the alert on the topic,
    the number of alerts, and the rate the events were produced at (the producer shares
    the worker's process: when the worker saturates, it falls behind the target)."""
    alert_codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), ALERT_SUBJECT)
    count = int(rate * seconds)
    now = int(time.time() * 1000)
    events = generate(max(1, count // 12), seed=5, now_ms=now, span_ms=int(seconds * 1000))
    events = events[:count]
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    consumer = AIOKafkaConsumer(
        settings.topics.alerts,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        **consumer_security(settings),
    )
    await consumer.start()

    async def collect() -> None:
        async for message in consumer:
            arrived = time.time()
            alert = alert_codec.decode(message.value or b"")
            known = [sent_at[e] for e in alert["event_ids"] if e in sent_at]
            if known:
                latencies.append((arrived - max(known)) * 1000)

    processed_before = _counter(metrics.CUSTOMER_EVENTS)
    async with running(settings):
        collector = asyncio.create_task(collect())
        await asyncio.sleep(3.0)  # let the worker join its partitions
        started = time.time()
        step = 1.0 / rate
        chunk = max(1, int(rate / 20))
        for i in range(0, len(events), chunk):
            target = started + i * step
            await asyncio.sleep(max(0.0, target - time.time()))
            batch = events[i : i + chunk]
            pairs = []
            for e in batch:
                record: dict[str, Any] = dict(e.record)
                record["received_at"] = record["occurred_at"] = int(time.time() * 1000)
                pairs.append((e.key, codec.encode(record)))
                sent_at[str(record["event_id"])] = time.time()
            await produce(settings, pairs)
        produced_rate = len(events) / max(time.time() - started, 1e-9)
        deadline = time.monotonic() + 180
        while _counter(metrics.CUSTOMER_EVENTS) - processed_before < len(events):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        collector.cancel()
    await consumer.stop()
    if not latencies:
        return float("nan"), float("nan"), 0, produced_rate
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies), p99, len(latencies), produced_rate


def _fresh(settings: Settings, tag: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "topic_prefix": f"{tag}{run}.",
            "app_id": f"{tag}-{run}",
            "clickhouse_database": f"{tag}_{run}",
            "aggregate_lateness_seconds": 3 * 3600,
        }
    )


async def run_bench(
    settings: Settings,
    *,
    events: int,
    latency_rates: tuple[float, ...] = (5000.0, 1000.0),
    latency_seconds: float = 10.0,
) -> None:
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now_ms = int(time.time() * 1000)
    generated = generate(max(1, events // 12), seed=1, now_ms=now_ms)
    pairs = encode_events(generated, codec, seed=1)
    n = len(pairs)
    click.echo(f"{n:,} events for {events // 12:,} customers")

    bench = _fresh(settings, "bench")
    prepare(bench)
    await produce(bench, pairs)
    decode_ceiling = await _decode_ceiling(bench, codec, n)
    normalised = [
        o.record
        for _, v in pairs
        if isinstance(o := ingest_message(v, codec, IngestPolicy(), now_ms), Accepted)
    ]
    pure = _pure_ceilings(normalised)
    rates = await _pipeline_rates(bench, n)
    rss = _peak_rss_mb()

    def line(stage: str, rate: float, ceiling: float, extra: str = "") -> None:
        click.echo(
            f"BENCH {stage} events_per_s={rate:.0f} ceiling_events_per_s={ceiling:.0f} "
            f"ratio={rate / ceiling:.3f} peak_rss_mb={rss:.0f}{extra}"
        )

    click.echo(f"pipeline: every touchpoint in ClickHouse at {rates['clickhouse']:,.0f} events/s")
    line("ingest", rates["ingest"], decode_ceiling)
    line("identity", rates["identity"], pure["identity"])
    line(
        "aggregates",
        rates["customers"],
        pure["aggregates"],
        f" clickhouse_rows_per_s={rates['clickhouse_rows_per_s']:.0f}",
    )
    line("alerts", rates["customers"], pure["alerts"])

    for latency_rate in latency_rates:  # a fresh deployment each: no backlog carried over
        latency = _fresh(settings, "lat")
        prepare(latency)
        p50, p99, alerts, produced = await _alert_latency(
            latency, codec, latency_rate, latency_seconds
        )
        click.echo(f"alert latency over {alerts} alerts; events produced at {produced:,.0f}/s")
        click.echo(
            f"BENCH alert_latency p50_ms={p50:.0f} p99_ms={p99:.0f}"
            f" at_events_per_s={latency_rate:.0f}"
        )

    # Last: it grows this process's peak RSS, which the lines above report.
    customers = 100_000
    identifiers, per_identifier = _identity_memory_apart(customers)
    per_customer = per_identifier * identifiers / customers
    click.echo(
        f"BENCH identity_memory identifiers={identifiers} bytes_per_identifier={per_identifier:.0f}"
        f" mib_per_million_identifiers={per_identifier * 1e6 / 2**20:.0f}"
        f" mib_per_million_customers={per_customer * 1e6 / 2**20:.0f}"
    )
