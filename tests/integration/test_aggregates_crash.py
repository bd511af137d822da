"""Issue 5 acceptance: the aggregates' exactly-once effect survives a SIGKILL mid-stream.

One ``touchpoints worker`` process (``SINK_ENABLED=false``) runs the agents; the ClickHouse
sink runs in this test process (the owner of the embedded engine). Generated journeys of
~150 people are produced at a steady rate; while they are flowing, with partials already
emitted and every window still open, the worker is killed with SIGKILL and restarted with
the same settings. When the pipeline is quiescent the BI views must equal a recomputation
from the raw touchpoints:

* ``cx_minute`` against SQL over ``touchpoints_v`` grouped by minute, channel, event type,
  country and segment (``segment_of`` written in SQL): events, unique customers, orders,
  revenue, payments, checkouts, CSAT, NPS, sentiment, contacts, complaints, FCR;
* ``cx_partials FINAL`` merged per bucket (``streams.customers.aggregates.combine``'s job, done here on
  the rows ClickHouse keeps) against ``streams.customers.aggregates.recompute`` over the same events,
  every measure except the two that depend on merge history (see ``_HISTORY_DEPENDENT``);
* ``cx_hour`` equals the sum of its minutes, ``cx_day`` the sum of its hours, and unique
  customers per hour equal the distinct customers of the hour's touchpoints.

The allowed lateness is set above the generated span (2 h), so no event can be "late" and
dropped on purpose: any difference is a lost or double-counted event.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.customers.measures import Measures
from streams.customers.recompute import recompute
from streams.settings import Settings
from streams.sim.generator import produce
from streams.wire.envelope import unpack
from streams.wire.model import ResolvedEvent
from streams.wire.valid import read_valid
from tests.integration.harness import (
    KILL_POINT_TIMEOUT,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    InTestSink,
    LagProbe,
    Timings,
    WorkerProcess,
    generated_traffic,
    observed_workers,
    reported,
    stop_marked,
    wait_quiescent,
    wait_until,
)

pytestmark = pytest.mark.integration

CUSTOMERS = 150
SEED = 5150
RATE = 200.0  # events/s: ~10 s of traffic, so the kill lands mid-stream
SPAN_MS = 2 * 3600 * 1000  # generate()'s default span
LATENESS_S = 3 * 3600  # > span: no event can be late, every window stays open
QUIESCE_TIMEOUT = 150.0

_HISTORY_DEPENDENT = ("repeat_contacts", "channel_switches")
"""Decided over per-customer memory that merges hand over to the survivor; ``recompute``
knows nothing of merges, so these may differ legitimately and are only reported."""

_SEGMENT_SQL = """multiIf(
    lowerUTF8(trimBoth(properties['segment'])) IN
        ('anonymous', 'contactable', 'registered', 'loyalty', 'vip'),
    lowerUTF8(trimBoth(properties['segment'])),
    loyalty_id != '', 'loyalty',
    customer_id != '' OR login_id != '', 'registered',
    email != '' OR phone != '' OR social_handle != '', 'contactable',
    'anonymous')"""

# The measures SQL can recompute from touchpoints_v, by the rules of AggregatorState.add.
_RECOMPUTE_SQL = f"""
SELECT
    toUnixTimestamp(toStartOfMinute(occurred_at)) AS minute, channel, event_type, country,
    {_SEGMENT_SQL} AS segment,
    count() AS events,
    uniqExact(customer_id_at_ingest) AS unique_customers,
    countIf(payload_type = 'commerce' AND event_type = 'order_placed') AS orders,
    countIf(payload_type = 'commerce' AND event_type = 'payment'
            AND payment_status = 'approved') AS payments_approved,
    countIf(payload_type = 'commerce' AND event_type = 'payment'
            AND payment_status IN ('declined', 'failed')) AS payment_failures,
    sumMapIf(map(currency, toDecimal128(ifNull(amount, 0), 4)),
             payload_type = 'commerce' AND event_type = 'payment'
             AND payment_status = 'approved') AS revenue,
    countIf(payload_type = 'web' AND event_type = 'checkout_step'
            AND JSONExtractString(payload, 'checkout_step') = 'cart') AS checkouts_started,
    countIf(payload_type = 'contact_centre' AND csat IS NOT NULL) AS csat_responses,
    sumIf(toUInt64(assumeNotNull(csat)), payload_type = 'contact_centre' AND csat IS NOT NULL)
        AS csat_sum,
    countIf(payload_type = 'contact_centre' AND nps >= 9) AS nps_promoters,
    countIf(payload_type = 'contact_centre' AND nps <= 6) AS nps_detractors,
    countIf(payload_type = 'contact_centre' AND nps IS NOT NULL) AS nps_responses,
    countIf(payload_type = 'social' AND sentiment IS NOT NULL) AS sentiment_count,
    countIf(payload_type = 'contact_centre'
            AND event_type IN ('call', 'chat', 'email', 'complaint')) AS contacts,
    countIf(payload_type = 'contact_centre'
            AND (is_complaint OR event_type = 'complaint')) AS complaints,
    countIf(payload_type = 'contact_centre' AND event_type IN ('call', 'chat', 'email', 'complaint')
            AND resolved IS NOT NULL) AS fcr_eligible
FROM {{db}}.touchpoints_v
WHERE customer_id_at_ingest != ''
GROUP BY minute, channel, event_type, country, segment
"""
_COMPARED = (
    "events",
    "unique_customers",
    "orders",
    "payments_approved",
    "payment_failures",
    "revenue",
    "checkouts_started",
    "csat_responses",
    "csat_sum",
    "nps_promoters",
    "nps_detractors",
    "nps_responses",
    "sentiment_count",
    "contacts",
    "complaints",
    "fcr_eligible",
)
_ADDITIVE = tuple(c for c in _COMPARED if c != "unique_customers")


def _view_sql(view: str, period: str) -> str:
    """A BI view's rows; ``period``: an SQL expression giving a plain, comparable key."""
    return (
        f"SELECT {period}, channel, event_type, country, segment, {', '.join(_COMPARED)}"
        f" FROM {{db}}.{view}"
    )


def _rollup_sql(source: str, period: str) -> str:
    """The additive measures of ``source`` summed per coarser ``period``."""
    sums = ", ".join(f"sumMap({c})" if c == "revenue" else f"sum({c})" for c in _ADDITIVE)
    return (
        f"SELECT {period} AS p, channel, event_type, country, segment, {sums}"
        f" FROM {{db}}.{source} GROUP BY p, channel, event_type, country, segment"
    )


def _keyed(rows: list[tuple[Any, ...]], key_len: int = 5) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    out: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        values = tuple(_norm(v) for v in row[key_len:])
        out[tuple(row[:key_len])] = values
    return out


def _norm(value: Any) -> Any:
    """Comparable values: maps without zero entries, decimals exact, ints plain."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), Decimal(v)) for k, v in value.items() if v))
    if isinstance(value, Decimal):
        return value
    return value


def _lost_and_extra(
    name: str, got: Mapping[Any, Any], want: Mapping[Any, Any], limit: int
) -> list[str]:
    """Buckets the recomputation has and the views lack (lost windows), and the reverse."""
    problems: list[str] = []
    lost = sorted(set(want) - set(got), key=str)
    extra = sorted(set(got) - set(want), key=str)
    if lost:
        problems.append(f"{name}: {len(lost)} buckets missing (lost windows), e.g. {lost[:limit]}")
    if extra:
        problems.append(f"{name}: {len(extra)} buckets nobody sent, e.g. {extra[:limit]}")
    return problems


def _diff(
    name: str,
    got: dict[tuple[Any, ...], tuple[Any, ...]],
    want: dict[tuple[Any, ...], tuple[Any, ...]],
    columns: tuple[str, ...],
    limit: int = 6,
) -> list[str]:
    problems = _lost_and_extra(name, got, want, limit)
    wrong = []
    for key in sorted(set(got) & set(want), key=str):
        cols = [
            f"{c}={g!r} want {w!r}"
            for c, g, w in zip(columns, got[key], want[key], strict=True)
            if g != w
        ]
        if cols:
            wrong.append(f"{key}: {', '.join(cols)}")
    if wrong:
        problems.append(
            f"{name}: {len(wrong)} buckets differ, e.g.\n  " + "\n  ".join(wrong[:limit])
        )
    return problems


def _measures_from_partial(row: dict[str, Any]) -> Measures:
    m = Measures()
    values = [row[name] for name in Measures.FIELDS]
    revenue = {str(k): int(Decimal(v).scaleb(4)) for k, v in row["revenue"].items()}
    values[Measures.FIELDS.index("revenue")] = revenue
    m.load_list(values)
    return m


def _compare_measures(
    got: dict[tuple[Any, ...], Measures], want: dict[tuple[Any, ...], Measures], limit: int = 6
) -> tuple[list[str], Counter[str]]:
    """Every measure of every bucket; the history-dependent ones are only counted."""
    problems = _lost_and_extra("cx_partials", got, want, limit)
    history: Counter[str] = Counter()
    wrong = []
    for key in sorted(set(got) & set(want), key=str):
        g, w = got[key], want[key]
        cols = []
        for name in Measures.FIELDS:
            a, b = getattr(g, name), getattr(w, name)
            if name == "sentiment_sum":
                same = abs(a - b) < 1e-6
            elif name in ("wait_seconds", "handle_seconds"):
                same = sorted(round(v, 3) for v in a) == sorted(round(v, 3) for v in b)
            elif name == "revenue":
                same = {k: v for k, v in a.items() if v} == {k: v for k, v in b.items() if v}
            else:
                same = a == b
            if same:
                continue
            if name in _HISTORY_DEPENDENT:
                history[name] += int(a) - int(b)
                continue
            shown = (len(a), len(b)) if isinstance(a, set | list) else (a, b)
            cols.append(f"{name} {shown[0]!r} want {shown[1]!r}")
        if cols:
            wrong.append(f"{key}: {', '.join(cols)}")
    if wrong:
        problems.append(
            f"cx_partials: {len(wrong)} buckets differ from recompute, e.g.\n  "
            + "\n  ".join(wrong[:limit])
        )
    return problems, history


async def _duplicate_event_ids(
    settings: Settings, topic: str, timeout: float = 20.0
) -> Counter[str]:
    """Event ids written to an envelope topic (valid or resolved) more than once, with
    their copies: diagnostics that say which stage re-emitted what after the crash."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                for m in messages:
                    if topic == settings.topics.valid:
                        seen.update(item.event_id for item in read_valid(m.value))
                        continue
                    for item in unpack(m.value):
                        if item["t"] == "e":
                            seen[item["r"]["event_id"]] += 1
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
    finally:
        await consumer.stop()
    return Counter({e: c for e, c in seen.items() if c > 1})


async def settle_and_collect(
    sink: InTestSink,
    probe: LagProbe,
    s: Settings,
    expected_events: int,
    worker: WorkerProcess,
    timeout: float,
) -> dict[str, Any]:
    """Wait until every event landed, no group lags and ``cx_partials`` is stable (for longer
    than the aggregator's 5 s rolling flush), then read what the exactness checks compare."""
    quiet = await wait_quiescent(
        sink,
        probe,
        s,
        expected_events=expected_events,
        fingerprints={
            "partials": "SELECT count(), sum(version), sum(events) FROM {db}.cx_partials",
        },
        timeout=timeout,
        stable_polls=4,
        interval=2.0,
        workers=[worker],
    )
    assert quiet.reached, f"not quiescent after {timeout}s: {quiet.last}"
    return await collect_aggregate_facts(sink, s)


async def collect_aggregate_facts(sink: InTestSink, s: Settings) -> dict[str, Any]:
    """Everything the exactness checks compare, read once the pipeline is quiescent."""
    facts: dict[str, Any] = {}
    facts["touchpoints"] = await sink.rows(
        "SELECT event_id, customer_id_at_ingest FROM {db}.touchpoints_v"
    )
    facts["sql_recompute"] = await sink.rows(_RECOMPUTE_SQL)
    facts["cx_minute"] = await sink.rows(_view_sql("cx_minute", "toUnixTimestamp(minute)"))
    facts["cx_hour"] = await sink.rows(_view_sql("cx_hour", "toUnixTimestamp(hour)"))
    facts["cx_day"] = await sink.rows(_view_sql("cx_day", "toString(day)"))
    facts["minutes_to_hours"] = await sink.rows(
        _rollup_sql("cx_minute", "toUnixTimestamp(toStartOfHour(minute))")
    )
    facts["hours_to_days"] = await sink.rows(_rollup_sql("cx_hour", "toString(toDate(hour))"))
    facts["hour_customers"] = await sink.rows(
        "SELECT toUnixTimestamp(toStartOfHour(occurred_at)) AS h, channel, event_type,"
        f" country, {_SEGMENT_SQL} AS seg, uniqExact(customer_id_at_ingest)"
        " FROM {db}.touchpoints_v WHERE customer_id_at_ingest != ''"
        " GROUP BY h, channel, event_type, country, seg"
    )
    facts["hour_uniques"] = await sink.rows(
        "SELECT toUnixTimestamp(hour), channel, event_type, country, segment,"
        " unique_customers"
        " FROM {db}.cx_hour"
    )
    partial_cols = [
        "toUnixTimestamp(minute) * 1000",
        "channel",
        "event_type",
        "country",
    ]
    facts["partials"] = await sink.rows(
        f"SELECT {', '.join(partial_cols)}, segment, {', '.join(Measures.FIELDS)}"
        " FROM {db}.cx_partials FINAL"
    )
    facts["c360_events"] = await sink.scalar("SELECT sum(events) FROM {db}.customer_360_v")
    facts["valid_duplicates"] = await _duplicate_event_ids(s, s.topics.valid)
    facts["resolved_duplicates"] = await _duplicate_event_ids(s, s.topics.resolved)
    facts["dead_letters"] = await sink.rows(
        "SELECT reason, count() FROM {db}.dead_letters GROUP BY reason"
    )
    return facts


def run_problems(
    facts: dict[str, Any], by_id: Mapping[str, Any], *, after: str, worker: str
) -> list[str]:
    """``aggregate_problems`` (printing the history-dependent differences), plus any dead
    letter and an unclean SIGTERM exit. Issue 12, item 6: every generated event is valid and
    unique, so any dead letter is a replayed batch taken for duplicates (before:
    duplicate_event_id after a crash)."""
    print(f"dead letters by reason: {facts['dead_letters']}")
    problems, history = aggregate_problems(facts, by_id)
    print(f"history-dependent measures, streaming minus recompute: {dict(history)}")
    if facts["dead_letters"]:
        problems.append(f"dead letters after the {after}: {facts['dead_letters']}")
    if facts["exit_code"] != 0:
        problems.append(f"{worker} exited with {facts['exit_code']} on SIGTERM")
    return problems


def aggregate_problems(
    facts: dict[str, Any], by_id: Mapping[str, Any]
) -> tuple[list[str], Counter[str]]:
    """Lost or doubled events, and BI views / partials that differ from a recomputation
    over the raw touchpoints (``facts`` from ``collect_aggregate_facts``)."""
    n = len(by_id)
    problems: list[str] = []
    touchpoints = facts["touchpoints"]
    if len(touchpoints) != n or {e for e, _ in touchpoints} != set(by_id):
        problems.append(f"touchpoints_v has {len(touchpoints)} rows for {n} events")
    unresolved = [e for e, c in touchpoints if not c]
    if unresolved:
        problems.append(f"{len(unresolved)} events resolved to no customer: {unresolved[:5]}")

    # 1. cx_minute == SQL over the raw touchpoints.
    problems += _diff(
        "cx_minute vs touchpoints_v",
        _keyed(facts["cx_minute"]),
        _keyed(facts["sql_recompute"]),
        _COMPARED,
    )
    total = sum(row[5] for row in facts["cx_minute"])
    if total != n:
        problems.append(f"cx_minute counts {total} events, {n} were sent")

    # 2. every measure of cx_partials FINAL == recompute() over the same events.
    resolved: list[ResolvedEvent] = [
        {"customer_id": customer, "record": by_id[event_id]}
        for event_id, customer in touchpoints
        if customer and event_id in by_id
    ]
    want = recompute(resolved)
    got: dict[tuple[Any, ...], Measures] = {}
    names = ["minute", "channel", "event_type", "country", "segment", *Measures.FIELDS]
    for row in facts["partials"]:
        values = dict(zip(names, row, strict=True))
        key = (int(values["minute"]), *row[1:5])
        m = _measures_from_partial(values)
        if key in got:
            got[key].merge(m)
        else:
            got[key] = m
    measure_problems, history = _compare_measures(got, want)
    problems += measure_problems

    # 3. hours are the sum of their minutes, days the sum of their hours.
    additive = {c: i for i, c in enumerate(_COMPARED) if c != "unique_customers"}
    hour_view = {
        k: tuple(v[additive[c]] for c in _ADDITIVE) for k, v in _keyed(facts["cx_hour"]).items()
    }
    day_view = {
        k: tuple(v[additive[c]] for c in _ADDITIVE) for k, v in _keyed(facts["cx_day"]).items()
    }
    problems += _diff(
        "cx_hour vs sum of cx_minute", hour_view, _keyed(facts["minutes_to_hours"]), _ADDITIVE
    )
    problems += _diff(
        "cx_day vs sum of cx_hour", day_view, _keyed(facts["hours_to_days"]), _ADDITIVE
    )
    problems += _diff(
        "cx_hour unique customers vs touchpoints_v",
        _keyed(facts["hour_uniques"]),
        _keyed(facts["hour_customers"]),
        ("unique_customers",),
    )

    # 4. the customer 360 counts every event once as well.
    if facts["c360_events"] != n:
        problems.append(f"customer_360_v counts {facts['c360_events']} events, {n} were sent")
    return problems, history


def test_aggregates_are_exact_after_a_worker_is_killed_mid_stream(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(
        update={"aggregate_lateness_seconds": LATENESS_S, "kafka_session_timeout_seconds": 10.0}
    )
    pairs, by_id = generated_traffic(s, CUSTOMERS, SEED, SPAN_MS)
    n = len(by_id)

    workdir = tmp_path / "workers"
    workdir.mkdir()
    first = WorkerProcess("w1", s, workdir, tmp_path / "faust")
    second = first.replacement("w2")
    workers = [first, second]
    timings = Timings()
    facts: dict[str, Any] = {}

    async def scenario() -> None:
        async with observed_workers(s, [first], timings, "ready") as (sink, probe):
            try:
                traffic = asyncio.create_task(produce(s, pairs, rate=RATE))
                threshold = n // 3

                async def mid_stream() -> bool:
                    assert first.alive, "the worker died before the planned kill"
                    landed, partials = (
                        await sink.rows(
                            "SELECT (SELECT count() FROM {db}.touchpoints),"
                            " (SELECT count() FROM {db}.cx_partials)"
                        )
                    )[0]
                    return int(landed) >= threshold and int(partials) > 0

                assert await wait_until(mid_stream, KILL_POINT_TIMEOUT), (
                    f"{threshold} events and some partials never reached ClickHouse"
                )
                first.kill()
                timings.mark("killed")
                facts["at_kill"] = (
                    await sink.rows(
                        "SELECT (SELECT count() FROM {db}.touchpoints),"
                        " (SELECT count() FROM {db}.cx_partials),"
                        " (SELECT sum(events) FROM {db}.cx_minute)"
                    )
                )[0]
                facts["traffic_flowing_at_kill"] = not traffic.done()
                second.start()
                assert await asyncio.wait_for(traffic, timeout=60) == n
                timings.mark("all_produced")

                facts.update(await settle_and_collect(sink, probe, s, n, second, QUIESCE_TIMEOUT))
                timings.mark("quiescent")
            finally:
                await stop_marked(second, facts, timings)

    with reported(workers):
        asyncio.run(scenario())
        print(f"timings (s since start): {timings}; events={n}")
        print(f"at kill (touchpoints, partial rows, cx events): {facts['at_kill']}")
        for stage in ("valid", "resolved"):
            duplicates = facts[f"{stage}_duplicates"]
            print(
                f"event ids written to the {stage} topic more than once: {len(duplicates)}"
                f" (extra copies: {sum(duplicates.values()) - len(duplicates)})"
            )
        problems = run_problems(facts, by_id, after="crash", worker="the restarted worker")
        assert not problems, "\n".join(problems)


# Bounded by construction: start-up, kill point and quiescence waits, stop.
assert READY_TIMEOUT + KILL_POINT_TIMEOUT + QUIESCE_TIMEOUT + STOP_TIMEOUT < 600
