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
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.adapters.kafka import consumer_security
from streams.identity.graph import IdentityNode, IdentityRules, JsonState, LinkOp
from streams.runtime.processes import wait_until
from streams.runtime.runner import prepare
from streams.settings import Settings
from streams.sim.deployment import Deployment, fresh
from streams.sim.generator import encode_events, generate, produce
from streams.sim.latency import latency_lines
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

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
    bench = fresh(settings, "bench")
    prepare(bench)
    deployment = Deployment(
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
    compare_latency: tuple[str, ...] = (),
    rounds: int = 2,
) -> None:
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now_ms = int(time.time() * 1000)
    generated = generate(max(1, events // 12), seed=1, now_ms=now_ms)
    pairs = encode_events(generated, codec, seed=1)
    n = len(pairs)
    click.echo(f"{n:,} events for {events // 12:,} customers")

    ceiling = fresh(settings, "ceil")
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

    await latency_lines(settings, codec, latency_rates, latency_seconds, compare_latency, rounds)

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
