"""``make run``: the whole pipeline on embedded defaults, then a summary for a newcomer.

The default topology: ``workers`` worker processes (``touchpoints worker``,
``SINK_ENABLED=false``) share the partitions through their consumer group; this process
is the sink process (``streams.runtime.sink_app``): it owns ClickHouse, so it can query it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import click

from streams.runtime.processes import Spawned, wait_until
from streams.runtime.runner import prepare
from streams.runtime.sink_app import SinkProcess
from streams.settings import Settings
from streams.sim.generator import encode_events, generate, produce
from streams.sim.samples import bad_samples
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

Query = Callable[[str], Awaitable[list[tuple[Any, ...]]]]

__all__ = ["run_demo"]


def _table(title: str, rows: list[tuple[str, int]]) -> None:
    click.secho(title, bold=True)
    width = max((len(name) for name, _ in rows), default=10)
    for name, count in rows:
        click.echo(f"  {name:<{width}}  {count:>10,}")


@asynccontextmanager
async def deployment(settings: Settings, workers: int) -> AsyncIterator[SinkProcess]:
    """The sink in this process, ``workers`` worker processes; yields the sink once every
    worker has joined the group."""
    sink = SinkProcess(settings)
    await sink.start()
    log_dir = settings.data_dir / "logs"
    procs = [
        Spawned(
            f"worker-{i}",
            "worker",
            settings,
            log_dir,
            SINK_ENABLED="false",
            DATA_DIR=str(settings.data_dir / f"worker-{i}"),
        )
        for i in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()

        def ready() -> bool:
            return all(p.ready() for p in procs)

        if not await asyncio.to_thread(wait_until, ready, 120.0, 0.5):
            tails = "\n".join(f"--- {p.name} ({p.log_path})\n{p.tail()}" for p in procs)
            raise RuntimeError(f"the workers did not become ready\n{tails}")
        yield sink
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
        await sink.stop()


async def _wait_for(query: Query, sql: str, expected: int, timeout: float) -> int:
    """Poll a ``SELECT count()`` query until it reaches ``expected``; return the last value."""
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = int((await query(sql))[0][0])
        if value >= expected:
            return value
        await asyncio.sleep(0.5)
    return value


async def _settle(
    query: Query, db: str, *, poll_seconds: float = 1.0, quiet_polls: int = 3, timeout: float = 60.0
) -> None:
    """Wait until identity and aggregates stop changing (merges ripple through a few hops);
    ``poll_seconds`` at least the sink's flush interval, or a pending flush looks quiet."""
    sql = (
        f"SELECT (SELECT count() FROM {db}.identity_map), (SELECT count() FROM {db}.cx_partials),"
        f" (SELECT count() FROM {db}.customer_merges), (SELECT count() FROM {db}.alerts)"
    )
    last: Any = None
    same = 0
    deadline = time.monotonic() + timeout
    while same < quiet_polls and time.monotonic() < deadline:
        await asyncio.sleep(poll_seconds)
        now = await query(sql)
        same = same + 1 if now == last else 0
        last = now


async def _report(q: Query, db: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "channels": [
            (str(c), int(n))
            for c, n in await q(
                f"SELECT channel, count() FROM {db}.touchpoints_v GROUP BY channel ORDER BY 2 DESC"
            )
        ],
        "reasons": [
            (str(r), int(n))
            for r, n in await q(
                f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason "
                "ORDER BY 2 DESC, 1"
            )
        ],
        "identity": (
            await q(
                f"SELECT count(), uniqExact(customer_id), "
                f"(SELECT count() FROM {db}.customer_merges FINAL) FROM {db}.identity_map_v"
            )
        )[0],
        "refusals": await q(
            f"SELECT reason, count() FROM {db}.identity_refusals FINAL "
            "GROUP BY reason ORDER BY 2 DESC"
        ),
        "alerts": [
            (str(r), int(n))
            for r, n in await q(
                f"SELECT rule, count() FROM {db}.alerts_v GROUP BY rule ORDER BY 2 DESC, 1"
            )
        ],
        "alert_examples": await q(
            f"SELECT rule, any(summary) FROM {db}.alerts_v GROUP BY rule ORDER BY rule LIMIT 5"
        ),
        "dashboard": await q(
            f"SELECT minute, channel, sum(events), sum(orders), "
            f"toString(sumMap(revenue)), "
            f"if(sum(csat_responses) = 0, nan, sum(csat_sum) / sum(csat_responses)), "
            f"sum(contacts), sum(repeat_contacts) FROM {db}.cx_minute "
            f"WHERE minute >= (SELECT max(minute) FROM {db}.cx_minute) - INTERVAL 2 MINUTE "
            f"GROUP BY minute, channel ORDER BY minute, channel"
        ),
        "distinct": (
            await q(
                f"SELECT count(), uniqExact(identity_key), countIf(payload_type = 'commerce'), "
                f"round(sumIf(amount, event_type = 'payment' AND payment_status = 'approved'), 2)"
                f" FROM {db}.touchpoints_v"
            )
        )[0],
        "timeline": None,
    }
    best = await q(
        f"SELECT customer_id FROM {db}.customer_touchpoints_v GROUP BY customer_id "
        f"HAVING uniqExact(channel) >= 3 ORDER BY uniqExact(channel) DESC, count() DESC LIMIT 1"
    )
    if best:
        customer = best[0][0]
        rows = await q(
            f"SELECT occurred_at, channel, event_type, identity_key FROM "
            f"{db}.customer_touchpoints_v WHERE customer_id = '{customer}' ORDER BY occurred_at"
        )
        report["timeline"] = (customer, rows)
    return report


async def run_demo(
    settings: Settings, *, customers: int, rate: float | None, timeout: float, workers: int = 1
) -> bool:
    db = settings.clickhouse_database
    click.secho(f"Kafka {settings.kafka_bootstrap_servers}; ClickHouse ", nl=False)
    click.echo(settings.clickhouse_url or f"embedded at {settings.clickhouse_chdb_path}")
    created = prepare(settings)
    click.echo(f"topics ready ({len(created)} created)")

    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now_ms = int(time.time() * 1000)
    events = generate(customers, seed=7, now_ms=now_ms)
    pairs = encode_events(events, codec, old_schema_fraction=0.05, seed=7)
    bad = bad_samples(
        codec, now_ms, duplicate_of=dict(events[0].record), duplicate_key=events[0].key
    )
    traffic = pairs + [(b.key, b.value) for b in bad]
    expected = len(traffic)

    started = time.monotonic()
    async with deployment(settings, workers) as sink:
        click.echo(
            f"{workers} worker process(es) and the sink started in"
            f" {time.monotonic() - started:.1f}s; producing {expected:,}"
        )
        t0 = time.monotonic()
        await produce(settings, traffic, rate=rate)
        produced_s = time.monotonic() - t0
        total_sql = (
            f"SELECT (SELECT count() FROM {db}.touchpoints)"
            f" + (SELECT count() FROM {db}.dead_letters)"
        )
        landed = await _wait_for(sink.query, total_sql, expected, timeout)
        elapsed = time.monotonic() - t0
        await _settle(
            sink.query,
            db,
            poll_seconds=max(1.0, settings.sink_flush_seconds + 0.5),
            timeout=max(60.0, 12 * settings.sink_flush_seconds),
        )
        report = await _report(sink.query, db)

    _print_report(report, db, customers, len(pairs), len(bad), produced_s)
    ok = landed >= expected
    rate_s = expected / elapsed if elapsed else 0.0
    click.echo(
        f"end to end: {landed:,}/{expected:,} messages landed in {elapsed:.1f}s ({rate_s:,.0f}/s)"
    )
    if not ok:
        click.secho("not everything landed before the timeout", fg="red")
    return ok


def _print_report(
    report: dict[str, Any], db: str, customers: int, touchpoints: int, bad: int, produced_s: float
) -> None:
    """What the demo shows of the run: channels, dead letters, identity, a timeline, alerts,
    the last minutes of the dashboard and the ClickHouse totals."""
    click.echo()
    click.secho(
        f"{customers:,} simulated customers -> {touchpoints:,} touchpoints "
        f"(+{bad} deliberately bad messages), produced in {produced_s:.1f}s",
        bold=True,
    )
    _table("Ingested into ClickHouse, by channel:", report["channels"])
    _table("Dead-lettered, by reason:", report["reasons"])
    ids, people, merges = report["identity"]
    refusals = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in report["refusals"]) or "none"
    click.secho(
        f"Identity: {touchpoints:,} events -> {people:,} customers ({ids:,} identifiers); "
        f"{merges:,} merges; refused: {refusals}",
        bold=True,
    )
    if report["timeline"]:
        customer, rows = report["timeline"]
        channels = sorted({r[1] for r in rows})
        click.secho(
            f"Timeline of customer {customer} ({len(rows)} touchpoints, {len(channels)} "
            f"channels: {', '.join(channels)}):",
            bold=True,
        )
        for occurred, channel, event_type, key in rows[:25]:
            click.echo(f"  {occurred:%H:%M:%S}  {channel:<15} {event_type:<18} via {key}")
        if len(rows) > 25:
            click.echo(f"  ... {len(rows) - 25} more")
    _table("Alerts, by rule:", report["alerts"])
    for rule, summary in report["alert_examples"]:
        click.echo(f"  [{rule}] {summary}")
    click.secho("Last minutes by channel (cx_minute):", bold=True)
    click.echo(
        f"  {'minute':<6} {'channel':<15} {'events':>7} {'orders':>6} {'csat':>5} "
        f"{'contacts':>8} {'repeat':>6}  revenue (approved, per currency)"
    )
    for minute, channel, events, orders, revenue, csat, contacts, repeat in report["dashboard"]:
        csat_s = f"{csat:.1f}" if csat == csat else "-"  # NaN when nobody answered
        click.echo(
            f"  {minute:%H:%M}  {channel:<15} {events:>7,} {orders:>6,} {csat_s:>5} "
            f"{contacts:>8,} {repeat:>6,}  {revenue}"
        )
    rows_, keys, commerce, revenue = report["distinct"]
    click.echo(
        f"ClickHouse {db}.touchpoints_v: {rows_:,} events, {commerce:,} commerce events, "
        f"approved payments {revenue:,}"
    )
