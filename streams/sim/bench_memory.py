"""``BENCH memory`` of ``make bench`` (``streams.sim.bench``): one worker and the sink over a
long generated stream of a fixed population, the worker's resident memory along the way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from streams.runtime.processes import metric_sum, wait_until
from streams.runtime.runner import prepare
from streams.settings import Settings
from streams.sim.deployment import Deployment, fresh
from streams.sim.generator import encode_events, generate, produce
from streams.topology import TABLES
from streams.wire.codec import AvroCodec

__all__ = ["memory_lines"]


@dataclass(frozen=True, slots=True)
class _Memory:
    events: int
    rss_mb: dict[int, float]  # percent of the events through the customer stage -> MiB
    sink_mb: float
    tables: dict[str, tuple[float, float]]  # name -> (keys, bytes) held at the end
    c_heap: tuple[float, float]  # bytes the C allocator has in use, free


async def _memory_run(settings: Settings, codec: AvroCodec, events: int) -> _Memory:
    """One worker and the sink over ``events`` events of a fixed population (5,000
    customers, so the state stops growing once they are all known): the worker's resident
    MiB once 10, 25, 50 and 75 % went through and at the end, and the sink's at the end.
    Growth between 10 % and the end is what the process keeps that it should not
    (uncollected garbage, caches, allocator high-water marks)."""
    now_ms = int(time.time() * 1000)
    customers = 5_000
    pairs = encode_events(
        generate(
            customers,
            seed=3,
            now_ms=now_ms,
            span_ms=6 * 3600 * 1000,
            events_per_customer=1.35 * events / customers,  # the mean comes out lower
        )[:events],
        codec,
        seed=3,
    )
    n = len(pairs)
    # The stages remember event ids for DEDUPE_HORIZON_SECONDS of processing time (ingest
    # de-duplication, the identity and customer stages' replay memory): a run shorter than
    # the horizon keeps every id by design. A one-minute horizon bounds what is kept, so
    # what still grows is what should not.
    bench = fresh(settings, "mem").model_copy(update={"dedupe_horizon_seconds": 60})
    prepare(bench)
    deployment = Deployment(bench, 1)
    try:
        await deployment.start()
        producing = asyncio.create_task(produce(bench, pairs))
        worker = deployment.workers[0]

        def reached(count: float) -> Callable[[], bool]:
            return lambda: deployment.customer_events() >= count

        rss: dict[int, float] = {}
        for percent in (10, 25, 50, 75):
            if not await asyncio.to_thread(wait_until, reached(n * percent // 100), 1800.0, 0.2):
                raise RuntimeError(f"the memory run did not reach {percent} % of its events")
            rss[percent] = worker.rss_mb()
        await producing

        def finished() -> bool:
            return deployment.customer_events() >= n and deployment.touchpoint_rows() >= n

        if not await asyncio.to_thread(wait_until, finished, 1800.0, 0.5):
            raise RuntimeError("the memory run did not finish")
        rss[100] = worker.rss_mb()
        text = worker.metrics()
        tables = {
            t.name: (
                metric_sum(text, "touchpoints_table_keys", table=t.name),
                metric_sum(text, "touchpoints_table_bytes", table=t.name),
            )
            for t in TABLES
        }
        heap = (
            metric_sum(text, "touchpoints_c_heap_bytes", state="in_use"),
            metric_sum(text, "touchpoints_c_heap_bytes", state="free"),
        )
        sink = deployment.sink
        return _Memory(n, rss, sink.rss_mb() if sink is not None else 0.0, tables, heap)
    finally:
        await asyncio.to_thread(deployment.stop)


async def memory_lines(settings: Settings, codec: AvroCodec, events: int) -> None:
    mem = await _memory_run(settings, codec, events)
    click.echo(
        f"BENCH memory events={mem.events} rss_mb_start={mem.rss_mb[10]:.0f}"
        f" rss_mb_end={mem.rss_mb[100]:.0f} sink_rss_mb_end={mem.sink_mb:.0f}"
        f" rss_mb_25={mem.rss_mb[25]:.0f} rss_mb_50={mem.rss_mb[50]:.0f}"
        f" rss_mb_75={mem.rss_mb[75]:.0f}"
    )
    tables = ", ".join(
        f"{name} {keys:,.0f} keys {held / 2**20:.0f} MiB"
        for name, (keys, held) in mem.tables.items()
    )
    click.echo(f"worker at the end (gauges of the last minute): tables: {tables}")
    in_use, free = mem.c_heap
    click.echo(
        f"  C heap: {in_use / 2**20:.0f} MiB in use, {free / 2**20:.0f} MiB free (kept by the"
        " allocator; free whole pages are handed back every MALLOC_TRIM_SECONDS); the rest of"
        " the RSS is Python's small-object arenas (live objects and the arenas that long-lived"
        " ones pin after a big batch), code and stacks"
    )
