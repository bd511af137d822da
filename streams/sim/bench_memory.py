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
from streams.sim.bench import _Deployment, _fresh
from streams.sim.generator import encode_events, generate, produce
from streams.topology import TABLES
from streams.wire.codec import AvroCodec

__all__ = ["memory_lines"]


@dataclass(frozen=True, slots=True)
class _Memory:
    events: int
    rss_mb: dict[int, float]  # percent of the events through the customer stage -> MiB
    sink_mb: float
    table_keys: dict[str, float]


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
    bench = _fresh(settings, "mem").model_copy(update={"dedupe_horizon_seconds": 60})
    prepare(bench)
    deployment = _Deployment(bench, 1)
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
        tables = {t.name: metric_sum(text, "touchpoints_table_keys", table=t.name) for t in TABLES}
        sink = deployment.sink
        return _Memory(n, rss, sink.rss_mb() if sink is not None else 0.0, tables)
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
    keys = ", ".join(f"{name} {count:,.0f}" for name, count in mem.table_keys.items())
    click.echo(f"table keys at the end (last minute's gauge): {keys}")
