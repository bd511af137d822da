"""Crash safety of the merge lock: replies to a proposal lost with its state never settle
another one.

A customer proposing itself to a survivor is locked under a lock number; the survivor's
UNLOCK (refused) or ABSORBED (accepted) carries that number back. A crash that loses
state writes rolls the customer back to an earlier number while the proposals it
already sent stay in flight. When the lock number was a plain counter, the customer's
next, different proposal got the same number again, and the late reply to the
forgotten proposal released the new lock: the new survivor then accepted, its ABSORBED
found the customer unlocked and was dropped, and the customer stayed live holding the
identifiers its survivor now also held (found by
test_identity_properties.py::test_default_guards_hold_and_every_refusal_is_recorded).
"""

from __future__ import annotations

from typing import Any, cast

from streams.identity.graph import (
    AbsorbedOp,
    CustState,
    DictState,
    IdentityNode,
    IdentityRules,
    MergeOp,
    ProposeOp,
    RelabelOp,
    UnlockOp,
    customer_id,
    state_to_json,
)
from streams.identity.simulator import Simulator
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord
from tests.unit.identity.invariants import live_owners

T0 = 1_700_000_000_000


def record(event_id: str, ts: int, ids: dict[str, str]) -> TouchpointRecord:
    identifiers: dict[str, Any] = dict.fromkeys(IDENTIFIER_KINDS)
    identifiers.update(ids)
    return cast(
        TouchpointRecord, {"event_id": event_id, "occurred_at": ts, "identifiers": identifiers}
    )


def proposal(ops: list[Any]) -> ProposeOp:
    (propose,) = [op for op in ops if isinstance(op, ProposeOp)]
    return propose


def test_a_late_unlock_for_a_proposal_lost_in_a_crash_does_not_release_the_next_lock() -> None:
    node, st = IdentityNode(IdentityRules()), DictState()
    older, old = customer_id(T0, "older"), customer_id(T0 + 1, "old")
    young = customer_id(T0 + 2, "young")
    st.put(young, CustState(T0 + 2, {"customer_id": ["customer_id:y"], "phone": ["phone:+44"]}))
    durable = state_to_json(st.data[young])  # what the changelog holds

    # it proposes itself to `old`; the PROPOSE is produced, then the worker crashes
    # before the lock is written
    first = proposal(node.handle(MergeOp(young, old, "phone:+44", "e1", T0), st).ops)
    st.restore(young, durable)
    # replayed, the same op against the same state gives the very same PROPOSE
    again = proposal(node.handle(MergeOp(young, old, "phone:+44", "e1", T0), st).ops)
    assert again == first
    st.restore(young, durable)

    # after the restart another merge comes first: a different proposal, another number
    second = proposal(node.handle(MergeOp(young, older, "phone:+44", "e2", T0), st).ops)
    assert second.survivor == older
    # `old` refuses the forgotten proposal: its UNLOCK must not touch the live lock
    assert node.handle(UnlockOp(young, first.seq, "e1", T0), st).ops == []
    locked = st.get(young)
    assert isinstance(locked, CustState) and locked.pending == older
    assert locked.lock_seq == second.seq != first.seq

    # `older` accepts: the customer is absorbed and its identifiers relabelled
    fx = node.handle(AbsorbedOp(young, older, second.seq, "e2", T0), st)
    done = st.get(young)
    assert isinstance(done, CustState) and done.absorbed_into == older
    assert {op.identifier for op in fx.ops if isinstance(op, RelabelOp)} == {
        "customer_id:y",
        "phone:+44",
    }


def test_the_falsifying_example_found_by_the_property_test() -> None:
    """3 partitions, redelivery 0.25: the crash at partition 0 rolls customer c...d2dbfbc00
    back below a lock number it had spent on a proposal the older c...0301848ab2 refused;
    its next proposal (to c...035bcbcaf6, which accepts) took the same number and that
    refusal's UNLOCK released it. Before the fix four identifiers ended in both."""
    kiosk, phone = ("device_id", "kiosk"), ("phone", "+447700900999")
    evs: list[tuple[int, list[tuple[str, str]], list[tuple[str, str]]]] = [
        (0, [("phone", "v3")], []),
        (26, [("device_id", "v0")], [kiosk]),
        (13, [("customer_id", "v0"), ("login_id", "v0")], [phone, kiosk]),
        (3, [("customer_id", "v2"), ("login_id", "v0"), ("email", "v0")], []),
        (0, [("customer_id", "v0")], []),
        (3, [("login_id", "v1"), ("loyalty_id", "v1")], [kiosk]),
        (0, [("customer_id", "v0")], []),
        (0, [("customer_id", "v2")], [kiosk]),
        (0, [("loyalty_id", "v1"), ("social_handle", "v0")], []),
    ]
    events = [record(f"e{i}", ts, dict(ids + extra)) for i, (ts, ids, extra) in enumerate(evs)]
    rules = IdentityRules()
    sim = Simulator(3, rules, 4_294_967_294, redeliver=0.25, wire=False)
    sim.run(events)

    owner = live_owners(sim, rules)
    assert {k: s.customer for k, s in sim.identifiers().items()} == owner
    # the identifiers that were duplicated end with the customer that absorbed them
    assert owner["login_id:v0"] == owner["login_id:v1"] == sim.survivor("c0000000000d2dbfbc00")
