"""The BI schema on the real ClickHouse engine (chdb): what the streaming aggregator writes,
read back through the analyst views, equals the plain recomputation — after a crash and a
replay, duplicate inserts and rolling versions. Also the customer 360, the comments, and the
views through SQLAlchemy with clickhouse-connect's dialect, as Superset reads them.

The engine allows one data path per process: everything uses the session's ``chdb_path``
(tests/integration/conftest.py) and a fresh database per test.
"""

from __future__ import annotations

import copy
import json
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from streams.adapters.clickhouse import ClickHouse, migrate
from streams.customers.aggregates import AddOutcome, AggregatorState
from streams.customers.c360 import Customer360Book
from streams.customers.measures import DAY_MS, HOUR_MS, MINUTE_MS, BucketKey, Measures
from streams.customers.recompute import count_new_customers, recompute
from streams.customers.rows import AggregateRow, Customer360Row, dedupe_token, rows_for_clickhouse
from streams.sim.generator import generate
from streams.wire.model import ResolvedEvent

pytestmark = pytest.mark.integration

PARTITIONS = 4
OUR_OBJECTS = (
    "cx_partials",
    "customer_first_seen",
    "customer_first_seen_mv",
    "cx_minute",
    "cx_hour",
    "cx_day",
    "alert_partials",
    "alerts_minute",
    "customer_360",
    "customer_360_v",
)


@pytest.fixture
def db(chdb_path: Path) -> Iterator[tuple[ClickHouse, str]]:
    client: ClickHouse = clickhouse_connect.get_client(interface="chdb", path=str(chdb_path))
    database = f"agg_{uuid.uuid4().hex[:10]}"
    migrate(client, database)
    try:
        yield client, database
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        client.close()


# --------------------------------------------------------------------------- the stream, simulated


@dataclass
class Stream:
    """What the aggregator agent would have written, inserts in order (replays included)."""

    events: list[ResolvedEvent]
    accepted: list[ResolvedEvent] = field(default_factory=list)
    late: int = 0
    inserts: list[list[AggregateRow]] = field(default_factory=list)
    customer_inserts: list[list[Customer360Row]] = field(default_factory=list)


def _simulate(now_ms: int, seed: int = 5) -> Stream:
    """~300 customers' journeys, partitioned by customer, out of order (a few beyond the
    lateness), in random batches; partitions 0 and 1 crash mid-run and replay from the last
    saved state (rows of the crashed attempt stay in ClickHouse)."""
    rnd = random.Random(seed)
    events: list[ResolvedEvent] = [
        {"customer_id": f"C{g.person:04d}", "record": g.record}
        for g in generate(300, seed=seed, now_ms=now_ms)
    ]
    out = Stream(events)
    arrival = sorted(
        events, key=lambda e: e["record"]["occurred_at"] + rnd.randrange(6 * MINUTE_MS)
    )
    for partition in range(PARTITIONS):
        stream = [e for e in arrival if int(e["customer_id"][1:]) % PARTITIONS == partition]
        state, book = AggregatorState(partition, pane_events=200), Customer360Book()
        saved = (0, json.dumps(state.to_dict()), copy.deepcopy(dict(book.store)))
        crash_at = len(stream) // 2 if partition < 2 else -1
        outcome: dict[int, AddOutcome] = {}
        i = 0
        while i < len(stream):
            end = min(i + rnd.randint(20, 200), len(stream))
            for j in range(i, end):
                outcome[j] = state.add(stream[j], now_ms, offset=j)
                book.add(stream[j], now_ms, offset=j)
                if j == crash_at:
                    break
            out.inserts.append(state.flush(now_ms))
            out.customer_inserts.append(book.flush())
            if crash_at in range(i, end):  # killed after writing: back to the saved state
                crash_at = -1
                i, raw, store = saved
                state = AggregatorState.from_dict(json.loads(raw))
                book = Customer360Book(copy.deepcopy(store))
                continue
            i = end
            saved = (i, json.dumps(state.to_dict()), copy.deepcopy(dict(book.store)))
        out.inserts.append(state.flush(now_ms))
        out.late += state.late_events
        out.accepted.extend(stream[j] for j, o in outcome.items() if o is AddOutcome.APPLIED)
    return out


@pytest.fixture(scope="module")
def stream() -> Stream:
    started = time.perf_counter()
    s = _simulate(int(time.time() * 1000))  # near now: the 400-day TTL keeps every row
    print(f"simulated {len(s.events)} events in {time.perf_counter() - started:.2f}s")
    return s


def _insert(client: ClickHouse, database: str, rows: Sequence[Any]) -> None:
    if rows:
        table, columns, values = rows_for_clickhouse(rows)
        client.insert(
            f"{database}.{table}",
            values,
            column_names=columns,
            settings={"insert_deduplication_token": dedupe_token(rows)},
        )


def _load(client: ClickHouse, database: str, s: Stream) -> None:
    for batch in s.inserts:
        _insert(client, database, batch)
    for batch in s.inserts[::5]:  # an identical replay of some batches: dropped at once
        _insert(client, database, batch)
    for batch in s.customer_inserts:
        _insert(client, database, batch)


# --------------------------------------------------------------------------- comparisons


_PERIOD = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}


def _ms(value: datetime | date) -> int:
    if isinstance(value, datetime):
        return int(value.replace(tzinfo=UTC).timestamp() * 1000)
    return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)


def _expected_row(m: Measures, new: int) -> dict[str, Any]:
    nps = m.nps_promoters + m.nps_passives + m.nps_detractors
    return {
        "events": m.events,
        "unique_customers": len(m.customers),
        "new_customers": new,
        "returning_customers": len(m.customers) - new,
        "orders": m.orders,
        "revenue": {k: Decimal(v).scaleb(-4) for k, v in m.revenue.items() if v},
        "payments_approved": m.payments_approved,
        "checkouts_started": m.checkouts_started,
        "payment_failures": m.payment_failures,
        "csat_responses": m.csat_responses,
        "csat_sum": m.csat_sum,
        "nps_responses": nps,
        "nps_promoters": m.nps_promoters,
        "nps_detractors": m.nps_detractors,
        "sentiment_count": m.sentiment_count,
        "contacts": m.contacts,
        "fcr_eligible": m.fcr_eligible,
        "repeat_contacts": m.repeat_contacts,
        "channel_switches_after_failure": m.channel_switches,
        "complaints": m.complaints,
    }


def _check_view(client: ClickHouse, database: str, s: Stream, period: str) -> int:
    expected = recompute(s.accepted, _PERIOD[period])
    new = count_new_customers(s.accepted, _PERIOD[period])
    result = client.query(f"SELECT * FROM {database}.cx_{period}")
    got: dict[BucketKey, dict[str, Any]] = {}
    for values in result.result_rows:
        row = dict(zip(result.column_names, values, strict=True))
        key = (_ms(row[period]), row["channel"], row["event_type"], row["country"], row["segment"])
        got[key] = row
    assert got.keys() == expected.keys()
    for key, m in expected.items():
        row = got[key]
        want = _expected_row(m, new.get(key, 0))
        assert {k: row[k] for k in want} == want, key
        if m.sentiment_count:
            assert row["sentiment_avg"] == pytest.approx(m.sentiment_sum / m.sentiment_count)
        if m.csat_responses:
            assert row["csat_avg"] == pytest.approx(m.csat_sum / m.csat_responses)
        if m.fcr_eligible:
            assert row["fcr_rate"] == pytest.approx(m.fcr_resolved / m.fcr_eligible)
        for name, values in (("wait", m.wait_seconds), ("handle", m.handle_seconds)):
            if not values:
                assert row[f"{name}_p50"] is None and row[f"{name}_p90"] is None
                continue
            low, high = min(values), max(values)
            p50, p90 = row[f"{name}_p50"], row[f"{name}_p90"]
            assert low - 0.01 <= p50 <= p90 + 0.01 and p90 <= high + 0.01, (key, values, p50, p90)
            if len(set(values)) == 1:
                assert p50 == pytest.approx(low, abs=0.01)
    return len(got)


# --------------------------------------------------------------------------- tests


def test_views_equal_the_recomputation_after_crash_replay_and_duplicate_inserts(
    db: tuple[ClickHouse, str], stream: Stream
) -> None:
    client, database = db
    assert stream.late > 0 and len(stream.accepted) + stream.late == len(stream.events)
    client.command(f"SYSTEM STOP MERGES {database}.cx_partials")  # count what was inserted
    started = time.perf_counter()
    _load(client, database, stream)
    loaded = time.perf_counter() - started
    written = sum(len(b) for b in stream.inserts)
    keys = len({r.key for b in stream.inserts for r in b})
    distinct = len({(r.key, r.version) for b in stream.inserts for r in b})
    stored = client.query(f"SELECT count() FROM {database}.cx_partials").result_rows[0][0]
    assert written > distinct > keys  # crashed attempts re-emitted rows; rolling versions
    assert stored == written  # the identical replayed batches were dropped on insert
    started = time.perf_counter()
    counts = {period: _check_view(client, database, stream, period) for period in _PERIOD}
    queried = time.perf_counter() - started
    assert counts["minute"] > counts["hour"] > counts["day"] > 0
    # merged down to one row per key, the views say the same
    client.command(f"SYSTEM START MERGES {database}.cx_partials")
    client.command(f"OPTIMIZE TABLE {database}.cx_partials FINAL")
    assert client.query(f"SELECT count() FROM {database}.cx_partials").result_rows[0][0] == keys
    _check_view(client, database, stream, "minute")
    print(
        f"inserted {written} partial rows ({keys} keys) in {loaded:.2f}s; "
        f"views checked in {queried:.2f}s: {counts}"
    )


def test_hours_and_days_are_the_sums_of_their_minutes(
    db: tuple[ClickHouse, str], stream: Stream
) -> None:
    client, database = db
    _load(client, database, stream)
    additive = [
        "events",
        "orders",
        "payments_approved",
        "checkouts_started",
        "payment_failures",
        "csat_responses",
        "csat_sum",
        "nps_responses",
        "sentiment_count",
        "contacts",
        "fcr_eligible",
        "repeat_contacts",
        "channel_switches_after_failure",
        "complaints",
    ]
    dims = "channel, event_type, country, segment"
    for period, rollup in (("hour", "toStartOfHour(minute)"), ("day", "toDate(minute)")):
        sums = ", ".join(f"sum({c}) AS {c}" for c in additive)
        diff = " OR ".join(f"p.{c} != m.{c}" for c in additive)
        mismatches = client.query(
            f"""
            SELECT count() FROM {database}.cx_{period} AS p
            FULL OUTER JOIN (
                SELECT {rollup} AS {period}, {dims}, {sums},
                       sumMap(revenue) AS revenue,
                       max(unique_customers) AS most, sum(unique_customers) AS all_minutes
                FROM {database}.cx_minute GROUP BY {period}, {dims}
            ) AS m USING ({period}, {dims})
            WHERE {diff} OR p.revenue != m.revenue
               OR p.unique_customers < m.most OR p.unique_customers > m.all_minutes
            """
        ).result_rows[0][0]
        assert mismatches == 0, period


def test_customer_360_view_folds_merges_and_keeps_the_latest_version(
    db: tuple[ClickHouse, str], stream: Stream
) -> None:
    client, database = db
    _load(client, database, stream)
    by_customer: dict[str, list[ResolvedEvent]] = {}
    for e in stream.events:  # late ones too: the 360 has no windows
        by_customer.setdefault(e["customer_id"], []).append(e)
    # C0001 (partition 1) is absorbed by C0000 (partition 0)
    absorbed_side = Customer360Book()
    for e in by_customer["C0001"]:
        absorbed_side.add(e, 0)
    absorbed_side.flush()
    absorbed_side.apply_merge({"survivor": "C0000", "absorbed": "C0001", "merged_at": 0}, 0)
    _insert(client, database, absorbed_side.flush())

    result = client.query(f"SELECT * FROM {database}.customer_360_v")
    rows = {r[0]: dict(zip(result.column_names, r, strict=True)) for r in result.result_rows}
    assert len(rows) == len(by_customer) - 1 and "C0001" not in rows
    for customer_id, mine in by_customer.items():
        if customer_id == "C0001":
            continue
        if customer_id == "C0000":
            mine = mine + by_customer["C0001"]
        times = [e["record"]["occurred_at"] for e in mine]
        row = rows[customer_id]
        assert row["events"] == len(mine)
        assert (_ms(row["first_seen"]), _ms(row["last_seen"])) == (min(times), max(times))
        assert row["channels"] == sorted({e["record"]["channel"] for e in mine})
        assert row["orders"] == sum(e["record"]["event_type"] == "order_placed" for e in mine)
        assert row["merged_ids"] == (1 if customer_id == "C0000" else 0)
        assert row["identifiers_count"] >= 1


def test_customer_360_view_says_which_customers_are_households(
    db: tuple[ClickHouse, str], stream: Stream
) -> None:
    # a household (``h...``: a shared device or email's own customer, identity found it
    # shared) is flagged so that no report counts it as a person
    client, database = db
    person = stream.events[0]
    household = "h" + person["customer_id"][1:] + "-tablet"
    book = Customer360Book()
    book.add(person, 0)
    book.add({**stream.events[1], "customer_id": household}, 1)
    _insert(client, database, book.flush())
    result = client.query(f"SELECT customer_id, household FROM {database}.customer_360_v")
    assert dict(result.result_rows) == {person["customer_id"]: 0, household: 1}


def test_alerts_minute(db: tuple[ClickHouse, str]) -> None:
    client, database = db
    now = int(time.time() * 1000)
    state = AggregatorState(0)
    for rule, severity in [("r1", "high"), ("r1", "high"), ("r2", "low")]:
        state.add_alert(rule, severity, now)
    _insert(client, database, state.flush_alerts(now))
    state.add_alert("r1", "high", now)
    _insert(client, database, state.flush_alerts(now))  # a newer version replaces the first
    got = client.query(f"SELECT rule, severity, alerts FROM {database}.alerts_minute ORDER BY rule")
    assert got.result_rows == [("r1", "high", 3), ("r2", "low", 1)]


def test_every_table_view_and_column_has_a_comment(db: tuple[ClickHouse, str]) -> None:
    client, database = db
    names = ", ".join(f"'{n}'" for n in OUR_OBJECTS)
    tables = client.query(
        f"SELECT name, comment FROM system.tables WHERE database = '{database}' AND name IN ({names})"
    ).result_rows
    assert sorted(n for n, _ in tables) == sorted(OUR_OBJECTS)
    assert [n for n, c in tables if not c] == []
    columns = client.query(
        f"SELECT table, name FROM system.columns "
        f"WHERE database = '{database}' AND table IN ({names}) AND comment = ''"
    ).result_rows
    assert columns == []


def test_views_through_sqlalchemy_and_the_clickhouse_connect_dialect(
    db: tuple[ClickHouse, str], stream: Stream, chdb_path: Path
) -> None:
    sa = pytest.importorskip("sqlalchemy", reason="SQLAlchemy 2.x is a test-only dependency")
    client, database = db
    _load(client, database, stream)
    engine = sa.create_engine(
        "clickhousedb://", connect_args={"interface": "chdb", "path": str(chdb_path)}
    )
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            views = set(inspector.get_view_names(schema=database))
            assert {"cx_minute", "cx_hour", "cx_day", "customer_360_v", "alerts_minute"} <= views
            cx_hour = sa.Table("cx_hour", sa.MetaData(), autoload_with=conn, schema=database)
            assert {"hour", "events", "unique_customers", "csat_avg", "wait_p90"} <= set(
                cx_hour.c.keys()
            )
            query = (  # what a BI tool sends: plain SQL over the view
                sa.select(
                    cx_hour.c.channel,
                    sa.func.sum(cx_hour.c.events).label("events"),
                    sa.func.sum(cx_hour.c.contacts).label("contacts"),
                )
                .where(cx_hour.c.hour >= sa.bindparam("since"))
                .group_by(cx_hour.c.channel)
                .order_by(cx_hour.c.channel)
            )
            since = datetime.fromtimestamp(0, tz=UTC).replace(tzinfo=None)
            got = [tuple(r) for r in conn.execute(query, {"since": since})]
            text = conn.execute(
                sa.text(f"SELECT count() FROM {database}.customer_360_v WHERE events > :n"),
                {"n": 0},
            ).scalar()
    finally:
        engine.dispose()
    expected: dict[str, list[int]] = {}
    for e in stream.accepted:
        counts = expected.setdefault(e["record"]["channel"], [0, 0])
        counts[0] += 1
    for (_, channel, *_), m in recompute(stream.accepted).items():
        expected[channel][1] += m.contacts
    assert got == [(c, *v) for c, v in sorted(expected.items())]
    assert text == len({e["customer_id"] for e in stream.events})
