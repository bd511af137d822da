"""The customer stage over a dict store: replayed resolved events are applied once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.customers.items import event_item
from streams.customers.rows import AggregateRow
from streams.customers.stage import POSITION_SCALE, CustomerStage
from streams.ingest.stage import anchor_key
from tests.unit.customers.aggregate_events import ev, totals
from tests.unit.customers.store import (
    Store,
)

NOW = 1_750_000_000_000
HOUR_MS = 3_600_000


def batch(offset: int, customer: str, event_ids: Sequence[str]) -> list[tuple[int, Any]]:
    """One envelope at ``offset`` of partition 0 with one resolved event per id."""
    items = []
    for i, event_id in enumerate(event_ids):
        resolved = ev(customer, NOW - 30_000 + i, event_id=event_id)
        record = resolved["record"]
        items.append(
            (offset * POSITION_SCALE + i, event_item(customer, record, anchor_key(record)))
        )
    return items


def run_batches(
    stage: CustomerStage, store: Store, batches: Sequence[list[tuple[int, Any]]], now_ms: int = NOW
) -> tuple[list[AggregateRow], int]:
    rows: list[AggregateRow] = []
    duplicates = 0
    for entries in batches:
        if not stage.has_partition(0):
            stage.restore(0, store)
        out = stage.process({0: entries}, store, now_ms)
        store.apply(out)
        rows.extend(out.aggregate_rows)
        duplicates += out.duplicates
    return rows, duplicates


def new_stage(dedupe_horizon_ms: int = HOUR_MS) -> CustomerStage:
    return CustomerStage(
        1, lateness_ms=60_000, pane_events=10_000, dedupe_horizon_ms=dedupe_horizon_ms
    )


def test_a_replayed_resolved_event_in_a_new_envelope_is_counted_once() -> None:
    # The identity stage crashed after sending offsets 0 and 1 and re-sends the same events
    # (new envelope, new offset 2): aggregates must count each event id once.
    stage, store = new_stage(), Store()
    rows, duplicates = run_batches(
        stage,
        store,
        [batch(0, "c1", ["a", "b"]), batch(1, "c1", ["c"]), batch(2, "c1", ["a", "b", "d"])],
    )
    assert totals(rows).events == 4
    assert totals(rows).customers == {"c1"}
    assert duplicates == 2


def test_the_seen_ids_survive_a_restart_through_the_table() -> None:
    store = Store()
    rows_before, _ = run_batches(new_stage(), store, [batch(0, "c1", ["a", "b"])])
    restarted = new_stage()  # a new process: everything it knows comes from the store
    rows_after, duplicates = run_batches(restarted, store, [batch(5, "c1", ["b", "c"])])
    assert duplicates == 1
    assert totals([*rows_before, *rows_after]).events == 3


def test_a_duplicate_within_one_envelope_is_counted_once() -> None:
    rows, duplicates = run_batches(new_stage(), Store(), [batch(0, "c1", ["a", "a"])])
    assert (totals(rows).events, duplicates) == (1, 1)


def test_without_dedupe_the_replay_is_counted_twice() -> None:
    # The same traffic with the window off: the replay doubles the count, which is what the
    # window is for (and shows the first test can fail).
    rows, duplicates = run_batches(
        new_stage(dedupe_horizon_ms=0), Store(), [batch(0, "c1", ["a"]), batch(1, "c1", ["a"])]
    )
    assert (totals(rows).events, duplicates) == (2, 0)


def test_seen_ids_expire_after_the_horizon_and_their_entries_are_deleted() -> None:
    stage, store = new_stage(dedupe_horizon_ms=60_000), Store()
    run_batches(stage, store, [batch(0, "c1", ["a"])], now_ms=NOW)
    assert [k for k in store.data if k.startswith("seen|0|")] == ["seen|0|0"]
    _, duplicates = run_batches(stage, store, [batch(1, "c1", ["b"])], now_ms=NOW + 61_000)
    assert duplicates == 0
    assert [k for k in store.data if k.startswith("seen|0|")] == [f"seen|0|{POSITION_SCALE}"]


def test_seen_ids_are_persisted_after_everything_they_vouch_for() -> None:
    # The changelog lands in order; a crash mid-flush must not leave an event id remembered
    # while the 360, profile or aggregate it updated was lost (the replay would skip it).
    stage, store = new_stage(), Store()
    stage.restore(0, store)
    out = stage.process({0: batch(0, "c1", ["a", "b"])}, store, NOW)
    keys = [key for _, key, _ in out.state_puts]
    seen_at = [i for i, k in enumerate(keys) if k.startswith("seen|")]
    assert seen_at and keys[: seen_at[0]], keys
    assert {"prof|c1", "360|c1", "agg|0"} <= set(keys[: seen_at[0]]), keys
    assert all(k.startswith("seen|") for k in keys[seen_at[0] :]), keys


class CountingStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.append(key)
        return super().get(key, default)


def test_the_tick_reads_only_customers_whose_deadline_passed_and_survives_a_restart() -> None:
    from tests.unit.customers.detect_events import HOUR, T0, contact, only

    def stage() -> CustomerStage:
        return CustomerStage(
            1, lateness_ms=60_000, pane_events=10_000, detector=only("complaint_unresolved")
        )

    store = CountingStore()
    first = stage()
    first.restore(0, store)
    complaint = contact("complaint", T0, case="A", complaint=True, resolved=False)
    quiet = contact("call", T0, case="B")
    items = [
        (0, event_item("c-complains", complaint, anchor_key(complaint))),
        (1, event_item("c-quiet", quiet, anchor_key(quiet))),
    ]
    store.apply(first.process({0: items}, store, T0))
    assert store.data["due|0"] == {"c-complains": T0 + 48 * HOUR}

    restarted = stage()  # a new owner: the due index comes back from the table
    store.reads.clear()
    early = restarted.tick([0], store, T0 + 47 * HOUR)
    assert early.alerts == [] and early.state_puts == []
    assert not [k for k in store.reads if k.startswith("prof|")]

    store.reads.clear()
    late = restarted.tick([0], store, T0 + 49 * HOUR)
    store.apply(late)
    assert [a["rule"] for a in late.alerts] == ["complaint_unresolved"]
    assert [k for k in store.reads if k.startswith("prof|")] == ["prof|c-complains"]
    assert store.data["due|0"] == {}
    assert restarted.tick([0], store, T0 + 200 * HOUR).alerts == []


def test_deadlines_follow_the_event_time_a_catch_up_has_reached_then_the_clock() -> None:
    # A catch-up replays days of events in seconds. A timer tick in the middle of it must
    # not find the complaint overdue while its resolving call-back (30 h later in event
    # time) is still in the backlog; once the partition is idle the clock decides.
    from tests.unit.customers.detect_events import HOUR, T0, contact, only

    stage = CustomerStage(
        1, lateness_ms=60_000, pane_events=10_000, detector=only("complaint_unresolved")
    )
    store = Store()
    stage.restore(0, store)
    wall = T0 + 30 * 24 * HOUR  # the backlog is a month old
    complaint = contact("complaint", T0, case="A", complaint=True, resolved=False)
    store.apply(
        stage.process({0: [(0, event_item("c1", complaint, anchor_key(complaint)))]}, store, wall)
    )
    assert stage.deadline_clock(0, wall + 5_000, idle_ms=60_000) == T0  # events flow
    assert stage.tick([0], store, wall + 5_000).alerts == []
    callback = contact("call", T0 + 30 * HOUR, case="A", resolved=True)
    store.apply(
        stage.process(
            {0: [(1, event_item("c1", callback, anchor_key(callback)))]}, store, wall + 10_000
        )
    )
    assert stage.tick([0], store, wall + 80_000).alerts == []  # idle: the clock; resolved
    # Unresolved, the idle partition's clock finds it overdue.
    other = contact("complaint", T0 + HOUR, case="B", complaint=True, resolved=False)
    store.apply(
        stage.process({0: [(2, event_item("c2", other, anchor_key(other)))]}, store, wall + 90_000)
    )
    assert stage.tick([0], store, wall + 100_000).alerts == []  # events flowed 10 s ago
    late = stage.tick([0], store, wall + 200_000)
    assert [(a["rule"], a["customer_id"]) for a in late.alerts] == [("complaint_unresolved", "c2")]
    assert late.alerts[0]["detected_at"] == wall + 200_000  # stamped with processing time


def test_a_merge_notice_on_the_survivors_partition_leaves_the_absorbed_360_alone() -> None:
    # One worker owning both partitions (one store): the notice reaches the absorbed
    # customer's partition (0) and the survivor's (1). Only partition 0 may touch the
    # absorbed 360 entry, whose positions are partition 0's; a later event for the absorbed
    # id (a replay keeps its first customer) must still count.
    from streams.customers.items import merge_item

    absorbed, survivor = "c-a0", "c-b0"
    stage = CustomerStage(2, lateness_ms=60_000, pane_events=10_000)
    store = Store()
    for p in (0, 1):
        stage.restore(p, store)
    notice = merge_item(survivor, absorbed, NOW)
    first = ev(absorbed, NOW - 30_000, event_id="x1")["record"]
    store.apply(
        stage.process({0: [(5, event_item(absorbed, first, anchor_key(first)))]}, store, NOW)
    )
    # The survivor's partition sees the notice at a far higher position of *its* input.
    store.apply(stage.process({1: [(900 * POSITION_SCALE, notice)]}, store, NOW))
    store.apply(stage.process({0: [(6, notice)]}, store, NOW))
    late = ev(absorbed, NOW - 20_000, event_id="x2")["record"]
    store.apply(stage.process({0: [(7, event_item(absorbed, late, anchor_key(late)))]}, store, NOW))
    saved = store.data[f"360|{absorbed}"]
    assert saved["events"] == 2, saved
    assert saved["merged_into"] == survivor


def test_a_customers_events_in_one_batch_are_judged_in_event_time_order() -> None:
    # The call reaches the stage before the failed checkout it follows (they came through
    # different identity partitions). Judged in arrival order the call sees no failure;
    # judged in event time it is a failed self-service journey.
    from tests.unit.customers.detect_events import MIN, T0, contact, only, rec

    failed = rec("checkout_failed", "web", T0)
    call = contact("call", T0 + 10 * MIN)
    items = [(0, event_item("c1", call, anchor_key(call)))]
    items.append((1, event_item("c1", failed, anchor_key(failed))))
    stage = CustomerStage(
        1, lateness_ms=60_000, pane_events=10_000, detector=only("self_service_failed")
    )
    store = Store()
    stage.restore(0, store)
    out = stage.process({0: items}, store, T0 + 11 * MIN)
    assert [(a["rule"], a["event_ids"]) for a in out.alerts] == [
        ("self_service_failed", [failed["event_id"], call["event_id"]])
    ]
    assert out.events == 2  # aggregates still count both, in arrival order


def test_a_profile_hand_over_judges_the_fragments_events_against_the_history() -> None:
    # The absorbed customer's profile ("p" item) carries its cold events; the survivor
    # has the history: the stage raises what the merge reveals, on the survivor.
    from streams.customers.detect import Profile
    from tests.unit.customers.detect_events import DAY, HOUR, T0, day_person, only, rec

    detector = only("unusual_hour")
    known = Profile("c-survivor")
    day_person(known, "Europe/London")
    night = T0 - T0 % DAY + 2 * HOUR
    cookie = Profile("c-absorbed")
    detector.process(cookie, rec("login", ts=night, event_id="s1"), night)
    store = Store()
    store.data["prof|c-survivor"] = known.to_dict()
    stage = CustomerStage(1, lateness_ms=60_000, pane_events=10_000, detector=detector)
    stage.restore(0, store)
    handover = {"t": "p", "s": "c-survivor", "p": cookie.to_dict()}
    out = stage.process({0: [(0, handover)]}, store, night + HOUR)
    assert [(a["rule"], a["customer_id"], a["event_ids"]) for a in out.alerts] == [
        ("unusual_hour", "c-survivor", ["s1"])
    ]
    assert [(r.rule, r.alerts) for r in out.alert_rows] == [("unusual_hour", 1)]  # counted


def test_an_event_resolved_to_a_customer_whose_profile_moved_follows_it() -> None:
    # Identity partitions learn of a merge at different times: after the absorbed
    # customer's profile left for the survivor, an event still resolved to the absorbed id
    # arrives. It must be judged against the survivor's history, not start a new profile
    # of its own under an id nothing will ever merge again.
    from streams.customers.detect import Profile
    from streams.customers.items import merge_item
    from tests.unit.customers.detect_events import DAY, HOUR, T0, day_person, only, rec

    absorbed, survivor = "c-a0", "c-b0"  # partitions 0 and 1
    stage = CustomerStage(2, lateness_ms=60_000, pane_events=10_000, detector=only("unusual_hour"))
    store = Store()
    known = Profile(survivor)
    day_person(known, "Europe/London")
    store.data[f"prof|{survivor}"] = known.to_dict()
    day = rec("page_view", ts=T0 - T0 % DAY + 12 * HOUR, event_id="d1")
    for p in (0, 1):
        stage.restore(p, store)
    night = T0 - T0 % DAY + DAY + 2 * HOUR
    out = stage.process(
        {
            0: [
                (0, event_item(absorbed, day, anchor_key(day))),
                (1, merge_item(survivor, absorbed, night)),
            ]
        },
        store,
        night,
    )
    store.apply(out)
    [(key, handover)] = out.handovers
    assert (key, handover["t"]) == (survivor, "p")
    assert f"prof|{absorbed}" not in store.data and store.data[f"moved|{absorbed}"] == survivor

    login = rec("login", ts=night, event_id="n1")
    out = stage.process({0: [(2, event_item(absorbed, login, anchor_key(login)))]}, store, night)
    store.apply(out)
    assert out.alerts == [] and out.events == 1  # counted where it arrived
    [(key, followed)] = out.handovers
    assert (key, followed["t"], followed["c"]) == (survivor, "d", survivor)
    assert f"prof|{absorbed}" not in store.data

    out = stage.process({1: [(0, handover), (1, followed)]}, store, night)
    store.apply(out)
    assert [(a["rule"], a["customer_id"], a["event_ids"]) for a in out.alerts] == [
        ("unusual_hour", survivor, ["n1"])
    ]
    assert out.events == 0  # not counted twice
    profile = Profile.from_dict(store.data[f"prof|{survivor}"])
    assert profile.seen == known.seen + 2

    # A chain: the survivor is absorbed in turn; an event for the first id follows both.
    store.apply(stage.process({1: [(2, merge_item("c-z", survivor, night))]}, store, night))
    late = rec("page_view", ts=night + HOUR, event_id="n2")
    out = stage.process({0: [(3, event_item(absorbed, late, anchor_key(late)))]}, store, night)
    out = stage.process({1: [(3, out.handovers[0][1])]}, store, night)
    assert [(k, h["t"], h["c"], h["n"]) for k, h in out.handovers] == [("c-z", "d", "c-z", 2)]


def test_a_household_is_counted_but_never_judged() -> None:
    # The same failed checkout and call: a self-service failure for a person; nothing for
    # a household (a shared device or email's own customer, ``h...``: no one person), whose
    # events still count in the aggregates and its 360.
    from streams.identity.graph import is_household
    from tests.unit.customers.detect_events import MIN, T0, contact, only, rec

    def judged(customer: str) -> tuple[list[str], int, Store]:
        failed = rec("checkout_failed", "web", T0)
        call = contact("call", T0 + 10 * MIN)
        items = [(i, event_item(customer, r, anchor_key(r))) for i, r in enumerate([failed, call])]
        stage = CustomerStage(
            1, lateness_ms=60_000, pane_events=10_000, detector=only("self_service_failed")
        )
        store = Store()
        stage.restore(0, store)
        out = stage.process({0: items}, store, T0 + 11 * MIN)
        store.apply(out)
        return [a["rule"] for a in out.alerts], out.events, store

    household = "h0000000000a1b2c3d4"
    assert is_household(household) and not is_household("c1")
    assert judged("c1")[:2] == (["self_service_failed"], 2)
    rules, events, store = judged(household)
    assert (rules, events) == ([], 2)
    assert f"360|{household}" in store.data and f"prof|{household}" not in store.data
