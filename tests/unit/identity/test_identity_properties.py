"""Identity resolution on many partitions equals the offline answer, for any event stream.

Events are random identifier overlaps across kinds, in random arrival order (event
times are drawn independently of arrival), on 1, 3 and 8 partitions, with and without
redelivery (a partition replays its last batches, sometimes with their state writes
lost, as after a crash before the offset commit).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, cast

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streams.identity.graph import IdentityRules, Merge, Refusal, Resolved, offline_components
from streams.identity.simulator import Simulator
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord
from tests.unit.identity.invariants import live_owners

EXAMPLES = 500  # both tests together take ~10 s; many thousands more passed while developing
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def record(event_id: str, ts: int, ids: dict[str, str]) -> TouchpointRecord:
    identifiers: dict[str, Any] = dict.fromkeys(IDENTIFIER_KINDS)
    identifiers.update(ids)
    return cast(
        TouchpointRecord, {"event_id": event_id, "occurred_at": ts, "identifiers": identifiers}
    )


def streams_of(
    values: st.SearchStrategy[str], hubs: bool = False
) -> st.SearchStrategy[list[TouchpointRecord]]:
    """Lists of events, each with 1-4 identifiers drawn from small pools (so they overlap);
    with ``hubs``, many events also carry one shared phone or device (the merge-cap trap)."""
    ident = st.tuples(st.sampled_from(IDENTIFIER_KINDS), values)
    phone, kiosk = ("phone", "+447700900999"), ("device_id", "kiosk")
    hub = st.sampled_from([[], [phone], [kiosk], [phone, kiosk]])
    event = st.tuples(
        st.integers(0, 60), st.lists(ident, min_size=1, max_size=4), hub if hubs else st.just([])
    )
    return st.lists(event, min_size=8 if hubs else 1, max_size=30).map(
        lambda evs: [
            record(f"e{i}", ts, dict(ids + extra)) for i, (ts, ids, extra) in enumerate(evs)
        ]
    )


plain_values = st.integers(0, 7).map(str)
# mostly a few values per kind (so customers collide and guards fire), some blocked ones
guarded_values = st.sampled_from(
    [f"v{n}" for n in range(4)] * 4
    + ["anonymous", "test@test.com", "00000000-0000-0000-0000-000000000000", "0"]
)
partitions = st.sampled_from([1, 3, 8])
redelivery = st.sampled_from([0.0, 0.25])


@SETTINGS
@given(streams_of(plain_values), partitions, redelivery, st.booleans(), st.integers(0, 2**32 - 1))
def test_unguarded_customers_are_the_offline_components(
    events: list[TouchpointRecord], n: int, redeliver: float, wire: bool, seed: int
) -> None:
    sim = Simulator(n, IdentityRules.unguarded(), seed, redeliver=redeliver, wire=wire)
    sim.run(events)

    expected = offline_components(events)
    assert sim.components() == expected  # the same partition of the identifiers
    assert not [o for o in sim.outputs if isinstance(o, Refusal)]

    # every event was stamped; the customers stamped on a component's events are the
    # customers created for it, and the oldest of them is what all its identifiers carry
    stamped: dict[str, set[str]] = {}
    for out in sim.outputs:
        if isinstance(out, Resolved):
            assert out.customer is not None
            stamped.setdefault(out.event_id, set()).add(out.customer)
    assert set(stamped) == {e["event_id"] for e in events}
    component_of = {key: i for i, comp in enumerate(expected) for key in comp}
    created: list[set[str]] = [set() for _ in expected]
    for e in events:
        first = next(f"{k}:{v}" for k in IDENTIFIER_KINDS if (v := e["identifiers"][k]))  # type: ignore[literal-required]
        created[component_of[first]] |= stamped[e["event_id"]]

    customers = sim.customers()
    assert set(customers) == set().union(*created)  # no customer from nowhere
    for comp, ids in zip(expected, created, strict=True):
        oldest = min(ids)
        assert {sim.customer_of(key) for key in comp} == {oldest}
        assert [c for c in ids if customers[c].absorbed_into is None] == [oldest]
        assert all(sim.survivor(c) == oldest for c in ids)
        assert sorted(m for ms in customers[oldest].members.values() for m in ms) == sorted(comp)

    for out in sim.outputs:
        if isinstance(out, Merge):
            assert out.survivor < out.absorbed
    _assert_quiescent(sim)


@SETTINGS
@given(
    streams_of(guarded_values, hubs=True),
    partitions,
    redelivery,
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_default_guards_hold_and_every_refusal_is_recorded(
    events: list[TouchpointRecord], n: int, redeliver: float, wire: bool, seed: int
) -> None:
    rules = IdentityRules()
    sim = Simulator(n, rules, seed, redeliver=redeliver, wire=wire)
    sim.run(events)
    idents = sim.identifiers()
    refusals = [o for o in sim.outputs if isinstance(o, Refusal)]
    for reason in sorted({r.reason for r in refusals}):
        event(f"refusal {reason.partition(':')[0]}")  # shows in --hypothesis-show-statistics
    event("merged" if any(isinstance(o, Merge) for o in sim.outputs) else "no merge")

    # no live customer exceeds a limit; no identifier is in two customers
    owner = live_owners(sim, rules)
    # labels converged: every identifier carries the live customer that holds it
    assert {k: s.customer for k, s in idents.items()} == owner

    # blocked values never enter the graph, and each one was recorded
    blocked = {(r.event_id, r.identifier) for r in refusals if r.reason == "blocked_value"}
    for e in events:
        for kind in IDENTIFIER_KINDS:
            value = e["identifiers"][kind]  # type: ignore[literal-required]
            key = f"{kind}:{value}"
            if value and rules.is_blocked(key):
                assert key not in idents and (e["event_id"], key) in blocked

    # a quarantine is always recorded (and goes to review)
    capped = {r.identifier for r in refusals if r.for_review}
    assert {k for k, s in idents.items() if s.quarantined} <= capped

    # identifiers seen together but left in different customers: refusals explain it.
    # Every identifier on an event was joined to the event's anchor, so each of the two
    # is with the anchor's customer or was refused by it (or is itself refused/quarantined)
    refused_idents = {r.identifier for r in refusals if r.identifier is not None}
    refused_pairs = {
        frozenset((sim.survivor(r.survivor), sim.survivor(r.absorbed)))
        for r in refusals
        if r.survivor is not None and r.absorbed is not None
    }

    def related(a: str, b: str) -> bool:
        ca, cb = sim.customer_of(a), sim.customer_of(b)
        return (
            ca == cb
            or a in refused_idents
            or b in refused_idents
            or frozenset((ca, cb)) in refused_pairs
        )

    for e in events:
        keys = [f"{k}:{v}" for k in IDENTIFIER_KINDS if (v := e["identifiers"][k])]  # type: ignore[literal-required]
        usable = rules.filter(keys)[0]
        for a, b in combinations(usable, 2):
            assert related(a, b) or any(related(a, c) and related(c, b) for c in usable), (
                e["event_id"],
                a,
                b,
            )
    _assert_quiescent(sim)


def _assert_quiescent(sim: Simulator) -> None:
    assert not any(sim.queues)
    for cid, c in sim.customers().items():
        assert c.pending is None and not c.waiting, cid
