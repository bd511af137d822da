"""Streaming identity resolution: the pure, Faust-free core.

Identifiers seen together on an event belong to one customer; customers are the
connected components of that graph. The graph is *partitioned*: an identifier's
state lives on ``partition_for("kind:value", n)``, a customer's on
``partition_for(customer_id, n)``, and the two talk only by **ops** sent over one
op topic. Every handler reads and writes the state of exactly one key, the op's
``routing_key``, so a partition's state is a table shard and no process needs to
see everything.

Customer ids sort by age (``"c" + created_ms as 11 hex digits + sha1(anchor)[:8]``),
so "the oldest survives" is ``min(a, b)``, computable anywhere. The protocol:

    LINK(i0, i1..)   at i0: label L (new customer if unset), Resolved(event, L), JOIN(j, L) each j
    JOIN(j, X)       at j: unset -> X (+ADD_MEMBER); other label Y -> MERGE(max, min) or quarantine
    MERGE(a, s)      at a: absorbed -> re-issue against a's survivor; locked -> wait; else lock,
                     PROPOSE(s, a, a's members)
    PROPOSE(s, a)    at s: absorbed -> forward to the survivor; locked -> wait; else check limits:
                     accept (union, Merge output, ABSORBED) or refuse (Refusal, UNLOCK)
    ABSORBED(a, s)   at a: absorbed_into = s, RELABEL every member, replay the waiting ops
    RELABEL(m, to)   at m: label = to if to is older (relabels commute)

Merges only ever go from a younger id to an older one, and a locked customer only
waits for a strictly older one, so no cycle of waits exists. A customer being
absorbed defers everything that would change its members, so the members it proposed
are exactly the members that move. Handlers are idempotent: applying any op twice
leaves the state as applying it once (proposals carry a lock number).

A lock number names its proposal, not only its place in the customer's sequence: it is
a digest of the previous number, the survivor asked, the members and absorbed ids
proposed and the evidence (the value it came through, the event): a survivor refuses a
merge through a value found shared (``shared_via``) and accepts the same members through
another. A crash that loses state writes rolls the customer back to an earlier
number while the proposals it already sent stay in flight; a plain counter would give
the next, different proposal the same number, and the late UNLOCK (or ABSORBED) of
the forgotten one would release (or settle) the new lock, leaving the customer live
while its survivor also holds its members. Replies to another proposal never match.

Delivery contract (what the Faust wiring must give): ops on a partition are handled
in order, at least once; a batch's ops are produced (acknowledged) *before* its state
writes, and offsets are committed after both. Then a crash either replays ops against
the old state (deterministic ids make the replay produce the same ops) or against the
new state (idempotent handlers). Outputs may repeat; each has a deterministic ``id``.

Erasure: the customer and every customer it absorbed become tombstones, each of its
identifiers becomes a tombstone ``IdState(erased=True)``. A tombstoned identifier is
never linked again: on a later event it is dropped from the link set like a
quarantined one (the event goes to the remaining identifiers, or to nobody), and ops
still in flight towards an erased customer are dropped or erase what they carry.
Handlers only get/put by key (never scan), so the state store may hash its keys.

Split (best effort): the identifier moves to a fresh customer of its own and is removed
from the old one. A replayed or stale JOIN towards its old customer is ignored, but a
new event linking it to that customer's identifiers merges them again (evidence wins)
unless the split also quarantined it; a relabel in flight during the split can also
move it back.

Merge cap: an identifier counts the distinct customers it was asked to join that came
with an account (the JOIN's event carried a strong id, ``STRONG_KINDS``), and all of
them; above the cap for its kind (or ``WEAK_CAP_FACTOR`` x the cap in all) it becomes a
household. Merges it requested before that stand.

Households (weak vs strong identifiers): a merge through a weak identifier refused by a
strong kind's limit proves two accounts glued through one value. ``SHARED`` finds it:
the weak anchor of the JOIN that asked for the merge, else the identifier it came
through, unless a weak value put that one in its customer (``IdState.via``: the blame
moves on, at most ``_MAX_BLAME_HOPS``). The shared value is quarantined and moved to a
customer of its own, ``h`` + ..., that claims no person (``is_household``); a relabel
that reaches it makes the sender drop it (``RemoveMemberOp.keep``). Its old customer
then undoes what joined the person through it (``UNDO_THROUGH``: the identifiers first
labelled on an event anchored at it, and the side of a merge asked on such an event, each
split off unless a strong id vouched for it; ``IdentityNode(undo_through=False)`` turns
that off). A split is a replay when the identifier already had the customer it
makes (its label or ``former``), and an undo never moves a quarantined identifier: a
redelivered undo would otherwise pull a value found shared since out of its household.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from streams.identity.events import (
    ResolutionMemory,
    event_identifiers,
    offline_components,
    ops_for_event,
)
from streams.identity.ids import (
    _MAX_BLAME_HOPS,
    _MAX_FORMER,
    _MAX_REFUSED,
    _MAX_THROUGH,
    _MAX_THROUGH_VIAS,
    _SEP,
    STRONG_KINDS,
    WEAK_CAP_FACTOR,
    _digest,
    _is_strong,
    _kind,
    _peer_tag,
    created_ms_of,
    customer_id,
    is_household,
)
from streams.identity.messages import (
    _OP_TYPES,
    AbsorbedOp,
    AddMemberOp,
    DetachOp,
    Erased,
    EraseIdentifierOp,
    EraseOp,
    IdentityUpdate,
    JoinOp,
    LinkOp,
    Merge,
    MergeOp,
    Op,
    Output,
    ProposeOp,
    Refusal,
    RelabelOp,
    RemoveMemberOp,
    Resolved,
    SharedOp,
    SplitOp,
    SplitRecord,
    UndoThroughOp,
    UnlockOp,
)
from streams.identity.rules import IdentityRules
from streams.identity.state import (
    CustState,
    DictState,
    IdState,
    State,
    StateView,
    _cust,
    _flat,
    _ident,
    _Overlay,
    apply_writes,
)
from streams.identity.wire import (
    JsonState,
    op_from_json,
    op_to_json,
    output_from_json,
    output_to_json,
    state_from_json,
    state_to_json,
)
from streams.wire.model import IDENTIFIER_KINDS

__all__ = [
    "AbsorbedOp",
    "AddMemberOp",
    "CustState",
    "DetachOp",
    "DictState",
    "Effects",
    "EraseIdentifierOp",
    "EraseOp",
    "Erased",
    "IdState",
    "IdentityNode",
    "IdentityRules",
    "IdentityUpdate",
    "JoinOp",
    "JsonState",
    "LinkOp",
    "Merge",
    "MergeOp",
    "Op",
    "Output",
    "ProposeOp",
    "Refusal",
    "RelabelOp",
    "RemoveMemberOp",
    "ResolutionMemory",
    "Resolved",
    "SplitOp",
    "SplitRecord",
    "StateView",
    "UnlockOp",
    "apply_writes",
    "created_ms_of",
    "customer_id",
    "event_identifiers",
    "is_household",
    "offline_components",
    "op_from_json",
    "op_to_json",
    "ops_for_event",
    "output_from_json",
    "output_to_json",
    "state_from_json",
    "state_to_json",
]


# ----------------------------------------------------------------------------- the node


@dataclass(slots=True)
class Effects:
    ops: list[Op] = field(default_factory=list)  # to send, each to partition_for(routing_key)
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, State] = field(default_factory=dict)  # handle_batch(defer_writes=True)


class IdentityNode:
    """Handles ops against one partition's state. Stateless itself; safe to share."""

    def __init__(self, rules: IdentityRules | None = None, *, undo_through: bool = True) -> None:
        self.rules = rules or IdentityRules()
        self.undo_through = undo_through
        # one method per op, named after its tag: LinkOp -> self._link
        self._handlers: dict[type[Any], Callable[[Any, StateView, Effects], None]] = {
            cls: getattr(self, f"_{cls.TAG}") for cls in _OP_TYPES
        }

    def handle(self, op: Op, state: StateView, now_ms: int = 0) -> Effects:
        """Apply one op (writes go straight to ``state``). ``now_ms`` is unused on purpose:
        handlers depend on (op, state) only, so a replay reproduces the same effects."""
        effects = Effects()
        self._handlers[type(op)](op, state, effects)
        return effects

    def handle_batch(
        self, ops: Iterable[Op], state: StateView, now_ms: int = 0, *, defer_writes: bool = False
    ) -> Effects:
        """Apply ops in order; one write per touched key, repeated ops and outputs coalesced.

        With ``defer_writes`` the writes are returned in ``Effects.writes`` instead of
        applied, so the caller can produce the ops first and then persist the state.
        """
        overlay = _Overlay(state)
        effects = Effects()
        for op in ops:
            self._handlers[type(op)](op, overlay, effects)
        effects.ops = _coalesce_ops(effects.ops)
        effects.outputs = _coalesce_outputs(effects.outputs)
        if defer_writes:
            effects.writes = overlay.dirty
        else:
            apply_writes(state, overlay.dirty)
        return effects

    # -- identifier side

    def _link(self, op: LinkOp, st: StateView, fx: Effects) -> None:
        anchor = op.idents[0]
        s = _ident(st, anchor)
        if s is not None and (s.quarantined or s.erased):  # it does not link
            if len(op.idents) > 1:
                fx.ops.append(LinkOp(op.idents[1:], op.event_id, op.ts, op.event))
            else:
                customer = None if s.erased else s.customer
                fx.outputs.append(Resolved(op.event_id, op.ts, customer, op.event, anchor))
            return
        changed = s is None
        if s is None:
            s = IdState(first_seen_ms=op.ts)
        if s.customer is None:
            new = customer_id(op.ts, anchor)
            _set_label(anchor, s, new, op.ts, fx)
            fx.ops.append(AddMemberOp(new, anchor, new, op.event_id, op.ts))
            changed = True
        label = s.customer
        assert label is not None
        fx.outputs.append(Resolved(op.event_id, op.ts, label, op.event, anchor))
        strong = any(_is_strong(key) for key in op.idents)
        for other in op.idents[1:]:
            tag = _peer_tag(other)
            if tag not in s.peers:  # a JOIN(other, any label of ours) was sent: no need again
                s.peers.append(tag)
                fx.ops.append(JoinOp(other, label, anchor, op.event_id, op.ts, strong))
                changed = True
        if changed:
            if len(s.peers) > self.rules.max_peers:
                del s.peers[: -self.rules.max_peers]
            st.put(anchor, s)

    def _join(self, op: JoinOp, st: StateView, fx: Effects) -> None:
        key, x = op.identifier, op.customer
        s = _ident(st, key)
        if s is None:
            s = IdState(first_seen_ms=op.ts)
        elif s.quarantined or s.erased:
            return
        y = s.customer
        if y is None:
            _set_label(key, s, x, op.ts, fx)
            s.via = op.via
            s.confirmed = op.strong
            if op.strong:
                s.strong_glued = [x]
            st.put(key, s)
            fx.ops.append(AddMemberOp(x, key, x, op.event_id, op.ts, op.via))
            return
        if x == y:
            if op.strong and not s.confirmed:  # a strong id vouches for the label
                s.confirmed = True
                st.put(key, s)
            return
        if x in s.left:  # a customer it was split off: that stands, on the record
            fx.outputs.append(
                Refusal(
                    "split",
                    op.event_id,
                    op.ts,
                    identifier=key,
                    customers=(x, y),
                    via=op.via,
                    evidence=(op.via, key),
                )
            )
            return
        if x in s.glued or x in s.former:  # already asked
            return
        s.glued = sorted({*s.glued, x, y})
        if op.strong:
            s.strong_glued = sorted({*s.strong_glued, x})
        # The cap counts customers that came with a strong identity (an account): a
        # person's own phone joining their own anonymous fragments is not a hub. A hub
        # among customers without accounts is still stopped, at WEAK_CAP_FACTOR x the cap.
        cap = self.rules.merge_cap(_kind(key))
        if len(s.strong_glued) > cap or len(s.glued) > cap * WEAK_CAP_FACTOR:
            st.put(key, s)
            fx.outputs.append(
                Refusal(
                    "merge_cap",
                    op.event_id,
                    op.ts,
                    identifier=key,
                    customers=tuple(s.glued),
                    via=op.via,
                    evidence=(op.via, key),
                )
            )
            self._make_household(key, s, y, op.event_id, op.ts, st, fx)
            return
        st.put(key, s)
        fx.ops.append(MergeOp(max(x, y), min(x, y), key, op.event_id, op.ts, op.via))

    def _relabel(self, op: RelabelOp, st: StateView, fx: Effects) -> None:
        s = _ident(st, op.identifier)
        if s is None or s.customer is None:
            return
        if (op.src and op.src in s.left) or (s.quarantined and is_household(s.customer)):
            # Sent for a customer it was split off (its membership there arrived late; a
            # household takes no relabel at all): that customer drops it again.
            fx.ops.append(
                RemoveMemberOp(op.customer, op.identifier, op.event_id, op.ts, s.customer)
            )
            return
        if op.customer >= s.customer:
            return  # labels only move to older ids: stale relabels are no-ops
        if s.left and op.src and op.src != s.customer:
            # Split off before: only a relabel from its own customer's chain moves it. One
            # from a customer it does not know yet waits until its label gets there.
            parked = f"{op.customer}{_SEP}{op.src}"
            if parked not in s.parked:
                s.parked = [*s.parked, parked][-_MAX_FORMER:]
                st.put(op.identifier, s)
            return
        self._move_label(op.identifier, s, op.customer, op.ts, fx)
        while s.left and (
            ready := [c for c, _, src in (p.partition(_SEP) for p in s.parked) if src == s.customer]
        ):
            target = min(ready)
            s.parked = [p for p in s.parked if p.partition(_SEP)[2] != s.customer]
            if target < s.customer:
                self._move_label(op.identifier, s, target, op.ts, fx)
        st.put(op.identifier, s)

    def _move_label(self, key: str, s: IdState, to: str, ts: int, fx: Effects) -> None:
        old = s.customer
        assert old is not None
        if old in s.glued and to not in s.glued:  # the same customers, renamed
            s.glued = sorted({*s.glued, to} - {old})
        if old in s.strong_glued:
            s.strong_glued = sorted({*s.strong_glued, to} - {old})
        _remember_former(s, old)
        _set_label(key, s, to, ts, fx)

    def _detach(self, op: DetachOp, st: StateView, fx: Effects) -> None:
        s = _ident(st, op.identifier)
        if s is None or s.erased or s.customer != op.customer:
            return
        self._move_to_fresh(op.identifier, s, op.event_id, op.ts, st, fx)

    def _split(self, op: SplitOp, st: StateView, fx: Effects) -> None:
        s = _ident(st, op.identifier)
        if s is None or s.erased or s.customer is None:
            return
        old = s.customer
        undo = op.unless_confirmed
        fresh = _fresh_id(op.ts, op.identifier, op.event_id, op.household, undo)
        if old == fresh or fresh in s.former:
            return  # replay (also after it moved on from the customer this split made)
        if undo and (s.quarantined or s.confirmed or s.customer in s.strong_glued):
            # a shared value is not undone (it is, or becomes, a household); a strong id
            # on one event vouched for its customer since
            return
        s.quarantined = s.quarantined or op.quarantine
        rejoin, s.rejoin = s.rejoin, None
        vouched = next((c for c in s.strong_glued if c != old), "")  # a strong id saw it there
        new = self._move_to_fresh(op.identifier, s, op.event_id, op.ts, st, fx, op.household, undo)
        fx.ops.append(RemoveMemberOp(old, op.identifier, op.event_id, op.ts, new))
        fx.outputs.append(SplitRecord(op.identifier, old, new, op.event_id, op.ts))
        if undo:
            fx.outputs.append(
                Refusal(
                    "undone",
                    op.event_id,
                    op.ts,
                    identifier=op.identifier,
                    customers=(old, new),
                    evidence=(op.identifier,),
                )
            )
            # Undone from the customer a shared value put it in: it joins the customer it
            # was seen with (the one of the refused merge that found the shared value, or
            # one a strong id saw it with).
            target = rejoin or vouched
            if target:
                fx.ops.append(JoinOp(op.identifier, target, op.identifier, op.event_id, op.ts))

    def _shared(self, op: SharedOp, st: StateView, fx: Effects) -> None:
        key = op.identifier
        s = _ident(st, key)
        if s is None or s.erased or s.customer is None or _is_strong(key):
            return
        if s.quarantined and is_household(s.customer):
            return  # already found out
        if (
            s.via is not None
            and s.via != key
            and not _is_strong(s.via)
            and op.hops < _MAX_BLAME_HOPS
        ):  # a weak value put it there: blame that one
            others = [c for c in op.customers if c != s.customer]
            if len(others) == 1 and s.customer in op.customers:
                s.rejoin = others[0]
                st.put(key, s)
            fx.ops.append(replace(op, identifier=s.via, hops=op.hops + 1))
            return

        fx.outputs.append(
            Refusal(
                "shared",
                op.event_id,
                op.ts,
                identifier=key,
                customers=op.customers,
                via=op.via,
                evidence=(op.reason, op.via, key),
            )
        )
        self._make_household(key, s, s.customer, op.event_id, op.ts, st, fx)

    def _make_household(
        self, key: str, s: IdState, old: str, event_id: str, ts: int, st: StateView, fx: Effects
    ) -> None:
        """A shared identifier: quarantined, a household of its own; its old customer
        undoes what came through it."""
        s.quarantined = True
        if s.customer is None or is_household(s.customer):
            st.put(key, s)
            return
        label = s.customer
        new = self._move_to_fresh(key, s, event_id, ts, st, fx, household=True)
        fx.ops.append(RemoveMemberOp(label, key, event_id, ts, new))
        if self.undo_through:
            fx.ops.append(UndoThroughOp(label, key, event_id, ts))
        fx.outputs.append(SplitRecord(key, label, new, event_id, ts))

    def _move_to_fresh(
        self,
        key: str,
        s: IdState,
        event_id: str,
        ts: int,
        st: StateView,
        fx: Effects,
        household: bool = False,
        undo: bool = False,
    ) -> str:
        """A customer of its own, with an id no earlier customer can have had."""
        new = _fresh_id(ts, key, event_id, household, undo)
        assert s.customer is not None
        _remember_former(s, s.customer)
        # Relabels in flight for the customers it leaves must not pull it back (``left``);
        # nor JOINs towards them (a replay cannot be told from new evidence): refused.
        s.left = [*s.left, *(f for f in s.former if f not in s.left)][-_MAX_FORMER:]
        s.peers, s.glued, s.parked = [], [], []
        s.via, s.confirmed, s.strong_glued = None, False, []
        _set_label(key, s, new, ts, fx)
        st.put(key, s)
        fx.ops.append(AddMemberOp(new, key, new, event_id, ts))
        return new

    def _erase_identifier(self, op: EraseIdentifierOp, st: StateView, fx: Effects) -> None:
        key = op.identifier
        s = _ident(st, key)
        if s is not None and s.erased:
            return
        label = s.customer if s is not None else None
        if op.customers:  # cascade from an erased customer
            if label is not None and label not in op.customers:
                return  # it moved to another customer (split) in the meantime
        elif label is not None:  # operator request: the whole customer goes
            fx.ops.append(EraseOp(label, op.event_id, op.ts))
        version = (s.version if s is not None else 0) + 1
        st.put(key, IdState(erased=True, version=version))
        fx.outputs.append(IdentityUpdate(key, None, op.ts, version))

    # -- customer side

    def _add_member(self, op: AddMemberOp, st: StateView, fx: Effects) -> None:
        cid, key = op.customer, op.identifier
        c = _cust(st, cid)
        if c.erased:
            customers = (cid,) if op.assigned == cid else (cid, op.assigned)
            fx.ops.append(EraseIdentifierOp(key, op.event_id, op.ts, customers))
            return
        if c.absorbed_into is not None:
            fx.ops.append(replace(op, customer=c.absorbed_into))
            return
        kind = _kind(key)
        have = c.members.get(kind, [])
        if key in have:
            # Before the lock check: a redelivered copy deferred behind a RemoveMember
            # (the identifier left since) would put it back when the lock is released.
            return
        if c.pending is not None:
            _defer(c, op, cid, st)
            return
        if len(have) >= self.rules.limit(kind):
            fx.outputs.append(
                Refusal(
                    f"limit:{kind}",
                    op.event_id,
                    op.ts,
                    identifier=key,
                    customers=(cid,),
                    evidence=(*have, key),
                )
            )
            fx.ops.append(DetachOp(key, op.assigned, op.event_id, op.ts))
            return
        bisect.insort(have, key)
        c.members[kind] = have
        if self.undo_through and op.via and op.via != key and not _is_strong(op.via):
            _remember_through(c, op.via, key)
        st.put(cid, c)
        if op.assigned != cid:
            fx.ops.append(RelabelOp(key, cid, op.event_id, op.ts, op.assigned))

    def _remove_member(self, op: RemoveMemberOp, st: StateView, fx: Effects) -> None:
        c = _cust(st, op.customer)
        if c.erased:
            return
        if c.absorbed_into is not None:
            fx.ops.append(replace(op, customer=c.absorbed_into))
        elif c.pending is not None:
            _defer(c, op, op.customer, st)
        elif op.keep and (op.keep == op.customer or op.keep in c.absorbed):
            return  # it came back with the customer it moved to: it stays
        else:
            kind = _kind(op.identifier)
            have = c.members.get(kind, [])
            if op.identifier in have:
                have.remove(op.identifier)
                if not have:
                    del c.members[kind]
                st.put(op.customer, c)

    def _merge(self, op: MergeOp, st: StateView, fx: Effects) -> None:
        cid = op.absorbed
        c = _cust(st, cid)
        if c.erased:
            return
        if c.absorbed_into is not None:
            r, s = c.absorbed_into, op.survivor
            if r != s:  # chase: merge our survivor with theirs
                fx.ops.append(MergeOp(max(r, s), min(r, s), op.via, op.event_id, op.ts))
            return
        if c.pending is not None:
            if c.pending != op.survivor:
                _defer(c, op, cid, st)
            return
        c.pending = op.survivor
        c.lock_seq = _lock_number(
            c.lock_seq, op.survivor, _flat(c.members), tuple(c.absorbed), op.via, op.event_id
        )
        st.put(cid, c)
        fx.ops.append(
            ProposeOp(
                op.survivor,
                cid,
                c.lock_seq,
                _flat(c.members),
                tuple(c.absorbed),
                op.via,
                op.event_id,
                op.ts,
                tuple(f"{via}\x1f{m}" for via, ms in c.through.items() for m in ms),
                op.anchor,
            )
        )

    def _propose(self, op: ProposeOp, st: StateView, fx: Effects) -> None:
        cid = op.survivor
        c = _cust(st, cid)
        if c.erased or _proposal_tag(op) in c.refused:
            # A proposal is answered once: a redelivered copy that reaches this customer
            # again (or, forwarded, its survivor) must not be accepted after its UNLOCK.
            fx.ops.append(UnlockOp(op.absorbed, op.seq, op.event_id, op.ts))
            return
        if c.absorbed_into is not None:  # our survivor is older still
            fx.ops.append(replace(op, survivor=c.absorbed_into))
            return
        if c.pending is not None:  # we are being absorbed ourselves: wait for the outcome
            _defer(c, op, cid, st)
            return
        if op.absorbed in c.absorbed:  # replay of an accepted proposal
            fx.ops.append(AbsorbedOp(op.absorbed, cid, op.seq, op.event_id, op.ts))
            return
        if op.via in c.shared:  # a merge through a value found shared since it was asked
            fx.outputs.append(
                Refusal(
                    "shared_via",
                    op.event_id,
                    op.ts,
                    identifier=op.via,
                    customers=(cid, op.absorbed),
                    survivor=cid,
                    absorbed=op.absorbed,
                    via=op.via,
                    evidence=("household", op.via),
                )
            )
            _refuse(c, op, st, fx)
            return
        merged = _union(c.members, op.members)
        if not self._refused_by_limit(c, op, merged, st, fx):
            self._accept(c, op, merged, st, fx)

    def _refused_by_limit(
        self, c: CustState, op: ProposeOp, merged: dict[str, list[str]], st: StateView, fx: Effects
    ) -> bool:
        """A kind over its limit in the union refuses the proposal (recorded); two accounts
        glued through a weak value also send SHARED to find the shared one."""
        cid = op.survivor
        for kind in IDENTIFIER_KINDS:
            if len(merged.get(kind, ())) > self.rules.limit(kind):
                fx.outputs.append(
                    Refusal(
                        f"limit:{kind}",
                        op.event_id,
                        op.ts,
                        customers=(cid, op.absorbed),
                        survivor=cid,
                        absorbed=op.absorbed,
                        via=op.via,
                        evidence=tuple(merged[kind]),
                    )
                )
                _refuse(c, op, st, fx)
                if kind in STRONG_KINDS and not _is_strong(op.via):
                    # two accounts glued through a weak value: find the shared one
                    fx.ops.append(
                        SharedOp(
                            # the value the JOIN came from, if weak (it put the identifier
                            # of a person seen with their account into another's customer);
                            # else the identifier, seen with two accounts
                            op.anchor
                            if op.anchor and op.anchor != op.via and not _is_strong(op.anchor)
                            else op.via,
                            (cid, op.absorbed),
                            op.via,
                            f"limit:{kind}",
                            op.event_id,
                            op.ts,
                        )
                    )
                return True
        return False

    def _accept(
        self, c: CustState, op: ProposeOp, merged: dict[str, list[str]], st: StateView, fx: Effects
    ) -> None:
        cid = op.survivor
        if self.undo_through and op.anchor and op.anchor != op.via and not _is_strong(op.anchor):
            # asked on an event anchored at a weak value: if it turns out shared, the side
            # that came through it is undone
            for key in _came_through(_flat(c.members), op):
                _remember_through(c, op.anchor, key)
        c.members = merged
        for pair in op.through:
            via, _, member = pair.partition(_SEP)
            _remember_through(c, via, member)
        c.absorbed.extend((op.absorbed, *op.absorbed_ids))
        st.put(cid, c)
        fx.outputs.append(Merge(cid, op.absorbed, op.via, op.event_id, op.ts, op.members))
        fx.ops.append(AbsorbedOp(op.absorbed, cid, op.seq, op.event_id, op.ts))

    def _undo_through(self, op: UndoThroughOp, st: StateView, fx: Effects) -> None:
        cid = op.customer
        c = _cust(st, cid)
        if c.erased:
            return
        if c.absorbed_into is not None:
            fx.ops.append(replace(op, customer=c.absorbed_into))
            return
        if c.pending is not None:
            _defer(c, op, cid, st)
            return
        if op.via not in c.shared:  # glue nothing more here through it
            c.shared = [*c.shared, op.via][-_MAX_THROUGH_VIAS:]
            st.put(cid, c)
        came = c.through.pop(op.via, None)
        if came is None:
            return
        st.put(cid, c)
        for key in came:  # each joined through via: split off, unless a strong id vouched
            if key != op.via and key in c.members.get(_kind(key), ()):
                fx.ops.append(SplitOp(key, op.event_id, op.ts, unless_confirmed=True))

    def _absorbed(self, op: AbsorbedOp, st: StateView, fx: Effects) -> None:
        cid = op.absorbed
        c = _cust(st, cid)
        if c.erased:
            return
        if c.absorbed_into is not None:
            if op.survivor < c.absorbed_into:  # a replayed proposal reached a later survivor
                c.absorbed_into = op.survivor
                st.put(cid, c)
            return
        if c.pending is None or c.lock_seq != op.seq:
            return  # not the proposal we are waiting for
        members, waiting = _flat(c.members), c.waiting
        st.put(
            cid,
            CustState(
                c.created_ms, absorbed_into=op.survivor, lock_seq=c.lock_seq, refused=c.refused
            ),
        )
        gone = {w.identifier for w in waiting if isinstance(w, RemoveMemberOp)}
        for key in members:
            if key in gone:  # it left while we were locked: the survivor drops it, no relabel
                continue
            fx.ops.append(RelabelOp(key, op.survivor, op.event_id, op.ts, cid))
        for deferred in waiting:  # now resolved against the survivor
            self._handlers[type(deferred)](deferred, st, fx)

    def _unlock(self, op: UnlockOp, st: StateView, fx: Effects) -> None:
        c = _cust(st, op.customer)
        if c.erased or c.pending is None or c.lock_seq != op.seq:
            return
        waiting, c.waiting, c.pending = c.waiting, [], None
        st.put(op.customer, c)
        for deferred in waiting:
            self._handlers[type(deferred)](deferred, st, fx)

    def _erase(self, op: EraseOp, st: StateView, fx: Effects) -> None:
        cid = op.customer
        c = _cust(st, cid)
        if c.erased:
            return
        if op.cascade_of is None:
            if c.absorbed_into is not None:  # erase the person, i.e. the survivor
                fx.ops.append(EraseOp(c.absorbed_into, op.event_id, op.ts))
                return
            if c.pending is not None:  # wait until we know whose members ours are
                _defer(c, op, cid, st)
                return
        members, absorbed = _flat(c.members), tuple(c.absorbed)
        st.put(cid, CustState(c.created_ms, erased=True))
        if op.cascade_of is not None:
            return
        customers = (cid, *absorbed)
        for other in absorbed:
            fx.ops.append(EraseOp(other, op.event_id, op.ts, cascade_of=cid))
        for key in members:
            fx.ops.append(EraseIdentifierOp(key, op.event_id, op.ts, customers))
        fx.outputs.append(Erased(cid, customers, len(members), op.event_id, op.ts))


def _fresh_id(ts: int, key: str, event_id: str, household: bool, undo: bool = False) -> str:
    """A split's new customer (``h...`` for a household)."""
    cid = customer_id(ts, f"{key}#{event_id}{'#undo' if undo else ''}")
    return f"h{cid[1:]}" if household else cid


def _set_label(key: str, s: IdState, customer: str, ts: int, fx: Effects) -> None:
    s.customer = customer
    if customer in s.left:
        s.left.remove(customer)
    s.version += 1
    fx.outputs.append(IdentityUpdate(key, customer, ts, s.version))


def _union(members: dict[str, list[str]], more: tuple[str, ...]) -> dict[str, list[str]]:
    merged = {kind: list(keys) for kind, keys in members.items()}
    for key in more:
        have = merged.setdefault(_kind(key), [])
        if key not in have:
            bisect.insort(have, key)
    return merged


def _proposal_tag(op: ProposeOp) -> str:
    return f"{op.absorbed}{_SEP}{op.seq}"


def _refuse(c: CustState, op: ProposeOp, st: StateView, fx: Effects) -> None:
    """UNLOCK the proposer, and remember the answer: the same proposal redelivered later,
    when this customer's members (or its survivor's, forwarded) may take it, is refused
    again; otherwise its late ABSORBED would find the proposer unlocked by the first
    answer and the survivor would hold members the proposer still holds."""
    tag = _proposal_tag(op)
    if tag not in c.refused:
        c.refused = [*c.refused, tag][-_MAX_REFUSED:]
        st.put(op.survivor, c)
    fx.ops.append(UnlockOp(op.absorbed, op.seq, op.event_id, op.ts))


def _came_through(survivor: tuple[str, ...], op: ProposeOp) -> tuple[str, ...]:
    """The members a merge asked on an event anchored at a weak value brought over: the
    side of the identifier the JOIN reached (not the anchor's), unless only that side has
    an account (then the anchor's side, the anchor itself excepted)."""
    absorbed_joined = op.via in op.members or op.anchor in survivor
    joined, other = (op.members, survivor) if absorbed_joined else (survivor, op.members)
    if any(_is_strong(m) for m in joined) and not any(_is_strong(m) for m in other):
        joined = other
    return tuple(m for m in joined if m != op.anchor)


def _remember_through(c: CustState, via: str, key: str) -> None:
    """The identifiers that joined through a weak identifier (on an event anchored at
    it), in case it turns out shared (bounded)."""
    have = c.through.get(via)
    if have is None:
        if len(c.through) >= _MAX_THROUGH_VIAS:
            del c.through[next(iter(c.through))]
        have = c.through[via] = []
    if key != via and key not in have:
        have.append(key)
        del have[:-_MAX_THROUGH]


def _lock_number(
    previous: int,
    survivor: str,
    members: tuple[str, ...],
    absorbed: tuple[str, ...],
    via: str,
    event_id: str,
) -> int:
    """The next lock's number: it names the proposal (to whom, what, on which evidence), so
    a number reused after lost state writes belongs to the same proposal. The evidence
    counts: a survivor refuses a merge through a value found shared (``shared_via``) and
    accepts the same members through another one. 52 bits: exact as a JSON number."""
    digest = _digest("lock", str(previous), survivor, *members, "/", *absorbed, "/", via, event_id)
    return int(digest[:13], 16)


def _remember_former(s: IdState, label: str) -> None:
    if label not in s.former:
        s.former.append(label)
        del s.former[:-_MAX_FORMER]


def _defer(c: CustState, op: Op, cid: str, st: StateView) -> None:
    if op not in c.waiting:
        c.waiting.append(op)
        st.put(cid, c)


def _coalesce_key(op: Op) -> object:
    """Ops with the same key have the same effect; only the first one's evidence is kept."""
    if isinstance(op, JoinOp):  # a strong id's evidence is not folded into a weak one's
        return (op.TAG, op.identifier, op.customer, op.strong)
    if isinstance(op, RelabelOp):
        return (op.TAG, op.identifier, op.customer)
    if isinstance(op, AddMemberOp):
        return (op.TAG, op.customer, op.identifier, op.assigned)
    if isinstance(op, MergeOp):
        return (op.TAG, op.absorbed, op.survivor)
    return op


def _coalesce_ops(ops: list[Op]) -> list[Op]:
    seen: dict[object, Op] = {}
    for op in ops:
        seen.setdefault(_coalesce_key(op), op)
    return list(seen.values())


def _coalesce_outputs(outputs: list[Output]) -> list[Output]:
    """One output per id; an identifier's label updates collapse to its latest."""
    seen: dict[object, Output] = {}
    for out in outputs:
        if isinstance(out, IdentityUpdate):
            seen[("identity", out.identifier)] = out
        else:
            seen.setdefault((out.TAG, out.id), out)
    return list(seen.values())
