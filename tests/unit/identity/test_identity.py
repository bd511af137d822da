"""Identity resolution: named trap scenarios, erasure, split, idempotent replay, the wire format."""

from __future__ import annotations

import re
from typing import Any, cast

import orjson
import pytest

import streams.identity.graph as identity
from streams.identity.graph import (
    AddMemberOp,
    CustState,
    DictState,
    Erased,
    EraseIdentifierOp,
    EraseOp,
    IdentityNode,
    IdentityRules,
    IdentityUpdate,
    IdState,
    JoinOp,
    LinkOp,
    Merge,
    Op,
    ProposeOp,
    Refusal,
    Resolved,
    SplitOp,
    SplitRecord,
    created_ms_of,
    customer_id,
    is_household,
    offline_components,
    op_from_json,
    op_to_json,
    ops_for_event,
    output_from_json,
    output_to_json,
    state_from_json,
    state_to_json,
)
from streams.identity.simulator import Simulator
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord

T0 = 1_700_000_000_000
MINUTE = 60_000


def record(event_id: str, ts: int, **ids: str) -> TouchpointRecord:
    identifiers: dict[str, Any] = dict.fromkeys(IDENTIFIER_KINDS)
    identifiers.update(ids)
    return cast(
        TouchpointRecord,
        {"event_id": event_id, "occurred_at": ts, "identifiers": identifiers, "channel": "web"},
    )


def simulate(*events: TouchpointRecord, partitions: int = 3, **kwargs: Any) -> Simulator:
    sim = Simulator(partitions, kwargs.pop("rules", IdentityRules()), seed=7, **kwargs)
    sim.run(events)
    return sim


def refusals(sim: Simulator, reason: str | None = None) -> list[Refusal]:
    found = {o.id: o for o in sim.outputs if isinstance(o, Refusal)}  # de-duplicated by id
    return [r for r in found.values() if reason is None or r.reason == reason]


def merges(sim: Simulator) -> list[Merge]:
    return list({o.id: o for o in sim.outputs if isinstance(o, Merge)}.values())


def stamped(sim: Simulator, event_id: str) -> str | None:
    return next(o.customer for o in sim.outputs if isinstance(o, Resolved) and o.id == event_id)


# ----------------------------------------------------------------------------- traps


def test_shared_family_tablet_becomes_a_household_and_people_stay_apart() -> None:
    """The second account on the tablet proves it shared (their merge is refused by the
    CRM limit): it becomes a household, and tablet-only events resolve to it."""
    tablet = "3f2a9c1e-77aa-4e0b-9d1c-000000abcdef"
    people = [
        record(
            f"login-{k}",
            T0 + k * MINUTE,
            customer_id=f"CRM{k}",
            login_id=f"user{k}",
            device_id=tablet,
        )
        for k in range(1, 6)
    ]
    own = [
        record(f"own-{k}", T0 + k, login_id=f"user{k}", email=f"p{k}@mail.com") for k in range(1, 6)
    ]
    browse = record("browse", T0 + 10 * MINUTE, device_id=tablet)
    sim = simulate(*own, *people)

    customers = {sim.customer_of(f"customer_id:CRM{k}") for k in range(1, 6)}
    assert len(customers) == 5  # five people, five customers
    for k in range(1, 6):  # each person's own identifiers stay together
        assert sim.customer_of(f"email:p{k}@mail.com") == sim.customer_of(f"customer_id:CRM{k}")
    state = sim.state(f"device_id:{tablet}")
    assert isinstance(state, IdState) and state.quarantined
    assert state.customer is not None and is_household(state.customer)
    assert state.customer not in customers
    # One verdict for review: "shared" (the refused merge came back), or "merge_cap" when
    # three more accounts joined it while that took its hops. Either makes the household.
    (verdict,) = [r for r in refusals(sim) if r.for_review]
    assert verdict.identifier == f"device_id:{tablet}"
    assert verdict.reason in ("shared", "merge_cap")
    assert len(refusals(sim, "limit:customer_id")) >= 1  # the 2nd person, refused
    assert all(m.via != f"device_id:{tablet}" for m in merges(sim))
    # a quarantined identifier links nothing: an event carrying only it goes to the household
    sim.run([browse])
    assert stamped(sim, "browse") == state.customer


def test_call_centre_phone_typed_into_many_records_stops_linking() -> None:
    centre = "+442079460000"
    calls = [
        record(f"call-{k}", T0 + k * MINUTE, customer_id=f"CRM{k}", phone=centre)
        for k in range(1, 9)
    ]
    sim = simulate(*calls)
    assert len({sim.customer_of(f"customer_id:CRM{k}") for k in range(1, 9)}) == 8
    state = sim.state(f"phone:{centre}")
    assert isinstance(state, IdState) and state.quarantined
    assert state.customer is not None and is_household(state.customer)
    assert [r.identifier for r in refusals(sim) if r.for_review] == [f"phone:{centre}"]
    # refused merges of the 2nd caller on (until the verdict), then nothing tries
    assert 1 <= len(refusals(sim, "limit:customer_id")) <= 3


def test_a_persons_own_phone_joining_their_fragments_is_not_capped() -> None:
    """The cap counts customers with an account: a cookie, a device, an email and a
    login of one person, each first seen alone, all join through their phone."""
    phone = "+447700900123"
    events = [
        record("web", T0, anonymous_id="ck-1"),
        record("app", T0 + 1, device_id="dev-1"),
        record("mail", T0 + 2, email="jo@mail.com"),
        record("web2", T0 + 3, anonymous_id="ck-2"),
        record("call-1", T0 + MINUTE, phone=phone, anonymous_id="ck-1"),
        record("call-2", T0 + 2 * MINUTE, phone=phone, device_id="dev-1"),
        record("call-3", T0 + 3 * MINUTE, phone=phone, email="jo@mail.com"),
        record("call-4", T0 + 4 * MINUTE, phone=phone, anonymous_id="ck-2"),
        record("login", T0 + 5 * MINUTE, phone=phone, customer_id="CRM-JO"),
    ]
    sim = simulate(*events)
    keys = ("anonymous_id:ck-1", "anonymous_id:ck-2", "device_id:dev-1", "email:jo@mail.com")
    assert {sim.customer_of(k) for k in (*keys, f"phone:{phone}", "customer_id:CRM-JO")} == {
        customer_id(T0, "anonymous_id:ck-1")
    }
    assert not refusals(sim)


def test_a_glueing_identifier_without_accounts_is_capped() -> None:
    """Without CRM ids only the weak cap (3 x the cap) stops it: it becomes a household.
    The merges it made before the cap fired stand (undoing merges is not built)."""
    centre = "+442079460000"
    calls = [
        record(f"call-{k}", T0 + k * MINUTE, email=f"caller{k}@mail.com", phone=centre)
        for k in range(1, 13)
    ]
    sim = simulate(*calls)
    state = sim.state(f"phone:{centre}")
    assert isinstance(state, IdState) and state.quarantined
    assert state.customer is not None and is_household(state.customer)
    (capped,) = refusals(sim, "merge_cap")
    assert capped.for_review and len(capped.customers) == 3 * 3 + 1  # the weak cap: 9
    # what it glued before the cap fired (the email limit, 5, refused some) stays glued
    assert len(merges(sim)) >= 2 and refusals(sim, "limit:email")
    callers = {sim.customer_of(f"email:caller{k}@mail.com") for k in range(1, 13)}
    assert len(callers) == 12 - len(merges(sim))
    assert state.customer not in callers


@pytest.mark.parametrize("undo", [False, True])
def test_what_joined_through_a_shared_email_is_undone_when_asked(undo: bool) -> None:
    """Ben's handle joins Anna's customer through their shared email (his DM); Ben's CRM
    id with the email proves it shared. With ``undo_through`` his handle is split off
    again (recorded ``undone``); without it (the default) it stays with Anna."""
    events = [
        record("anna-chat", T0, customer_id="CRM-ANNA", email="family@mail.com"),
        record("ben-dm", T0 + MINUTE, email="family@mail.com", social_handle="ben"),
        record("ben-chat", T0 + 9 * MINUTE, customer_id="CRM-BEN", email="family@mail.com"),
    ]
    sim = simulate(*events, undo_through=undo)
    anna = sim.customer_of("customer_id:CRM-ANNA")
    family = sim.customer_of("email:family@mail.com")
    assert family is not None and is_household(family)
    assert [r.identifier for r in refusals(sim, "shared")] == ["email:family@mail.com"]
    handle = sim.customer_of("social_handle:ben")
    if undo:
        assert handle not in (anna, family)
        (undone,) = refusals(sim, "undone")
        assert undone.identifier == "social_handle:ben" and undone.customers[0] == anna
    else:
        assert handle == anna and not refusals(sim, "undone")


@pytest.mark.parametrize("undo", [False, True])
def test_a_customer_merged_through_a_shared_email_is_undone(undo: bool) -> None:
    """Ben's handle has a customer of its own (his social posts) before his DM with the
    couple's email merges it with Anna's: the merge came through the email (the DM's
    anchor). When Ben's CRM id with the email proves it shared, the side that came
    through it (Ben's handle) is split off again; Anna keeps hers."""
    events = [
        record("ben-post", T0, social_handle="ben"),
        record("anna-chat", T0 + MINUTE, customer_id="CRM-ANNA", email="family@mail.com"),
        record("anna-web", T0 + 2 * MINUTE, customer_id="CRM-ANNA", anonymous_id="anna-ck"),
        record("ben-dm", T0 + 3 * MINUTE, email="family@mail.com", social_handle="ben"),
        record("ben-chat", T0 + 9 * MINUTE, customer_id="CRM-BEN", email="family@mail.com"),
    ]
    sim = simulate(*events, undo_through=undo)
    assert [m.via for m in merges(sim)][:1] == ["social_handle:ben"]
    anna = sim.customer_of("customer_id:CRM-ANNA")
    assert anna is not None and sim.customer_of("anonymous_id:anna-ck") == anna
    family = sim.customer_of("email:family@mail.com")
    assert family is not None and is_household(family)
    handle = sim.customer_of("social_handle:ben")
    if undo:
        assert handle not in (anna, family)
        (undone,) = refusals(sim, "undone")
        assert undone.identifier == "social_handle:ben"
    else:
        assert handle == anna and not refusals(sim, "undone")


def test_two_people_sharing_an_email_are_refused_and_recorded() -> None:
    sim = simulate(
        record("anna-1", T0, customer_id="CRM-ANNA", email="family@mail.com", login_id="anna"),
        record(
            "ben-1", T0 + MINUTE, customer_id="CRM-BEN", email="family@mail.com", login_id="ben"
        ),
    )
    anna, ben = sim.customer_of("customer_id:CRM-ANNA"), sim.customer_of("customer_id:CRM-BEN")
    assert anna is not None and ben is not None and anna != ben
    family = sim.customer_of("email:family@mail.com")  # theirs, not one person's
    assert family is not None and is_household(family)
    assert sim.customer_of("login_id:ben") == ben
    assert sim.customer_of("login_id:anna") == anna
    (verdict,) = refusals(sim, "shared")
    assert verdict.identifier == "email:family@mail.com" and verdict.for_review
    (refused,) = refusals(sim, "limit:customer_id")
    assert refused.reason == "limit:customer_id"
    assert (refused.survivor, refused.absorbed) == (anna, ben)
    assert refused.evidence == ("customer_id:CRM-ANNA", "customer_id:CRM-BEN")
    assert refused.via == "email:family@mail.com" and refused.event_id == "ben-1"


def test_test_accounts_and_placeholder_values_never_link() -> None:
    rules = IdentityRules()
    events = [
        record("t1", T0, email="test@test.com", anonymous_id="cookie-1"),
        record("t2", T0 + 1, email="TEST@test.com", anonymous_id="cookie-2"),
        record("t3", T0 + 2, device_id="00000000-0000-0000-0000-000000000000", login_id="a"),
        record("t4", T0 + 3, device_id="00000000-0000-0000-0000-000000000000", login_id="b"),
        record("t5", T0 + 4, anonymous_id="anonymous", phone="+10000000000"),
    ]
    sim = simulate(*events, rules=rules)
    people = ("anonymous_id:cookie-1", "anonymous_id:cookie-2", "login_id:a", "login_id:b")
    assert len({sim.customer_of(k) for k in people}) == 4  # a shared test value glued no one
    blocked = {(r.event_id, r.identifier) for r in refusals(sim, "blocked_value")}
    assert ("t2", "email:TEST@test.com") in blocked and len(blocked) == 6
    assert not any("test@" in k.lower() or "0000" in k for k in sim.identifiers())
    assert stamped(sim, "t5") is None  # nothing usable: the event is attributed to nobody
    assert ops_for_event(events[4], rules)[0] == []


def test_late_login_after_anonymous_browsing_merges_into_the_oldest() -> None:
    browsing = [record(f"view-{i}", T0 + i * MINUTE, anonymous_id="ck-1") for i in range(5)]
    app = record("app", T0 + 2 * MINUTE, anonymous_id="ck-1", device_id="phone-x")
    login = record("login", T0 + 60 * MINUTE, login_id="jane", anonymous_id="ck-1")
    sim = simulate(*browsing, app, login)

    oldest = customer_id(T0, "anonymous_id:ck-1")
    assert {
        sim.customer_of(k) for k in ("anonymous_id:ck-1", "device_id:phone-x", "login_id:jane")
    } == {oldest}
    assert stamped(sim, "view-0") == oldest  # old events keep their (surviving) id
    assert sim.survivor(stamped(sim, "login") or "") == oldest
    (merge,) = [m for m in merges(sim) if m.event_id == "login"]
    assert merge.survivor == oldest  # the login's own (younger) customer was absorbed
    assert merge.absorbed == customer_id(T0 + 60 * MINUTE, "login_id:jane")
    assert merge.via == "anonymous_id:ck-1" and merge.identifiers == ("login_id:jane",)
    assert not refusals(sim)
    updates = [o for o in sim.outputs if isinstance(o, IdentityUpdate) and "jane" in o.identifier]
    assert updates[-1] == IdentityUpdate("login_id:jane", oldest, T0 + 60 * MINUTE, 2)


def test_crm_customer_older_than_the_browsing_survives_instead() -> None:
    call = record("call", T0, customer_id="CRM9", phone="+447700900123")
    web = [record(f"web-{i}", T0 + (i + 1) * MINUTE, anonymous_id="ck-9") for i in range(3)]
    login = record("login", T0 + 10 * MINUTE, customer_id="CRM9", anonymous_id="ck-9")
    sim = simulate(call, *web, login)
    assert sim.customer_of("anonymous_id:ck-9") == customer_id(T0, "customer_id:CRM9")
    assert {m.absorbed for m in merges(sim)} == {customer_id(T0 + MINUTE, "anonymous_id:ck-9")}


# ----------------------------------------------------------------------------- erase, split


def _person(prefix: str, t: int) -> list[TouchpointRecord]:
    return [
        record(f"{prefix}-web", t, anonymous_id=f"{prefix}-ck", device_id=f"{prefix}-dev"),
        record(f"{prefix}-app", t + MINUTE, device_id=f"{prefix}-dev", login_id=f"{prefix}-login"),
        record(
            f"{prefix}-call",
            t + 2 * MINUTE,
            customer_id=f"{prefix}-crm",
            phone=f"+4477009{sum(map(ord, prefix)):05d}",
            email=f"{prefix}@mail.com",
        ),
        record(
            f"{prefix}-link",
            t + 3 * MINUTE,
            customer_id=f"{prefix}-crm",
            login_id=f"{prefix}-login",
        ),
    ]


@pytest.mark.parametrize("by", ["absorbed customer id", "email"])
def test_erasure_leaves_nothing_and_is_not_resurrected(by: str) -> None:
    sim = simulate(*_person("zoe", T0), *_person("max", T0))
    zoe = sim.customer_of("email:zoe@mail.com")
    zoe_keys = {k for k in sim.identifiers() if sim.customer_of(k) == zoe}
    assert len(zoe_keys) == 6 and len(merges(sim)) >= 2
    absorbed = [m.absorbed for m in merges(sim) if sim.survivor(m.absorbed) == zoe]
    max_before = {k: sim.customer_of(k) for k in sim.identifiers() if k not in zoe_keys}

    if by == "email":
        sim.submit(EraseIdentifierOp("email:zoe@mail.com", "gdpr-1", T0 + 99 * MINUTE))
    else:
        sim.submit(EraseOp(absorbed[0], "gdpr-1", T0 + 99 * MINUTE))  # follows to the survivor
    sim.run()

    (erased,) = [o for o in sim.outputs if isinstance(o, Erased)]
    assert set(absorbed) < set(erased.customers) and erased.identifiers == 6
    for key in zoe_keys:  # identifiers: bare tombstones
        state = sim.state(key)
        assert isinstance(state, IdState)
        assert state_to_json(state) == {
            "t": "id",
            "erased": True,
            "first_seen_ms": 0,
            "version": state.version,
        }
    for cid in erased.customers:  # customers: bare tombstones
        assert state_to_json(cast(CustState, sim.state(cid))) == {
            "t": "customer",
            "created_ms": created_ms_of(cid),
            "erased": True,
        }
    everything = orjson.dumps([state_to_json(v) for s in sim.states for _, v in s.items()])
    assert not [k for k in zoe_keys if k.partition(":")[2].encode() in everything]
    assert not [c for c in erased.customers if c.encode() in everything]
    assert {k: sim.customer_of(k) for k in max_before} == max_before  # others untouched
    cleared = {
        o.identifier for o in sim.outputs if isinstance(o, IdentityUpdate) and o.customer is None
    }
    assert cleared == zoe_keys

    # a later event with the erased email (and a new cookie) does not bring zoe back
    sim.run([record("later", T0 + 200 * MINUTE, email="zoe@mail.com", anonymous_id="new-ck")])
    assert cast(IdState, sim.state("email:zoe@mail.com")).erased
    fresh = stamped(sim, "later")
    assert (
        fresh
        == sim.customer_of("anonymous_id:new-ck")
        == customer_id(T0 + 200 * MINUTE, "anonymous_id:new-ck")
    )
    assert fresh not in erased.customers
    # and a late op still in flight towards the erased customer erases what it carries
    sim.submit(JoinOp("anonymous_id:straggler", erased.customer, "email:zoe@mail.com", "late", T0))
    sim.run()
    assert cast(IdState, sim.state("anonymous_id:straggler")).erased


@pytest.mark.parametrize("quarantine", [False, True])
def test_split_moves_one_identifier_to_a_customer_of_its_own(quarantine: bool) -> None:
    sim = simulate(*_person("ivy", T0))
    before = sim.customer_of("device_id:ivy-dev")
    assert before is not None
    sim.submit(SplitOp("device_id:ivy-dev", "split-1", T0 + 50 * MINUTE, quarantine=quarantine))
    sim.run()

    after = sim.customer_of("device_id:ivy-dev")
    assert after == customer_id(T0 + 50 * MINUTE, "device_id:ivy-dev#split-1") != before
    (split,) = {o.id: o for o in sim.outputs if isinstance(o, SplitRecord)}.values()
    assert (split.from_customer, split.to_customer) == (before, after)
    old, new = cast(CustState, sim.state(before)), cast(CustState, sim.state(after))
    assert "device_id:ivy-dev" not in old.members.get("device_id", [])
    assert new.members == {"device_id": ["device_id:ivy-dev"]}
    assert sim.customer_of("login_id:ivy-login") == before  # the rest stays

    # the old link seen again: a quarantined split stays apart, a plain one re-merges
    sim.run([record("again", T0 + 60 * MINUTE, device_id="ivy-dev", anonymous_id="ivy-ck")])
    assert (sim.customer_of("device_id:ivy-dev") == before) is not quarantine


# ----------------------------------------------------------------------------- replay


class ReplayEverything(Simulator):
    """Applies every batch twice; the second application must not change the state."""

    kinds: set[str]

    def _step(self, p: int) -> None:
        state, queue = self.states[p], self.queues[p]
        batch = [queue[0]]  # max_batch=1
        super()._step(p)
        after = {
            op.routing_key: state_to_json(s) for op in batch if (s := state.get(op.routing_key))
        }
        self.node.handle_batch(batch, state)  # redelivered (its ops were already sent)
        again = {
            op.routing_key: state_to_json(s) for op in batch if (s := state.get(op.routing_key))
        }
        assert again == after, batch
        self.kinds.update(op.TAG for op in batch)


def test_every_op_kind_is_idempotent() -> None:
    sim = ReplayEverything(4, IdentityRules(), seed=3, max_batch=1, undo_through=True)
    sim.kinds = set()
    sim.run([*_person("amy", T0), *_person("bob", T0 + 1)])
    sim.run([record("share", T0 + 5, customer_id="amy-crm", email="bob@mail.com")])  # refused
    sim.run([record("2nd-login", T0 + 6, customer_id="amy-crm", login_id="amy-work")])  # ok
    sim.run([record("3rd-login", T0 + 7, login_id="amy-home", customer_id="amy-crm")])  # detach
    sim.submit(SplitOp("device_id:amy-dev", "split-1", T0 + 8))
    sim.submit(EraseIdentifierOp("email:bob@mail.com", "gdpr-1", T0 + 9))
    sim.run()
    assert sim.kinds == {cls.TAG for cls in identity._OP_TYPES}
    # amy's CRM id with bob's email: refused, and the email is found shared
    assert {r.reason for r in refusals(sim)} == {"limit:customer_id", "limit:login_id", "shared"}


def test_replayed_deliveries_reach_the_same_answer() -> None:
    events = [*_person("amy", T0), *_person("bob", T0 + 1), *_person("cy", T0 + 2)]
    events += [record("x", T0 + 9, email="amy@mail.com", anonymous_id="bob-ck")]
    clean = simulate(*events, rules=IdentityRules.unguarded())
    for seed in range(5):
        sim = Simulator(8, IdentityRules.unguarded(), seed, redeliver=0.5, wire=True)
        sim.run(events)
        assert sim.components() == clean.components() == offline_components(events)


# ----------------------------------------------------------------------------- node API


def test_handle_batch_coalesces_and_can_defer_writes() -> None:
    node = IdentityNode()
    state = DictState()
    ops: list[Op] = [
        LinkOp(("device_id:d1", "anonymous_id:a1"), f"e{i}", T0 + i) for i in range(50)
    ]
    effects = node.handle_batch(ops, state, T0, defer_writes=True)
    assert not state.data and list(effects.writes) == ["device_id:d1"]
    label = customer_id(T0, "device_id:d1")
    assert effects.ops == [
        AddMemberOp(label, "device_id:d1", label, "e0", T0),
        JoinOp("anonymous_id:a1", label, "device_id:d1", "e0", T0),
    ]
    assert sum(isinstance(o, Resolved) for o in effects.outputs) == 50
    identity.apply_writes(state, effects.writes)
    again = node.handle_batch(ops[:1], state, T0)
    assert again.ops == [] and again.outputs == [Resolved("e0", T0, label)]


def test_ops_for_event_orders_strongest_first_and_filters() -> None:
    rules = IdentityRules()
    event = record("e", T0, anonymous_id="ck", email="a@b.com", device_id="0000", customer_id="C1")
    (link,), refused = ops_for_event(event, rules)
    assert isinstance(link, LinkOp)
    assert link.idents == ("customer_id:C1", "email:a@b.com", "anonymous_id:ck")
    assert link.routing_key == "customer_id:C1" and link.event is event
    assert [r.identifier for r in refused] == ["device_id:0000"]


def test_customer_ids_sort_by_age() -> None:
    older, newer = customer_id(T0, "email:z@z.com"), customer_id(T0 + 1, "email:a@a.com")
    assert older < newer and created_ms_of(older) == T0
    assert re.fullmatch(r"c[0-9a-f]{19}", older)


def test_rules_from_mapping() -> None:
    rules = IdentityRules.from_mapping(
        {
            "limits": {"email": 2},
            "merge_caps": {"device_id": 7},
            "blocked_values": {"email": ["Nobody@corp.com"]},
            "blocked_patterns": {"*": [r"^guest-"]},
        }
    )
    assert rules.limit("email") == 2 and rules.limit("phone") == 5
    assert rules.merge_cap("device_id") == 7 and rules.merge_cap("phone") == 3
    assert rules.is_blocked("email:nobody@corp.com") and not rules.is_blocked("email:test@test.com")
    assert rules.is_blocked("login_id:guest-17") and rules.is_blocked("login_id:unknown")
    bad_settings: list[dict[str, Any]] = [
        {"limits": {"fax": 1}},
        {"limits": {"email": 0}},
        {"blocked_patterns": {"email": ["("]}},
        {"colour": "blue"},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            IdentityRules.from_mapping(bad)


# ----------------------------------------------------------------------------- wire format


def test_op_names_on_the_wire_and_their_routes_are_fixed() -> None:
    # the names envelopes and the identity table carry (derived from the class names) and
    # the field each op is routed by (its first): changing one breaks stored state
    assert {cls.TAG: cls.ROUTE for cls in identity._OP_TYPES} == {
        "link": "idents",
        "join": "identifier",
        "add_member": "customer",
        "merge": "absorbed",
        "propose": "survivor",
        "absorbed": "absorbed",
        "unlock": "customer",
        "relabel": "identifier",
        "detach": "identifier",
        "remove_member": "customer",
        "split": "identifier",
        "shared": "identifier",
        "undo_through": "customer",
        "erase": "customer",
        "erase_identifier": "identifier",
    }
    link = LinkOp(("email:a@b.com", "phone:+44"), "e1", T0)
    assert link.routing_key == "email:a@b.com"
    assert identity.MergeOp("c2", "c1", "phone:+44", "e1", T0).routing_key == "c2"


def test_json_shapes() -> None:
    join = JoinOp("email:a@b.com", "c0000000000aabbccdd", "customer_id:C1", "e1", T0)
    assert op_to_json(join) == {
        "op": "join",
        "identifier": "email:a@b.com",
        "customer": "c0000000000aabbccdd",
        "via": "customer_id:C1",
        "event_id": "e1",
        "ts": T0,
        "strong": False,
    }
    propose = ProposeOp("c1", "c2", 3, ("email:a@b.com",), ("c3",), "phone:+44", "e1", T0)
    assert op_from_json(orjson.loads(orjson.dumps(op_to_json(propose)))) == propose
    refusal = Refusal("limit:email", "e1", T0, survivor="c1", absorbed="c2", evidence=("email:x",))
    assert output_to_json(refusal)["type"] == "refusal"
    assert output_from_json(orjson.loads(orjson.dumps(output_to_json(refusal)))) == refusal
    cust = CustState(T0, {"email": ["email:a@b.com"]}, pending="c1", lock_seq=2, waiting=[join])
    assert state_from_json(orjson.loads(orjson.dumps(state_to_json(cust)))) == cust
    cust.through = {"device_id:tab": ["login_id:b", "email:b@c.com"]}
    assert state_from_json(orjson.loads(orjson.dumps(state_to_json(cust)))) == cust
    cust.shared, cust.refused = ["device_id:tab"], ["c2\x1f7"]
    assert state_from_json(orjson.loads(orjson.dumps(state_to_json(cust)))) == cust
    ident = IdState("c1", via="email:a@b.com", strong_glued=["c1", "c2"], confirmed=True)
    assert state_from_json(orjson.loads(orjson.dumps(state_to_json(ident)))) == ident
    assert state_to_json(IdState("c1", first_seen_ms=T0, version=1)) == {
        "t": "id",
        "customer": "c1",
        "first_seen_ms": T0,
        "version": 1,
    }
    with pytest.raises(ValueError):
        op_from_json({"op": "teleport"})


def test_public_names_are_sorted_and_exist() -> None:
    assert identity.__all__ == sorted(identity.__all__)
    assert all(hasattr(identity, name) for name in identity.__all__)
