"""``make bench``: the pipeline's CPU per event and rate against a ceiling, in one run.

A real broker, the embedded ClickHouse, the default topology (``streams.runtime.processes``):

1. N generated touchpoints; the ceiling on the same data: a plain aiokafka consumer +
   fastavro decode loop (events/s and its CPU per event).
2. ``BENCH baseline``: the runtime before issue 11 (the sink inside the one worker
   process, Python's default garbage collector) on the same data, same harness.
3. ``BENCH pipeline workers=1`` and ``workers=2``: worker processes and one sink process
   on a fresh deployment each; the events are produced once every process is ready;
   CPU per event from each process's kernel accounting (``/proc/<pid>/stat``), so it is
   stable on a shared machine; the rate is wall clock until everything is in ClickHouse.
4. ``BENCH alert_latency``: a steady stream of fresh events at each ``--latency-rate``;
   an alert's latency is its arrival on the alerts topic minus the produce time of the
   newest event that triggered it; and the rate the events were really produced at.
   Before it, ``hop produced->valid|resolved``: each internal hop's envelope timestamp
   minus the produce time of the events it carries (where the latency accumulates), and
   per stage the mean wait of a batch's oldest input before the batch starts and the mean
   batch time (from the worker's metrics).
   ``--compare VAR=VALUE``: one worker as configured and with that setting, alternating
   (``BENCH compare``), on the same data, to measure one change side by side.
5. ``BENCH memory``: one worker over ``--memory-events`` events, resident MiB once 10 %
   went through and at the end.
6. ``BENCH identity_memory``: the identity state of 100,000 synthetic customers built by
   the pure protocol, bytes per identifier.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.adapters.kafka import consumer_security
from streams.identity.graph import IdentityNode, IdentityRules, JsonState, LinkOp
from streams.runtime.processes import Spawned, metric_sum, wait_until
from streams.runtime.runner import prepare
from streams.settings import Settings
from streams.sim.generator import encode_events, generate, produce
from streams.wire.codec import ALERT_SUBJECT, TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.envelope import unpack

__all__ = ["run_bench"]


async def _decode_ceiling(
    settings: Settings, codec: AvroCodec, expected: int
) -> tuple[float, float]:
    """events/s and CPU µs per event of a plain consumer + Avro decode loop."""
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
        seen, started, cpu = 0, 0.0, 0.0
        decode = codec.decode
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not started and batches:
                started, cpu = time.perf_counter(), time.process_time()
            for messages in batches.values():
                for m in messages:
                    decode(m.value)
                seen += len(messages)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return seen / elapsed, cpu / seen * 1e6
    finally:
        await consumer.stop()


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


class _Deployment:
    """Worker processes and (by default) one sink process on a fresh deployment.

    ``sink_apart=False, gc_tuned=False`` is the topology and runtime before issue 11:
    one process ran the agents and the sink, with Python's default collector."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        sink_apart: bool = True,
        gc_tuned: bool = True,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        log_dir = settings.data_dir / "logs"
        env = {} if gc_tuned else {"GC_FREEZE": "false", "GC_THRESHOLD": "0"}
        env.update(worker_env or {})
        self.sink = Spawned("sink", "sink", settings, log_dir, **env) if sink_apart else None
        self.workers = [
            Spawned(
                f"worker-{i}",
                "worker",
                settings,
                log_dir,
                SINK_ENABLED="true" if not sink_apart and i == 0 else "false",
                DATA_DIR=str(settings.data_dir / f"worker-{i}"),
                **env,
            )
            for i in range(workers)
        ]
        self.sink_owner = self.sink or self.workers[0]

    @property
    def processes(self) -> list[Spawned]:
        return [*([self.sink] if self.sink else []), *self.workers]

    async def start(self, timeout: float = 180.0) -> None:
        try:
            await self._start(timeout)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    async def _start(self, timeout: float) -> None:
        for process in self.processes:
            process.start()

        def all_ready() -> bool:
            return all(p.ready() for p in self.processes)

        # Ready twice, a few seconds apart: a later worker's join rebalances the group.
        for _ in range(2):
            if not await asyncio.to_thread(wait_until, all_ready, timeout, 0.5):
                dead = [p for p in self.processes if not p.ready()]
                tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in dead)
                raise RuntimeError(f"not ready: {[p.name for p in dead]}\n{tails}")
            await asyncio.sleep(3.0)

    def customer_events(self) -> float:
        return sum(
            metric_sum(w.metrics(), "touchpoints_customer_stage_events_total") for w in self.workers
        )

    def touchpoint_rows(self) -> float:
        return metric_sum(
            self.sink_owner.metrics(),
            "touchpoints_clickhouse_rows_written_total",
            table="touchpoints",
        )

    def cpu(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.processes}

    def stop(self) -> None:
        for process in self.workers:  # the sink last: it flushes what the workers sent
            process.stop()
        if self.sink is not None:
            self.sink.stop()


@dataclass(frozen=True, slots=True)
class _Run:
    events_per_s: float
    worker_cpu_us: float
    sink_cpu_us: float
    peak_rss_mb: float
    sink_peak_rss_mb: float


async def _pipeline_run(
    settings: Settings,
    pairs: list[tuple[bytes, bytes]],
    workers: int,
    *,
    sink_apart: bool = True,
    gc_tuned: bool = True,
    worker_env: dict[str, str] | None = None,
    timeout: float = 900.0,
) -> _Run:
    """Start the processes on a fresh deployment, then produce ``pairs`` and wait until
    every event went through the customer stage and every touchpoint is in ClickHouse.
    CPU is each process's own (kernel accounting) from the moment it was ready to the
    end, start-up and recovery excluded; the rate is wall clock from the first produce."""
    bench = _fresh(settings, "bench")
    prepare(bench)
    deployment = _Deployment(
        bench, workers, sink_apart=sink_apart, gc_tuned=gc_tuned, worker_env=worker_env
    )
    n = len(pairs)
    try:
        await deployment.start()
        cpu_before = deployment.cpu()
        started = time.perf_counter()
        await produce(bench, pairs)

        def finished() -> bool:
            return deployment.customer_events() >= n and deployment.touchpoint_rows() >= n

        # Polled every 0.5 s: each poll renders both processes' /metrics, which at 10 Hz was
        # ~4 % of the worker's CPU in its profile (the bench measuring its own probe).
        if not await asyncio.to_thread(wait_until, finished, timeout, 0.5):
            raise RuntimeError(
                f"the pipeline did not finish: {deployment.customer_events():.0f} events,"
                f" {deployment.touchpoint_rows():.0f} rows of {n}"
            )
        elapsed = time.perf_counter() - started
        cpu_after = deployment.cpu()
        used = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
        worker_cpu = sum(used[w.name] for w in deployment.workers)
        sink = deployment.sink
        return _Run(
            events_per_s=n / elapsed,
            worker_cpu_us=worker_cpu / n * 1e6,
            sink_cpu_us=used[sink.name] / n * 1e6 if sink is not None else 0.0,
            peak_rss_mb=max(w.rss_mb(peak=True) for w in deployment.workers),
            sink_peak_rss_mb=sink.rss_mb(peak=True) if sink is not None else 0.0,
        )
    finally:
        await asyncio.to_thread(deployment.stop)


def _p50_p99(values: list[float]) -> tuple[float, float]:
    values.sort()
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


class _Hops:
    """Each internal hop's envelope timestamp (when its stage produced it) minus the
    produce time of the events it carries: where the alert latency accumulates."""

    def __init__(self, settings: Settings, sent_at: dict[str, float]) -> None:
        self.sent_at = sent_at
        self.values: dict[str, list[float]] = {
            settings.topics.valid: [],
            settings.topics.resolved: [],
        }
        self.consumer = AIOKafkaConsumer(
            *self.values,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            auto_offset_reset="latest",
            **consumer_security(settings),
        )

    async def collect(self) -> None:
        async for message in self.consumer:
            for item in unpack(message.value or b""):
                record = item.get("r")
                sent = self.sent_at.get(record["event_id"]) if isinstance(record, dict) else None
                if sent is not None:
                    self.values[message.topic].append(message.timestamp - sent * 1000)

    def report(self) -> None:
        for topic, values in self.values.items():
            if values:
                p50, p99 = _p50_p99(values)
                click.echo(
                    f"hop produced->{topic.rsplit('.', 1)[-1]}: p50_ms={p50:.0f} p99_ms={p99:.0f}"
                )


def _stage_waits(exposition: str) -> None:
    """Per stage of the worker: mean input wait before a batch starts and mean batch time
    (``touchpoints_stage_input_wait_seconds`` / ``touchpoints_stage_batch_seconds``)."""
    parts = []
    for stage in ("ingest", "dedupe", "identity", "customers"):
        means = []
        for name in ("touchpoints_stage_input_wait_seconds", "touchpoints_stage_batch_seconds"):
            count = metric_sum(exposition, f"{name}_count", stage=stage)
            means.append(
                metric_sum(exposition, f"{name}_sum", stage=stage) / count * 1000 if count else 0.0
            )
        batches = metric_sum(exposition, "touchpoints_stage_batch_seconds_count", stage=stage)
        parts.append(
            f"{stage}: input_wait_ms={means[0]:.0f} batch_ms={means[1]:.0f} batches={batches:.0f}"
        )
    click.echo("stages (means) " + "; ".join(parts))


async def _produce_steady(
    settings: Settings,
    codec: AvroCodec,
    producer: AIOKafkaProducer,
    events: list[Any],
    rate: float,
    sent_at: dict[str, float],
) -> float:
    """``events`` at ``rate`` (stamped now, chunks every 10 ms); the rate really reached."""
    started = time.time()
    step = 1.0 / rate
    chunk = max(1, int(rate / 100))
    deliveries = []
    for i in range(0, len(events), chunk):
        await asyncio.sleep(max(0.0, started + i * step - time.time()))
        for e in events[i : i + chunk]:
            record: dict[str, Any] = dict(e.record)
            record["received_at"] = record["occurred_at"] = int(time.time() * 1000)
            value = codec.encode(record)
            sent_at[str(record["event_id"])] = time.time()
            deliveries.append(await producer.send(settings.topics.raw, value, key=e.key))
    await asyncio.gather(*deliveries)
    return len(events) / max(time.time() - started, 1e-9)


async def _alert_latency(
    settings: Settings, codec: AvroCodec, rate: float, seconds: float
) -> tuple[float, float, int, float]:
    """p50/p99 ms from producing the newest triggering event to the alert on the topic,
    the number of alerts, and the rate the events were really produced at (one worker
    process and the sink process; this process only produces and listens)."""
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
    hops = _Hops(settings, sent_at)
    await hops.consumer.start()

    async def collect() -> None:
        async for message in consumer:
            arrived = time.time()
            alert = alert_codec.decode(message.value or b"")
            known = [sent_at[e] for e in alert["event_ids"] if e in sent_at]
            if known:
                latencies.append((arrived - max(known)) * 1000)

    deployment = _Deployment(settings, 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=1,
        **consumer_security(settings),
    )
    await producer.start()  # one producer for the run: starting one per chunk lags the rate
    try:
        await deployment.start()
        collectors = [asyncio.create_task(collect()), asyncio.create_task(hops.collect())]
        await asyncio.sleep(1.0)
        produced_rate = await _produce_steady(settings, codec, producer, events, rate, sent_at)
        deadline = time.monotonic() + 180
        while await asyncio.to_thread(deployment.customer_events) < len(events):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        for task in collectors:
            task.cancel()
        _stage_waits(deployment.workers[0].metrics())
    finally:
        await producer.stop()
        await asyncio.to_thread(deployment.stop)
        await consumer.stop()
        await hops.consumer.stop()
    hops.report()
    if not latencies:
        return float("nan"), float("nan"), 0, produced_rate
    p50, p99 = _p50_p99(latencies)
    return p50, p99, len(latencies), produced_rate


async def _latency_lines(
    settings: Settings, codec: AvroCodec, rates: tuple[float, ...], seconds: float
) -> None:
    for rate in rates:  # a fresh deployment each: no backlog carried over
        latency = _fresh(settings, "lat")
        prepare(latency)
        p50, p99, alerts, produced = await _alert_latency(latency, codec, rate, seconds)
        click.echo(f"alert latency over {alerts} alerts; events produced at {produced:,.0f}/s")
        click.echo(
            f"BENCH alert_latency p50_ms={p50:.0f} p99_ms={p99:.0f}"
            f" at_events_per_s={rate:.0f} produced_events_per_s={produced:.0f}"
        )


def _fresh(settings: Settings, tag: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "topic_prefix": f"{tag}{run}.",
            "app_id": f"{tag}-{run}",
            "clickhouse_database": f"{tag}_{run}",
            "aggregate_lateness_seconds": 3 * 3600,
            "data_dir": settings.data_dir / f"{tag}-{run}",
            # Its own embedded database too: the engine's background tasks run for every
            # table it holds, so an earlier run's tables would cost the sink idle CPU.
            "clickhouse_chdb_path": settings.data_dir / f"{tag}-{run}" / "chdb",
        }
    )


async def run_bench(
    settings: Settings,
    *,
    events: int,
    latency_rates: tuple[float, ...] = (5000.0, 1000.0),
    latency_seconds: float = 10.0,
    memory_events: int = 500_000,
    baseline: bool = True,
    pipeline: bool = True,
    compare: tuple[str, ...] = (),
    rounds: int = 2,
) -> None:
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now_ms = int(time.time() * 1000)
    generated = generate(max(1, events // 12), seed=1, now_ms=now_ms)
    pairs = encode_events(generated, codec, seed=1)
    n = len(pairs)
    click.echo(f"{n:,} events for {events // 12:,} customers")

    ceiling = _fresh(settings, "ceil")
    prepare(ceiling)
    await produce(ceiling, pairs)
    decode_ceiling, ceiling_cpu_us = await _decode_ceiling(ceiling, codec, n)
    click.echo(
        f"ceiling (aiokafka consumer + fastavro decode, one process): {decode_ceiling:,.0f}"
        f" events/s, {ceiling_cpu_us:.0f} µs CPU/event"
    )

    def line(name: str, workers: int, run: _Run, extra: str = "") -> None:
        click.echo(
            f"BENCH {name} workers={workers} events_per_s={run.events_per_s:.0f}"
            f" worker_cpu_us_per_event={run.worker_cpu_us:.0f}"
            f" sink_cpu_us_per_event={run.sink_cpu_us:.0f}"
            f" ceiling_events_per_s={decode_ceiling:.0f}"
            f" ratio={run.events_per_s / decode_ceiling:.3f}"
            f" peak_rss_mb={run.peak_rss_mb:.0f}{extra}"
        )

    if baseline:  # the same harness and data on the runtime before issue 11
        before = await _pipeline_run(settings, pairs, 1, sink_apart=False, gc_tuned=False)
        line("baseline", 1, before, " sink=in_worker gc=python_default")
    if pipeline:
        one = await _pipeline_run(settings, pairs, 1)
        line("pipeline", 1, one, f" sink_peak_rss_mb={one.sink_peak_rss_mb:.0f}")
        two = await _pipeline_run(settings, pairs, 2)
        line(
            "pipeline",
            2,
            two,
            f" sink_peak_rss_mb={two.sink_peak_rss_mb:.0f}"
            f" speedup={two.events_per_s / one.events_per_s:.2f} cores={os.cpu_count()}",
        )

    for setting in compare:  # one worker, as configured and with VAR=VALUE, alternating
        name, _, value = setting.partition("=")
        for round_ in range(rounds):
            for label, env in (("default", {}), (setting, {name: value})):
                run = await _pipeline_run(settings, pairs, 1, worker_env=env)
                line("compare", 1, run, f" round={round_ + 1} with={label}")

    await _latency_lines(settings, codec, latency_rates, latency_seconds)

    if memory_events > 0:
        from streams.sim.bench_memory import memory_lines  # (it builds on this module)

        await memory_lines(settings, codec, memory_events)

    customers = 100_000
    identifiers, per_identifier = _identity_memory_apart(customers)
    per_customer = per_identifier * identifiers / customers
    click.echo(
        f"BENCH identity_memory identifiers={identifiers} bytes_per_identifier={per_identifier:.0f}"
        f" mib_per_million_identifiers={per_identifier * 1e6 / 2**20:.0f}"
        f" mib_per_million_customers={per_customer * 1e6 / 2**20:.0f}"
    )
