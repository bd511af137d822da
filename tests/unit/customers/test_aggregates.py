"""Rolling aggregates: windows, lateness, replays, measures, merges, state, and a property
test that the streamed partials always add up to the plain recomputation. No broker."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.customers.aggregates import AddOutcome, AggregatorState
from streams.customers.c360 import Customer360Book, Customer360State
from streams.customers.measures import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    REPEAT_CONTACT_MS,
    SWITCH_AFTER_FAILURE_MS,
    Measures,
    minute_of,
    segment_of,
)
from streams.customers.recompute import count_new_customers, recompute
from streams.customers.rows import (
    AGGREGATE_COLUMNS,
    CUSTOMER_360_COLUMNS,
    AggregateRow,
    combine,
    dedupe_token,
    rows_for_clickhouse,
)
from streams.wire.model import (
    MergeNotice,
    ResolvedEvent,
)
from tests.unit.customers.aggregate_events import (
    LATE,
    NOW,
    T0,
    call,
    commerce,
    contact,
    ev,
    failure,
    identifiers_of,
    mobile,
    run,
    social,
    totals,
    web,
)

# --------------------------------------------------------------------------- windows


def test_minute_boundaries() -> None:
    m = T0 + 10 * MINUTE_MS
    assert minute_of(m) == m
    assert minute_of(m - 1) == m - MINUTE_MS
    assert minute_of(m + MINUTE_MS - 1) == m
    assert minute_of(-1) == -MINUTE_MS


def test_events_exactly_on_a_boundary_open_the_next_window() -> None:
    m = T0 + 10 * MINUTE_MS
    _, rows, _ = run(
        [ev("a", m - 1), ev("a", m), ev("a", m + MINUTE_MS - 1), ev("a", m + MINUTE_MS)]
    )
    by_minute = {k[0]: v.events for k, v in combine(rows).items()}
    assert by_minute == {m - MINUTE_MS: 1, m: 2, m + MINUTE_MS: 1}


def test_out_of_order_within_lateness_updates_its_window() -> None:
    m = T0 + 10 * MINUTE_MS
    state, rows1, _ = run([ev("a", m + 4 * MINUTE_MS + 59_999)])
    assert state.add(ev("b", m), NOW) is AddOutcome.APPLIED  # 5 min - 1 ms behind: window open
    rows = rows1 + state.flush(NOW)
    got = combine(rows)
    assert got[(m, "web", "page_view", "GB", "registered")].customers == {"b"}
    assert state.late_events == 0


def test_window_ending_exactly_at_the_watermark_is_late_and_counted() -> None:
    m = T0 + 10 * MINUTE_MS
    state, rows, _ = run([ev("a", m + MINUTE_MS + LATE)])  # watermark = m + 1 min
    assert state.watermark == m + MINUTE_MS
    assert state.add(ev("b", m + MINUTE_MS - 1), NOW) is AddOutcome.LATE
    assert state.add(ev("c", m + MINUTE_MS), NOW) is AddOutcome.APPLIED
    assert state.add(ev("d", m - 3 * DAY_MS), NOW) is AddOutcome.LATE
    assert state.late_events == 2
    rows += state.flush(NOW)
    assert totals(rows).customers == {"a", "c"}  # late events change nothing (raw table has them)


def test_closed_windows_are_emitted_once_and_evicted_open_ones_only_when_rolling() -> None:
    m = T0 + 10 * MINUTE_MS
    state = AggregatorState(3)
    state.add(ev("a", m), NOW)
    assert state.flush(NOW, final_only=True) == []  # open, not final
    rolling = state.flush(NOW)
    assert [(r.minute, r.version, r.source_partition) for r in rolling] == [(m, 1, 3)]
    assert state.flush(NOW) == []  # unchanged since: nothing to write
    state.add(ev("b", m + 1), NOW)
    state.add(ev("c", m + MINUTE_MS + LATE), NOW)  # closes minute m
    final = state.flush(NOW, final_only=True)
    assert [(r.minute, r.version, r.measures.customers) for r in final] == [(m, 2, {"a", "b"})]
    assert all(k[1] != m for k in state.partials)  # evicted
    assert state.flush(NOW, final_only=True) == []


# --------------------------------------------------------------------------- replays


def _journey(n: int = 400, seed: int = 3) -> list[ResolvedEvent]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        customer = f"c{rnd.randrange(12)}"
        ts = T0 + rnd.randrange(40 * MINUTE_MS)
        kind = rnd.randrange(6)
        if kind == 0:
            out.append(call(customer, ts, csat=rnd.choice([None, 4]), nps=rnd.choice([None, 9])))
        elif kind == 1:
            out.append(failure(customer, ts))
        elif kind == 2:
            out.append(ev(customer, ts, "web", "payment", commerce("approved", rnd.random() * 99)))
        else:
            out.append(ev(customer, ts))
    out.sort(key=lambda e: e["record"]["occurred_at"] + rnd.randrange(LATE))
    return out


def test_replay_after_restoring_the_saved_state_writes_the_same_rows() -> None:
    events = _journey()
    state = AggregatorState(1, pane_events=50)
    first = [state.add(e, NOW, offset=i) for i, e in enumerate(events[:100])]
    assert set(first) == {AddOutcome.APPLIED}
    written = state.flush(NOW)
    saved = json.dumps(state.to_dict())  # what the changelog holds after batch 1

    batch = list(enumerate(events[100:250], start=100))
    original = AggregatorState.from_dict(json.loads(saved))
    rows_a: list[AggregateRow] = []
    for offset, e in batch:  # small batches
        original.add(e, NOW, offset=offset)
        if offset % 7 == 0:
            rows_a += original.flush(NOW)
    rows_a += original.flush(NOW)

    # crash: restore batch 1's state, replay the same events in one big batch
    replay = AggregatorState.from_dict(json.loads(saved))
    for offset, e in batch:
        replay.add(e, NOW, offset=offset)
    rows_b = replay.flush(NOW)

    latest_a = {r.key: r for r in rows_a}
    latest_b = {r.key: r for r in rows_b}
    assert latest_a.keys() == latest_b.keys()
    for key, a in latest_a.items():
        b = latest_b[key]
        assert (a.version, a.measures.canonical()) == (b.version, b.measures.canonical())
    # everything the crashed run wrote is replaced or identical: no double count
    everything = written + rows_a + rows_b
    expected = recompute(events[:250])
    assert {k: m.canonical() for k, m in combine(everything).items()} == {
        k: m.canonical() for k, m in expected.items()
    }


def test_state_ahead_of_the_committed_offsets_skips_what_it_already_holds() -> None:
    events = _journey(120)
    state = AggregatorState(0)
    for i, e in enumerate(events):
        state.add(e, NOW, offset=1000 + i)
    rows = state.flush(NOW)
    restored = AggregatorState.from_dict(json.loads(json.dumps(state.to_dict())))
    again = [restored.add(e, NOW, offset=1000 + i) for i, e in enumerate(events)]
    assert set(again) == {AddOutcome.REPLAYED}
    assert restored.replayed == len(events)
    assert restored.flush(NOW) == []
    assert {k: m.canonical() for k, m in combine(rows).items()} == {
        k: m.canonical() for k, m in recompute(events).items()
    }


def test_without_offsets_the_same_batch_twice_from_the_same_state_gives_identical_rows() -> None:
    events = _journey(150)
    saved = AggregatorState(0, pane_events=40).to_dict()
    outs = []
    for _ in range(2):
        state = AggregatorState.from_dict(saved)
        for e in events:
            state.add(e, NOW)
        outs.append({(r.key, r.version): r.measures.canonical() for r in state.flush(NOW)})
    assert outs[0] == outs[1]


# --------------------------------------------------------------------------- measures


def test_commerce_measures() -> None:
    t = T0 + MINUTE_MS
    _, rows, _ = run(
        [
            ev("a", t, "web", "checkout_step", web("cart", True)),
            ev("a", t, "web", "checkout_step", web("shipping", True)),
            ev("a", t, "web", "order_placed", commerce("approved", 10.0, items=3)),
            ev("a", t, "web", "order_placed", commerce("approved", 10.0, items=None)),
            ev("a", t, "web", "payment", commerce("approved", 10.01)),
            ev("a", t, "mobile", "payment", commerce("approved", 0.1, "EUR")),
            ev("a", t, "web", "payment", commerce("declined", 99.0)),
            ev("a", t, "web", "payment", commerce("failed", 99.0)),
            ev("a", t, "web", "refund", commerce("refunded", 5.0)),
        ]
    )
    m = totals(rows)
    assert (m.checkouts_started, m.orders, m.basket_items, m.basket_orders) == (1, 2, 3, 1)
    assert (m.payments_approved, m.payment_failures) == (2, 2)
    assert m.revenue == {"GBP": 100_100, "EUR": 1_000}


def test_experience_measures() -> None:
    t = T0 + MINUTE_MS
    _, rows, _ = run(
        [
            ev("a", t, "contact_centre", "survey_response", contact(csat=5, nps=10)),
            ev("b", t, "contact_centre", "survey_response", contact(csat=2, nps=7)),
            ev("c", t, "contact_centre", "survey_response", contact(csat=None, nps=6)),
            ev("a", t, "social", "mention", social(0.5)),
            ev("b", t, "social", "mention", social(-0.25)),
            ev("c", t, "social", "mention", social(None)),
            call("a", t, wait=10.0, handle=100.0, resolved=True, transferred=False),
            call("b", t, wait=20.0, handle=None, resolved=True, transferred=True),
            call("c", t, wait=None, handle=300.0, resolved=None),
            ev("d", t, "contact_centre", "complaint", contact(complaint=True)),
            ev("d", t, "contact_centre", "email", contact(complaint=True)),
        ]
    )
    m = totals(rows)
    assert (m.csat_responses, m.csat_sum) == (2, 7)
    assert (m.nps_promoters, m.nps_passives, m.nps_detractors) == (1, 1, 1)
    assert (m.sentiment_count, m.sentiment_sum) == (2, 0.25)
    assert m.contacts == 5  # survey responses are not contacts
    assert sorted(m.wait_seconds) == [10.0, 20.0, 30.0, 30.0]
    assert sorted(m.handle_seconds) == [100.0, 200.0, 200.0, 300.0]
    assert (m.fcr_eligible, m.fcr_resolved) == (4, 3)
    assert m.complaints == 2  # the complaint event and the email flagged as one


def test_repeat_contact_window_is_seven_days_inclusive() -> None:
    t = T0 + MINUTE_MS
    events = [
        call("a", t),
        call("a", t + REPEAT_CONTACT_MS),
        call("b", t),
        call("b", t + REPEAT_CONTACT_MS + 1),
    ]
    _, rows, _ = run(sorted(events, key=lambda e: e["record"]["occurred_at"]))
    got = {k[0]: m.repeat_contacts for k, m in combine(rows).items()}
    assert got == {t: 0, t + REPEAT_CONTACT_MS: 1}  # a's second is a repeat, b's is not


def test_a_late_earlier_contact_turns_the_later_one_into_a_repeat() -> None:
    t = T0 + 10 * MINUTE_MS
    later, earlier = call("a", t + 2 * MINUTE_MS), call("a", t)
    state, rows, _ = run([later])
    assert totals(rows).repeat_contacts == 0
    assert state.add(earlier, NOW) is AddOutcome.APPLIED
    rows += state.flush(NOW)
    got = combine(rows)
    assert (
        got[(t + 2 * MINUTE_MS, "contact_centre", "call", "GB", "registered")].repeat_contacts == 1
    )
    assert got[(t, "contact_centre", "call", "GB", "registered")].repeat_contacts == 0
    assert totals(rows).repeat_contacts == 1


def test_same_millisecond_contacts_are_ordered_by_event_id() -> None:
    t = T0 + MINUTE_MS
    a = ev("a", t, "contact_centre", "call", contact(), event_id="x2")
    b = ev("a", t, "contact_centre", "chat", contact(), event_id="x1")
    for order in ([a, b], [b, a]):
        _, rows, _ = run(order)
        got = combine(rows)
        assert got[(t, "contact_centre", "call", "GB", "registered")].repeat_contacts == 1
        assert got[(t, "contact_centre", "chat", "GB", "registered")].repeat_contacts == 0


def test_channel_switch_within_an_hour_of_a_failed_self_service_step_in_any_order() -> None:
    t = T0 + 10 * MINUTE_MS
    cases = [
        (failure("a", t), call("a", t + SWITCH_AFTER_FAILURE_MS), 1),
        (failure("a", t, "login_failed"), call("a", t), 1),
        (failure("a", t), call("a", t + SWITCH_AFTER_FAILURE_MS + 1), 0),
        (failure("a", t + 1), call("a", t), 0),  # the contact came first
        (failure("b", t), call("a", t + 1), 0),  # someone else
        (ev("a", t, "mobile", "checkout_failed", mobile()), call("a", t + 5), 1),
    ]
    for fail, contact_event, expected in cases:
        for order in ([fail, contact_event], [contact_event, fail]):
            _, rows, outcomes = run(order, lateness_ms=2 * HOUR_MS)
            assert set(outcomes) == {AddOutcome.APPLIED}
            assert totals(rows).channel_switches == expected, (fail, contact_event)


def test_segment_is_bounded_and_explicit_values_must_be_known() -> None:
    rec = ev("a", T0)["record"]
    assert segment_of(rec) == "registered"
    cases = [
        (identifiers_of(anonymous_id="x"), {}, "anonymous"),
        (identifiers_of(anonymous_id="x", email="e"), {}, "contactable"),
        (identifiers_of(login_id="l"), {}, "registered"),
        (identifiers_of(loyalty_id="l", customer_id="c"), {}, "loyalty"),
        (identifiers_of(anonymous_id="x"), {"segment": " VIP "}, "vip"),
        (identifiers_of(anonymous_id="x"), {"segment": "whales"}, "anonymous"),
    ]
    for ids, props, expected in cases:
        assert segment_of(ev("a", T0, ids=ids, properties=props)["record"]) == expected


# --------------------------------------------------------------------------- merges, alerts


def test_merge_carries_contact_memory_to_the_survivor() -> None:
    t = T0 + 10 * MINUTE_MS
    notice: MergeNotice = {"survivor": "old", "absorbed": "new", "merged_at": t}
    # the survivor has memory here: folded in place
    state, _, _ = run([call("new", t), failure("old", t - 1)])
    assert state.apply_merge(notice) is None
    assert set(state.memory) == {"old"}
    state.add(call("old", t + MINUTE_MS), NOW)
    assert totals(state.flush(NOW)).repeat_contacts == 1
    # different partitions: a handover travels to the survivor's partition
    absorbed_side, _, _ = run([call("new", t)])
    survivor_side = AggregatorState(1)
    handover = absorbed_side.apply_merge(notice)
    assert handover is not None and "new" not in absorbed_side.memory
    assert survivor_side.apply_merge(notice) is None  # nothing to move there
    survivor_side.accept_handover(json.loads(json.dumps(handover)))
    survivor_side.add(call("old", t + MINUTE_MS), NOW)
    assert totals(survivor_side.flush(NOW)).repeat_contacts == 1


def test_uniques_count_ids_as_stamped_at_event_time() -> None:
    t = T0 + MINUTE_MS
    state, rows, _ = run([ev("new", t)])
    state.apply_merge({"survivor": "old", "absorbed": "new", "merged_at": t})
    state.add(ev("old", t + 1), NOW)
    rows += state.flush(NOW)
    assert totals(rows).customers == {"new", "old"}  # the documented over-count


def test_alerts_by_rule_and_severity() -> None:
    t = T0 + MINUTE_MS
    state = AggregatorState(2)
    for rule, severity in [("r1", "high"), ("r1", "high"), ("r2", "low")]:
        assert state.add_alert(rule, severity, t) is AddOutcome.APPLIED
    state.add_alert("r1", "high", t + MINUTE_MS + LATE)
    assert state.add_alert("r1", "high", t) is AddOutcome.LATE
    rows = state.flush_alerts(NOW, final_only=True)
    assert sorted((r.rule, r.severity, r.alerts, r.version) for r in rows) == [
        ("r1", "high", 2, 2),
        ("r2", "low", 1, 1),
    ]
    assert state.late_alerts == 1
    restored = AggregatorState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert [r.alerts for r in restored.flush_alerts(NOW)] == [1]


# --------------------------------------------------------------------------- state and rows


def test_state_round_trips_and_customer_memory_can_live_apart() -> None:
    events = _journey(300)
    state = AggregatorState(5, lateness_ms=2 * MINUTE_MS, pane_events=64)
    for i, e in enumerate(events[:200]):
        state.add(e, NOW, offset=i)
    state.flush(NOW)
    whole = json.loads(json.dumps(state.to_dict()))
    table: dict[str, Any] = {}
    for cid, entry in state.take_customer_changes().items():
        if entry is None:
            table.pop(cid, None)
        else:
            table[cid] = json.loads(json.dumps(entry))
    core = state.to_dict(customers=False)
    assert "customers" not in core
    a = AggregatorState.from_dict(whole)
    b = AggregatorState.from_dict(core, customers=table)
    assert a.to_dict() == b.to_dict() == state.to_dict()
    assert (a.lateness_ms, a.pane_events, a.source_partition) == (2 * MINUTE_MS, 64, 5)
    for i, e in enumerate(events[200:], start=200):
        assert a.add(e, NOW, offset=i) == b.add(e, NOW, offset=i)
    assert [(r.key, r.version) for r in a.flush(NOW)] == [(r.key, r.version) for r in b.flush(NOW)]
    with pytest.raises(ValueError, match="format"):
        AggregatorState.from_dict({**whole, "format": 99})


def test_memory_is_compacted_and_evicted_beyond_its_horizon() -> None:
    t = T0 + MINUTE_MS
    state, _, _ = run([call("a", t), failure("b", t)])
    assert set(state.memory) == {"a", "b"}
    state.add(ev("z", t + 2 * HOUR_MS), NOW)
    state.flush(NOW)
    assert "b" not in state.memory  # failure older than 1 h + a minute behind the watermark
    assert state.memory["a"].contacts == [] and state.memory["a"].contact_closed == t
    state.add(ev("z", t + REPEAT_CONTACT_MS + 2 * HOUR_MS), NOW)
    state.flush(NOW)
    assert state.memory == {}
    assert set(state.take_customer_changes()) == {"a", "b"}


def test_panes_bound_the_state_and_still_add_up() -> None:
    events = _journey(500)
    state = AggregatorState(0, pane_events=25)
    rows: list[AggregateRow] = []
    biggest = 0
    for i, e in enumerate(events):
        state.add(e, NOW, offset=i)
        biggest = max(biggest, sum(p.events for p in state.partials.values()))
        if i % 10 == 0:
            rows += state.flush(NOW, final_only=True)
    rows += state.flush(NOW)
    assert biggest <= 25 + 10  # this pane, and the last one until the next flush
    assert len({r.pane for r in rows}) == 20
    assert {k: m.canonical() for k, m in combine(rows).items()} == {
        k: m.canonical() for k, m in recompute(events).items()
    }


def test_rows_for_clickhouse_and_dedupe_tokens() -> None:
    t = T0 + MINUTE_MS
    _, rows, _ = run([ev("b", t, "web", "payment", commerce("approved", 12.5)), ev("a", t)])
    table, columns, values = rows_for_clickhouse(rows)
    assert table == "cx_partials" and columns == list(AGGREGATE_COLUMNS)
    [row] = [dict(zip(columns, v, strict=True)) for v in values if v[2] == "payment"]
    assert row["minute"] == t // 1000 and row["revenue"] == {"GBP": Decimal("12.5")}
    assert row["customers"] == ["b"]
    assert dedupe_token(rows) == dedupe_token(list(reversed(rows)))
    assert dedupe_token(rows) != dedupe_token(rows[:1])
    with pytest.raises(ValueError):
        rows_for_clickhouse([])
    book = Customer360Book()
    book.add(ev("a", t), NOW)
    mixed: list[Any] = [*rows, *book.flush()]
    with pytest.raises(ValueError):
        rows_for_clickhouse(mixed)


# --------------------------------------------------------------------------- customer 360


def test_customer_360_state() -> None:
    t = T0 + MINUTE_MS
    book = Customer360Book()
    events = [
        ev("a", t + 5, ids=identifiers_of(customer_id="a", email="a@x")),
        ev("a", t, "web", "order_placed", commerce("approved", 10.0)),
        ev("a", t + 1, "web", "payment", commerce("approved", 10.0)),
        ev("a", t + 2, "contact_centre", "survey_response", contact(csat=2, nps=3)),
        ev("a", t + 1, "contact_centre", "survey_response", contact(csat=5, nps=10)),
        ev("a", t + 3, "contact_centre", "complaint", contact(complaint=True)),
        *[ev("a", t + i, "social", "mention", social(s)) for i, s in enumerate([1, 1, 0, 0, 0, 0])],
        ev("a", t, ids=identifiers_of(loyalty_id="L1")),
    ]
    for offset, e in enumerate(events):
        assert book.add(e, NOW, offset=offset)
    assert not book.add(events[0], NOW, offset=0)  # replay after restore
    [row] = book.flush()
    assert row.customer_id == "a" and row.version == len(events)
    assert (row.first_seen, row.last_seen, row.events) == (t, t + 5, len(events))
    assert row.channels == ("contact_centre", "social", "web")
    assert len(row.identifier_hashes) == 3  # customer_id a, email a@x, loyalty L1
    assert (row.orders, row.payments, dict(row.lifetime_value)) == (1, 1, {"GBP": 100_000})
    assert (row.last_csat, row.last_nps, row.last_csat_at) == (2, 3, t + 2)  # latest by event time
    assert (row.contacts, row.complaints) == (1, 1)
    assert row.sentiment_count == 6 and row.sentiment_recent == pytest.approx(0.2)
    assert row.segment == "loyalty"
    assert book.flush() == []  # nothing touched
    assert Customer360State.from_dict(book.store["a"]).row("a") == row

    book.set_alert("a", "churn_risk", True, NOW)
    book.set_alert("a", "churn_risk", True, NOW)  # idempotent
    book.apply_merge({"survivor": "z", "absorbed": "a", "merged_at": t}, NOW)
    book.apply_merge({"survivor": "a", "absorbed": "unknown", "merged_at": t}, NOW)
    [row2] = book.flush()
    assert (row2.open_alerts, row2.merged_into, row2.version) == (
        ("churn_risk",),
        "z",
        row.version + 2,
    )
    table, columns, values = rows_for_clickhouse([row2])
    assert table == "customer_360" and columns == list(CUSTOMER_360_COLUMNS)
    as_dict = dict(zip(columns, values[0], strict=True))
    assert as_dict["lifetime_value"] == {"GBP": Decimal(10)}
    for name in columns:  # every value in its column
        expected = getattr(row2, name)
        assert as_dict[name] == (list(expected) if isinstance(expected, tuple) else expected) or (
            name == "lifetime_value"
        )


# --------------------------------------------------------------------------- the property


_COUNTRIES = ("GB", "DE", None)


@st.composite
def _events(draw: st.DrawFn) -> list[ResolvedEvent]:
    n = draw(st.integers(1, 60))
    out = []
    for i in range(n):
        customer = f"c{draw(st.integers(0, 7))}"
        day = draw(st.sampled_from([0, 0, 0, 1, 7, 8]))
        ts = T0 + day * DAY_MS + draw(st.integers(0, 3 * HOUR_MS))
        if draw(st.booleans()):
            ts -= ts % MINUTE_MS  # exactly on a boundary
        country = draw(st.sampled_from(_COUNTRIES))
        kind = draw(st.integers(0, 8))
        eid = f"e{i:03d}"
        if kind == 0:
            e = ev(
                customer,
                ts,
                "contact_centre",
                draw(st.sampled_from(["call", "chat", "email", "complaint"])),
                contact(
                    wait=draw(st.sampled_from([None, 5.0, 60.0])),
                    resolved=draw(st.sampled_from([None, True, False])),
                    transferred=draw(st.booleans()),
                    complaint=draw(st.booleans()),
                ),
                country=country,
                event_id=eid,
            )
        elif kind == 1:
            e = ev(
                customer,
                ts,
                "contact_centre",
                "survey_response",
                contact(
                    csat=draw(st.sampled_from([None, 1, 5])),
                    nps=draw(st.sampled_from([None, 0, 7, 9])),
                ),
                country=country,
                event_id=eid,
            )
        elif kind == 2:
            e = ev(
                customer,
                ts,
                draw(st.sampled_from(["web", "mobile"])),
                draw(st.sampled_from(["checkout_failed", "login_failed"])),
                web("payment", False),
                country=country,
                event_id=eid,
            )
        elif kind == 3:
            e = ev(
                customer,
                ts,
                "web",
                "payment",
                commerce(
                    draw(st.sampled_from(["approved", "declined", "failed"])),
                    draw(st.sampled_from([0.01, 9.99, 120.5])),
                    draw(st.sampled_from(["GBP", "EUR"])),
                ),
                country=country,
                event_id=eid,
            )
        elif kind == 4:
            e = ev(
                customer,
                ts,
                "web",
                "order_placed",
                commerce("approved", items=draw(st.sampled_from([None, 1, 4]))),
                country=country,
                event_id=eid,
            )
        elif kind == 5:
            e = ev(
                customer,
                ts,
                "social",
                "mention",
                social(draw(st.sampled_from([None, -0.5, 0.25]))),
                country=country,
                event_id=eid,
            )
        elif kind == 6:
            e = ev(
                customer,
                ts,
                "web",
                "checkout_step",
                web(draw(st.sampled_from(["cart", "payment"]))),
                country=country,
                event_id=eid,
            )
        else:
            e = ev(
                customer,
                ts,
                "web",
                "page_view",
                None,
                country=country,
                event_id=eid,
                ids=draw(
                    st.sampled_from(
                        [identifiers_of(anonymous_id="x"), identifiers_of(customer_id=customer)]
                    )
                ),
            )
        out.append(e)
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=_events(),
    partitions=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    pane_events=st.sampled_from([0, 1, 3, 10]),
    lateness=st.sampled_from([0, MINUTE_MS, LATE]),
    use_offsets=st.booleans(),
)
def test_streamed_partials_always_add_up_to_the_recomputation(
    events: list[ResolvedEvent],
    partitions: int,
    seed: int,
    pane_events: int,
    lateness: int,
    use_offsets: bool,
) -> None:
    """Any events, partitioned by customer, arriving out of order (some beyond the
    lateness), cut into random batches, with a crash and a replay from the last saved state:
    the latest partials per key, summed per (minute, dims), equal ``recompute`` of the
    accepted events, and the late ones are all counted."""
    rnd = random.Random(seed)
    home = {f"c{i}": rnd.randrange(partitions) for i in range(8)}
    jitter = max(lateness, MINUTE_MS)
    arrival = sorted(events, key=lambda e: e["record"]["occurred_at"] + rnd.randrange(2 * jitter))
    streams: list[list[ResolvedEvent]] = [[] for _ in range(partitions)]
    for e in arrival:
        streams[home[e["customer_id"]]].append(e)

    written: list[AggregateRow] = []  # everything ever inserted, replays included
    accepted: list[ResolvedEvent] = []
    late = 0
    for partition, stream in enumerate(streams):
        state = AggregatorState(partition, lateness_ms=lateness, pane_events=pane_events)
        saved = (0, json.dumps(state.to_dict()))
        crash_at = rnd.randrange(len(stream) + 1)
        crashed = False
        outcome: dict[int, AddOutcome] = {}
        i = 0
        while i < len(stream):
            size = rnd.randint(1, 6)
            for j in range(i, min(i + size, len(stream))):
                outcome[j] = state.add(stream[j], NOW, offset=j if use_offsets else None)
                if not crashed and j == crash_at:  # killed mid-batch: some rows got out
                    written.extend(state.flush(NOW, final_only=rnd.random() < 0.5))
                    crashed = True
                    state = AggregatorState.from_dict(json.loads(saved[1]))
                    break
            else:
                written.extend(state.flush(NOW, final_only=rnd.random() < 0.3))
                i = min(i + size, len(stream))
                saved = (i, json.dumps(state.to_dict()))
                continue
            i = saved[0]  # re-read from the committed position
        written.extend(state.flush(NOW))
        assert state.late_events == sum(o is AddOutcome.LATE for o in outcome.values())
        late += state.late_events
        accepted.extend(stream[j] for j, o in outcome.items() if o is AddOutcome.APPLIED)

    got = {
        k: m.canonical()
        for k, m in combine(written).items()
        if m.canonical() != Measures().canonical()
    }
    assert got == {k: m.canonical() for k, m in recompute(accepted).items()}
    assert len(accepted) + late == len(events)


def test_recompute_rolls_minutes_into_hours_and_counts_new_customers() -> None:
    events = _journey(300)
    minutes = recompute(events)
    hours = recompute(events, HOUR_MS)
    rolled: dict[tuple[int, str, str, str, str], Measures] = {}
    for (minute, *dims), m in minutes.items():
        key = (minute - minute % HOUR_MS, *dims)
        rolled.setdefault(cast(Any, key), Measures()).merge(m)
    assert {k: m.canonical() for k, m in rolled.items()} == {
        k: m.canonical() for k, m in hours.items()
    }
    new = count_new_customers(events, DAY_MS)
    assert sum(new.values()) >= len({e["customer_id"] for e in events})
