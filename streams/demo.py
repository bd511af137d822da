"""``make run``: the whole pipeline on embedded defaults, then a summary for a newcomer."""

from __future__ import annotations

import time

import click

from streams.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.generator import encode_events, generate, produce
from streams.runner import prepare, query, running, wait_for
from streams.samples import bad_samples
from streams.settings import Settings

__all__ = ["run_demo"]


def _table(title: str, rows: list[tuple[str, int]]) -> None:
    click.secho(title, bold=True)
    width = max((len(name) for name, _ in rows), default=10)
    for name, count in rows:
        click.echo(f"  {name:<{width}}  {count:>10,}")


async def run_demo(
    settings: Settings, *, customers: int, rate: float | None, timeout: float
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
    async with running(settings) as pipeline:
        click.echo(f"worker started in {time.monotonic() - started:.1f}s; producing {expected:,}")
        t0 = time.monotonic()
        await produce(settings, traffic, rate=rate)
        produced_s = time.monotonic() - t0
        total_sql = (
            f"SELECT (SELECT count() FROM {db}.touchpoints)"
            f" + (SELECT count() FROM {db}.dead_letters)"
        )
        landed = await wait_for(pipeline, total_sql, expected, timeout=timeout)
        elapsed = time.monotonic() - t0
        channels = await query(
            pipeline,
            f"SELECT channel, count() FROM {db}.touchpoints_v GROUP BY channel ORDER BY 2 DESC",
        )
        reasons = await query(
            pipeline,
            f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason ORDER BY 2 DESC",
        )
        distinct = await query(
            pipeline,
            f"SELECT count(), uniqExact(identity_key), countIf(payload_type = 'commerce'), "
            f"round(sumIf(amount, event_type = 'payment' AND payment_status = 'approved'), 2) "
            f"FROM {db}.touchpoints_v",
        )

    click.echo()
    click.secho(
        f"{customers:,} simulated customers -> {len(pairs):,} touchpoints "
        f"(+{len(bad)} deliberately bad messages), produced in {produced_s:.1f}s",
        bold=True,
    )
    _table("Ingested into ClickHouse, by channel:", [(str(c), int(n)) for c, n in channels])
    _table("Dead-lettered, by reason:", [(str(r), int(n)) for r, n in reasons])
    rows, keys, commerce, revenue = distinct[0]
    click.echo(
        f"ClickHouse {db}.touchpoints_v: {rows:,} events, {keys:,} distinct identity keys, "
        f"{commerce:,} commerce events, approved payments {revenue:,}"
    )
    ok = landed >= expected
    rate_s = expected / elapsed if elapsed else 0.0
    click.echo(
        f"end to end: {landed:,}/{expected:,} messages landed in {elapsed:.1f}s ({rate_s:,.0f}/s)"
    )
    if not ok:
        click.secho("not everything landed before the timeout", fg="red")
    return ok
