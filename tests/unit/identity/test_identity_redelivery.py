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

import random
from typing import Any, cast

from streams.identity.graph import (
    AbsorbedOp,
    AddMemberOp,
    CustState,
    DictState,
    IdentityNode,
    IdentityRules,
    IdState,
    MergeOp,
    ProposeOp,
    RelabelOp,
    RemoveMemberOp,
    SplitOp,
    SplitRecord,
    UnlockOp,
    customer_id,
    is_household,
    state_to_json,
)
from streams.identity.messages import SharedOp
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


# ----------------------------------------------------------------------------- undo replays


def test_an_undo_replayed_after_the_identifier_became_a_household_leaves_it_there() -> None:
    """The root cause of the divergence the guarded property test found with
    ``undo_through`` on. An undo (``SplitOp(unless_confirmed=True)``) moves a cookie off
    the customer a shared value put it in; then the cookie itself is found shared and
    becomes a household. A crash redelivers the undo: its replay check only knew "my
    label is the customer this split made", so it moved the cookie out of the household
    again (new label, a second RemoveMember/AddMember pair), and with the shared verdict
    also replayed the customers' member lists ended out of step with the label. Now a
    split whose customer the identifier already had (``former``) is a replay, and an
    undo never moves a quarantined (shared) identifier."""
    node, st = IdentityNode(IdentityRules(), undo_through=True), DictState()
    person, other = customer_id(T0, "person"), customer_id(T0 + 1, "other")
    cookie = "anonymous_id:v1"
    st.put(cookie, IdState(customer=person, first_seen_ms=T0, via="phone:+44", version=1))
    st.put(person, CustState(T0, {"anonymous_id": [cookie], "phone": ["phone:+44"]}))

    undo = SplitOp(cookie, "e9", T0 + 9, unless_confirmed=True)
    moved = node.handle(undo, st)
    undone = st.get(cookie)
    assert isinstance(undone, IdState) and undone.customer not in (person, None)
    assert any(isinstance(o, RemoveMemberOp) and o.customer == person for o in moved.ops)

    shared = SharedOp(cookie, (person, other), cookie, "limit:customer_id", "e17", T0 + 17)
    node.handle(shared, st)
    household = st.get(cookie)
    assert isinstance(household, IdState) and household.quarantined
    assert household.customer is not None and is_household(household.customer)
    label, version = household.customer, household.version

    for op in (undo, shared, undo):  # redelivered, in any order
        again = node.handle(op, st)
        assert again.ops == [] and not [o for o in again.outputs if isinstance(o, SplitRecord)]
    after = st.get(cookie)
    assert isinstance(after, IdState) and (after.customer, after.version) == (label, version)


def test_an_undo_that_arrives_after_the_shared_verdict_does_not_move_the_household() -> None:
    node, st = IdentityNode(IdentityRules(), undo_through=True), DictState()
    person, other = customer_id(T0, "person"), customer_id(T0 + 1, "other")
    cookie = "anonymous_id:v1"
    st.put(cookie, IdState(customer=person, first_seen_ms=T0, version=1))
    st.put(person, CustState(T0, {"anonymous_id": [cookie], "phone": ["phone:+44"]}))
    node.handle(SharedOp(cookie, (person, other), cookie, "limit:customer_id", "e17", T0), st)
    household = st.get(cookie)
    assert isinstance(household, IdState) and household.customer is not None
    assert node.handle(SplitOp(cookie, "e9", T0 + 9, unless_confirmed=True), st).ops == []
    assert st.get(cookie) == household and is_household(household.customer)


def test_the_same_members_proposed_on_other_evidence_get_another_lock_number() -> None:
    """A survivor's answer depends on the evidence (a merge through a value found shared
    since is refused, ``shared_via``; through another value it is accepted). When the
    lock number named only the survivor and the members, a proposal lost in a crash and
    the next one through another value had the same number, and the late UNLOCK of the
    refused one released the accepted one (found with undo on)."""
    node, st = IdentityNode(IdentityRules()), DictState()
    old, young = customer_id(T0, "old"), customer_id(T0 + 2, "young")
    st.put(young, CustState(T0 + 2, {"email": ["email:y"], "anonymous_id": ["anonymous_id:y"]}))
    durable = state_to_json(st.data[young])
    through_phone = proposal(node.handle(MergeOp(young, old, "phone:+44", "e1", T0), st).ops)
    st.restore(young, durable)  # crash: the lock's write is lost, the PROPOSE is sent
    through_handle = proposal(node.handle(MergeOp(young, old, "social_handle:h", "e2", T0), st).ops)
    assert through_handle.members == through_phone.members
    assert through_handle.seq != through_phone.seq
    assert node.handle(UnlockOp(young, through_phone.seq, "e1", T0), st).ops == []
    locked = st.get(young)
    assert isinstance(locked, CustState) and locked.pending == old
    assert locked.lock_seq == through_handle.seq


def test_a_redelivered_add_member_does_not_overtake_a_removal_waiting_on_the_lock() -> None:
    """A locked customer defers what changes its members. A redelivered AddMember of an
    identifier it already holds used to be deferred too, behind the RemoveMember of that
    identifier (it became a household since): released, the lock removed it and added it
    back, and the customer kept an identifier labelled with its household."""
    node, st = IdentityNode(IdentityRules()), DictState()
    older, cid = customer_id(T0, "older"), customer_id(T0 + 1, "cid")
    kiosk, household = "device_id:kiosk", "h" + customer_id(T0 + 4, "kiosk")[1:]
    st.put(cid, CustState(T0 + 1, {"device_id": [kiosk], "loyalty_id": ["loyalty_id:v1"]}))
    locked = proposal(node.handle(MergeOp(cid, older, "email:v2", "e6", T0), st).ops)
    node.handle(RemoveMemberOp(cid, kiosk, "e10", T0 + 4, household), st)
    assert node.handle(AddMemberOp(cid, kiosk, cid, "e2", T0 + 2), st).ops == []
    waiting = st.get(cid)
    assert isinstance(waiting, CustState)
    assert [type(op) for op in waiting.waiting] == [RemoveMemberOp]
    node.handle(UnlockOp(cid, locked.seq, "e6", T0), st)  # refused: the lock is released
    after = st.get(cid)
    assert isinstance(after, CustState) and after.pending is None
    assert after.members == {"loyalty_id": ["loyalty_id:v1"]}


def test_a_refused_proposal_redelivered_after_its_survivor_was_absorbed_is_refused_again() -> None:
    """A survivor refuses a proposal (two CRM ids) and is later absorbed by an older
    customer without one. A redelivered copy of the proposal used to be forwarded there
    and accepted: its ABSORBED found the proposer already unlocked by the first answer,
    and both customers held the proposer's identifiers (found with undo on). A proposal is
    answered once: the copy is refused again, where it was refused."""
    node, st = IdentityNode(IdentityRules()), DictState()
    older, survivor = customer_id(T0, "older"), customer_id(T0 + 1, "survivor")
    young = customer_id(T0 + 2, "young")
    st.put(survivor, CustState(T0 + 1, {"customer_id": ["customer_id:s"]}))
    st.put(young, CustState(T0 + 2, {"customer_id": ["customer_id:y"]}))
    propose = proposal(node.handle(MergeOp(young, survivor, "email:shared", "e1", T0), st).ops)
    first = node.handle(propose, st).ops
    assert [type(op) for op in first] == [UnlockOp, SharedOp]
    node.handle(first[0], st)  # the proposer is unlocked

    # the survivor is absorbed by an older customer that holds no CRM id
    absorbing = proposal(node.handle(MergeOp(survivor, older, "phone:+44", "e2", T0), st).ops)
    node.handle(AbsorbedOp(survivor, older, absorbing.seq, "e2", T0), st)
    gone = st.get(survivor)
    assert isinstance(gone, CustState) and gone.absorbed_into == older

    again = node.handle(propose, st).ops  # redelivered
    assert again == [UnlockOp(young, propose.seq, "e1", T0)]


class _Scripted:
    """The simulator's random choices, in order."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)

    def randint(self, low: int, high: int) -> int:
        value = int(self.values.pop(0))
        assert low <= value <= high
        return value


def test_a_crash_cannot_lose_writes_that_survived_an_earlier_crash() -> None:
    """The simulator's fault model: a crash redelivers the partition's last batches and
    may lose their writes; the writes of batches that stayed uncommitted through an
    earlier crash are durable (recovered from the changelog then): a later crash delivers
    those batches again but keeps their writes. Restoring them made a state older than
    one the partition had recovered with, while ops sent from the newer one were in
    flight, which no changelog does (it failed the guarded property test spuriously)."""
    sim = Simulator(1, IdentityRules(), redeliver=0.5, max_batch=1)
    sim.rng = _Scripted(  # type: ignore[assignment]
        *(1, 0.9),  # [x] handled, no crash
        *(1, 0.1, 1, 0.9),  # [y] handled; crash: [y] again, writes kept
        *(1, 0.1, 2, 0.1),  # [y] handled; crash: [x], [y] again, writes lost
    )
    from streams.identity.messages import LinkOp

    sim.submit(LinkOp(("email:x@mail.com",), "ex", T0))
    sim.submit(LinkOp(("phone:+44700",), "ey", T0))
    for _ in range(3):
        sim._step(0)
    # [x]'s writes survived the first crash: the second one keeps them
    assert isinstance(sim.state("email:x@mail.com"), IdState)
    replayed = [op.event_id for op in sim.queues[0] if isinstance(op, LinkOp)]
    assert replayed == ["ex", "ey"]  # both delivered again
    sim.rng, sim.redeliver = random.Random(0), 0.0
    sim.run()
    assert {k: s.customer is not None for k, s in sim.identifiers().items()} == {
        "email:x@mail.com": True,
        "phone:+44700": True,
    }


# ----------------------------------------------------------------------------- households


def test_a_shared_verdict_redelivered_after_a_lost_household_makes_the_same_household() -> None:
    """The root cause of two live households holding ``device_id:kiosk`` (the guarded
    property test with ``undo_through`` on). The kiosk came to its customer through a
    weak phone: a first SHARED (e5) blames the phone; an undo moves the kiosk to a
    customer of its own (now it came through nothing); a second SHARED (e13) makes it a
    household, whose ADD_MEMBER is sent. A crash loses that batch's writes, and the
    redelivered copy of the e5 verdict now finds the kiosk itself shared. The household
    id was derived from the verdict's event, so e5 made a second household while the
    first already held the kiosk. A household is the identifier's own: one id."""
    node, st = IdentityNode(IdentityRules(), undo_through=True), DictState()
    person, other = customer_id(T0, "person"), customer_id(T0 + 1, "other")
    kiosk, phone = "device_id:kiosk", "phone:v0"
    st.put(kiosk, IdState(customer=person, first_seen_ms=T0, via=phone, version=1))
    st.put(person, CustState(T0, {"device_id": [kiosk], "phone": [phone]}))
    shared_e5 = SharedOp(kiosk, (other, person), kiosk, "limit:customer_id", "e5", T0 + 30)
    shared_e13 = SharedOp(kiosk, (other, person), kiosk, "limit:customer_id", "e13", T0 + 15)

    blamed = node.handle(shared_e5, st).ops
    assert [(type(o), o.routing_key) for o in blamed] == [(SharedOp, phone)]
    node.handle(SplitOp(kiosk, "e6", T0 + 39, unless_confirmed=True), st)
    durable = state_to_json(cast(IdState, st.get(kiosk)))  # the undo's writes survive
    first = node.handle(shared_e13, st)
    (household,) = {o.customer for o in first.ops if isinstance(o, AddMemberOp)}
    assert is_household(household)

    st.restore(kiosk, durable)  # the crash loses the household's writes...
    again = node.handle(shared_e5, st)  # ...and redelivers the other verdict
    assert {o.customer for o in again.ops if isinstance(o, AddMemberOp)} == {household}
    after = st.get(kiosk)
    assert isinstance(after, IdState) and after.quarantined and after.customer == household
    assert node.handle(shared_e13, st).ops == []  # the first one, redelivered: found out


def test_the_two_households_example_found_by_the_property_test() -> None:
    """8 partitions, redelivery 0.25, undo on: before the fix ``device_id:kiosk`` ended a
    member of households h...f6431a03c (verdict e13) and h...1e45dd870f (verdict e5)."""
    kiosk, phone = ("device_id", "kiosk"), ("phone", "+447700900999")
    evs: list[tuple[int, list[tuple[str, str]], list[tuple[str, str]]]] = [
        (17, [("phone", "v0")], [kiosk]),
        (0, [("login_id", "v1"), ("anonymous_id", "v1")], []),
        (0, [("phone", "v0"), ("device_id", "v1")], []),
        (
            10,
            [("customer_id", "v0"), ("email", "v0"), ("phone", "v1"), ("social_handle", "v3")],
            [],
        ),
        (0, [("customer_id", "v0")], []),
        (30, [("social_handle", "v3")], [phone, kiosk]),
        (39, [("customer_id", "test@test.com"), ("phone", "v0")], [kiosk]),
        (1, [("login_id", "v3")], []),
        (31, [("customer_id", "v1")], [kiosk]),
        (0, [("customer_id", "v1"), ("device_id", "v0")], []),
        (0, [("customer_id", "test@test.com")], []),
        (0, [("email", "v0")], []),
        (30, [("email", "v3")], [kiosk]),
        (15, [("customer_id", "00000000-0000-0000-0000-000000000000"), ("phone", "v1")], [kiosk]),
        (0, [("email", "v2")], [phone]),
    ]
    events = [record(f"e{i}", ts, dict(ids + extra)) for i, (ts, ids, extra) in enumerate(evs)]
    rules = IdentityRules()
    sim = Simulator(8, rules, 273166, redeliver=0.25, wire=False, undo_through=True)
    sim.run(events)

    owner = live_owners(sim, rules)  # no identifier in two live customers, limits hold
    assert {k: s.customer for k, s in sim.identifiers().items()} == owner
    state = sim.state("device_id:kiosk")
    assert isinstance(state, IdState) and state.quarantined
    assert state.customer is not None and is_household(state.customer)
    assert owner["device_id:kiosk"] == state.customer
