"""``BENCH alert_latency``: one worker process and the sink process on a steady stream of
fresh events; an alert's latency is its arrival on the alerts topic minus the produce time
of the newest event that triggered it (this process only produces and listens).

Before each line: per stage of the worker, the mean wait of a batch's oldest input before
the batch starts and the mean batch time; ``hop produced->valid|resolved``, each internal
hop's envelope timestamp minus the produce time of the events it carries (where the
latency accumulates); the worker's CPU per event from its own accounting.
``compare`` (``touchpoints bench --compare-latency VAR=VALUE[,VAR=VALUE]``) runs each rate
as configured and with those worker settings, alternating, to measure a change side by side.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.adapters.kafka import consumer_security
from streams.runtime.processes import metric_sum
from streams.runtime.runner import prepare
from streams.settings import Settings
from streams.sim.deployment import Deployment, fresh
from streams.sim.generator import generate
from streams.wire.codec import ALERT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.envelope import unpack
from streams.wire.valid import read_valid

__all__ = ["latency_lines"]


def _p50_p99(values: list[float]) -> tuple[float, float]:
    values.sort()
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


@dataclass(frozen=True, slots=True)
class _Latency:
    p50_ms: float
    p99_ms: float
    alerts: int
    produced_per_s: float
    worker_cpu_us: float
    report: list[str]  # the stage and hop lines of the run


class _Hops:
    """Each internal hop's envelope timestamp (when its stage produced it) minus the
    produce time of the events it carries: where the alert latency accumulates."""

    def __init__(self, settings: Settings, sent_at: dict[str, float]) -> None:
        self.sent_at = sent_at
        self.valid = settings.topics.valid
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
            for event_id in self._event_ids(message):
                sent = self.sent_at.get(event_id)
                if sent is not None:
                    self.values[message.topic].append(message.timestamp - sent * 1000)

    def _event_ids(self, message: Any) -> list[str]:
        if message.topic == self.valid:
            return [item.event_id for item in read_valid(message.value or b"")]
        records = (item.get("r") for item in unpack(message.value or b""))
        return [r["event_id"] for r in records if isinstance(r, dict)]

    def report(self) -> list[str]:
        lines = []
        for topic, values in self.values.items():
            if values:
                p50, p99 = _p50_p99(values)
                hop = topic.rsplit(".", 1)[-1]
                lines.append(f"hop produced->{hop}: p50_ms={p50:.0f} p99_ms={p99:.0f}")
        return lines


def _stage_waits(exposition: str) -> str:
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
    return "stages (means) " + "; ".join(parts)


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
    settings: Settings,
    codec: AvroCodec,
    rate: float,
    seconds: float,
    worker_env: dict[str, str] | None = None,
) -> _Latency:
    """One worker (with ``worker_env``) and the sink process on a fresh deployment."""
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

    deployment = Deployment(settings, 1, worker_env=worker_env)
    worker = deployment.workers[0]
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
        cpu_before = worker.cpu_seconds()
        produced_rate = await _produce_steady(settings, codec, producer, events, rate, sent_at)
        deadline = time.monotonic() + 180
        while await asyncio.to_thread(deployment.customer_events) < len(events):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        cpu_us = (worker.cpu_seconds() - cpu_before) / max(1, len(events)) * 1e6
        await asyncio.sleep(1.0)
        for task in collectors:
            task.cancel()
        report = [_stage_waits(worker.metrics())]
    finally:
        await producer.stop()
        await asyncio.to_thread(deployment.stop)
        await consumer.stop()
        await hops.consumer.stop()
    report.extend(hops.report())
    p50, p99 = _p50_p99(latencies) if latencies else (float("nan"), float("nan"))
    return _Latency(p50, p99, len(latencies), produced_rate, cpu_us, report)


async def latency_lines(
    settings: Settings,
    codec: AvroCodec,
    rates: tuple[float, ...],
    seconds: float,
    compare: tuple[str, ...] = (),
    rounds: int = 2,
) -> None:
    """``BENCH alert_latency`` per rate; with ``compare``, per rate and round, as
    configured and with each ``VAR=VALUE`` in turn (``with=``)."""
    variants: list[tuple[str, dict[str, str]]] = [("", {})]
    if compare:
        variants = [("default", {})]
        for setting in compare:  # VAR=VALUE[,VAR=VALUE...]
            pairs = (item.partition("=") for item in setting.split(","))
            variants.append((setting, {name: value for name, _, value in pairs}))
    for rate in rates:
        for round_ in range(rounds if compare else 1):
            for label, env in variants:  # a fresh deployment each: no backlog carried over
                latency = fresh(settings, "lat")
                prepare(latency)
                run = await _alert_latency(latency, codec, rate, seconds, env)
                for line in run.report:
                    click.echo(line)
                click.echo(
                    f"alert latency over {run.alerts} alerts;"
                    f" events produced at {run.produced_per_s:,.0f}/s"
                )
                extra = f" round={round_ + 1} with={label}" if label else ""
                click.echo(
                    f"BENCH alert_latency p50_ms={run.p50_ms:.0f} p99_ms={run.p99_ms:.0f}"
                    f" at_events_per_s={rate:.0f} produced_events_per_s={run.produced_per_s:.0f}"
                    f" worker_cpu_us_per_event={run.worker_cpu_us:.0f}{extra}"
                )
