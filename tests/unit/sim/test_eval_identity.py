"""Pairwise identity scoring (streams.sim.eval_identity): hand-counted cases, then the
protocol's simulator on a labelled stream with the generator's traps."""

from __future__ import annotations

from typing import Any

import pytest

from streams.identity.graph import IdentityRules
from streams.sim.eval_data import StreamEvent, labelled_stream
from streams.sim.eval_identity import format_identity, resolve_offline, score_identity
from streams.wire.model import IDENTIFIER_KINDS


def _event(event_id: str, person: int, trap: str = "", **ids: str) -> StreamEvent:
    identifiers: dict[str, Any] = dict.fromkeys(IDENTIFIER_KINDS)
    identifiers.update(ids)
    record: Any = {
        "event_id": event_id,
        "occurred_at": 0,
        "identifiers": identifiers,
        "context": {"country": "GB"},
    }
    return StreamEvent(record, f"P{person}", person, b"", trap=trap)


# Person 0: a1, a2 (crm A), a3 (tablet only); person 1: b1 (crm B), b2 (tablet + crm B).
EVENTS = [
    _event("a1", 0, customer_id="A", anonymous_id="x"),
    _event("a2", 0, anonymous_id="x"),
    _event("a3", 0, "family_tablet", device_id="tab"),
    _event("b1", 1, customer_id="B"),
    _event("b2", 1, "family_tablet", device_id="tab", customer_id="B"),
]


def test_a_perfect_answer_scores_one() -> None:
    resolved = {"a1": "cA", "a2": "cA", "a3": "cA", "b1": "cB", "b2": "cB"}
    score = score_identity(EVENTS, resolved)
    o = score.overall
    assert (o.predicted_pairs, o.true_pairs, o.correct_pairs) == (4, 4, 4)
    assert o.precision == o.recall == 1.0
    # a3 carries only the shared tablet: linkable to nothing. a1-a2 and b1-b2 are.
    assert (o.linkable_pairs, o.linkable_found) == (2, 2)


def test_gluing_people_costs_precision_and_splitting_costs_recall() -> None:
    glued = {"a1": "cA", "a2": "cA", "a3": "cA", "b1": "cA", "b2": "cA"}
    o = score_identity(EVENTS, glued).overall
    assert (o.predicted_pairs, o.correct_pairs) == (10, 4)
    assert o.precision == pytest.approx(0.4) and o.recall == 1.0

    split = {"a1": "cA", "a2": "cX", "a3": "cA", "b1": "cB", "b2": "cB"}
    o = score_identity(EVENTS, split).overall
    assert (o.predicted_pairs, o.correct_pairs, o.true_pairs) == (2, 2, 4)
    assert o.precision == 1.0 and o.recall == 0.5
    assert o.recall_linkable == 0.5  # a1-a2 is linkable and was missed


def test_households_and_nobody_make_no_pairs() -> None:
    resolved = {"a1": "cA", "a2": "cA", "a3": "h-tablet", "b1": "cB", "b2": None}
    score = score_identity(EVENTS, resolved)
    o = score.overall
    assert (o.predicted_pairs, o.correct_pairs) == (1, 1)
    assert o.recall == 0.25 and o.recall_linkable == 0.5
    assert score.unattributed == 2 and score.households == 1


def test_per_trap_counts_the_pairs_of_the_people_involved() -> None:
    glued = {"a1": "cA", "a2": "cA", "a3": "cA", "b1": "cA", "b2": "cA"}
    score = score_identity([*EVENTS, _event("c1", 2, customer_id="C")], glued)
    tablet = score.by_trap["family_tablet"]
    assert tablet.people == 2 and tablet.predicted_pairs == 10
    none = score.by_trap["none"]  # person 2: one event, resolved to nobody
    assert none.people == 1 and none.predicted_pairs == 0 and none.true_pairs == 0
    lines = format_identity(score)
    assert lines[0].startswith("EVAL identity precision=0.4000 recall=1.0000 recall_people=1.0000 ")
    assert any(line.startswith("EVAL identity[family_tablet] ") for line in lines)


def test_blocked_values_link_nothing() -> None:
    events = [
        _event("a1", 0, email="test@test.com", customer_id="A"),
        _event("b1", 1, email="test@test.com", customer_id="B"),
        _event("b2", 1, email="test@test.com"),
    ]
    o = score_identity(events, {"a1": "cA", "b1": "cB", "b2": None}, IdentityRules()).overall
    assert o.true_pairs == 1 and o.linkable_pairs == 0


@pytest.fixture(scope="module")
def trap_stream() -> Any:
    return labelled_stream(300, seed=5)


def test_naive_components_glue_the_trapped_people(trap_stream: Any) -> None:
    """Without guards the shared values glue households, couples and every caller the
    centre's number was typed for: precision collapses. The guards keep most of it."""
    naive = score_identity(
        trap_stream.events, resolve_offline(trap_stream.events, IdentityRules.unguarded())
    ).overall
    guarded = score_identity(trap_stream.events, resolve_offline(trap_stream.events)).overall
    assert naive.precision < 0.5 < guarded.precision
    assert guarded.recall_linkable >= 0.98


def test_shared_values_become_households_and_own_phones_are_not_capped(trap_stream: Any) -> None:
    """On the trap stream: the verdicts name values more than one person used, and no
    identifier of exactly one person is quarantined by the merge cap (issue 14: 30 of
    47 merge-cap refusals were a person's own phone)."""
    from collections import defaultdict

    from streams.identity.graph import Refusal, event_identifiers
    from streams.identity.simulator import Simulator
    from streams.sim.eval_identity import normalised

    rules = IdentityRules()
    records = [normalised(e.record) for e in trap_stream.events]
    owners: dict[str, set[int]] = defaultdict(set)
    for e, r in zip(trap_stream.events, records, strict=True):
        for key in rules.filter(event_identifiers(r))[0]:
            owners[key].add(e.person)
    sim = Simulator(4, rules, 0, max_batch=64)
    sim.run(records, max_steps=10_000_000)
    verdicts = [o for o in sim.outputs if isinstance(o, Refusal) and o.for_review]
    capped = [v for v in verdicts if v.reason == "merge_cap"]
    assert not [v for v in capped if len(owners[v.identifier or ""]) <= 1], capped
    shared = [v for v in verdicts if v.reason == "shared"]
    wrong = [v for v in shared if len(owners[v.identifier or ""]) <= 1]
    # Known misattribution (measured: 1 of 10 here): a person's own device glued to their
    # partner's customer by their shared email (a password reset on it) before the device
    # met their account; the blame stops at the device.
    assert len(shared) >= 5 and len(wrong) <= len(shared) // 5, [
        (v.reason, v.identifier, owners[v.identifier or ""]) for v in wrong
    ]
