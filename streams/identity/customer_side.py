"""The customer side of the identity protocol: the handlers of ops routed to a
customer's key (ADD_MEMBER, REMOVE_MEMBER, MERGE, PROPOSE, ABSORBED, UNLOCK, UNDO_THROUGH,
ERASE) and what they share. The protocol is described in :mod:`streams.identity`."""

from __future__ import annotations

import bisect
from dataclasses import replace

from streams.identity.effects import Effects, NodeParts
from streams.identity.ids import (
    _MAX_REFUSED,
    _MAX_THROUGH,
    _MAX_THROUGH_VIAS,
    _SEP,
    STRONG_KINDS,
    _digest,
    _is_strong,
    _kind,
)
from streams.identity.messages import (
    AbsorbedOp,
    AddMemberOp,
    DetachOp,
    Erased,
    EraseIdentifierOp,
    EraseOp,
    Merge,
    MergeOp,
    Op,
    ProposeOp,
    Refusal,
    RelabelOp,
    RemoveMemberOp,
    SharedOp,
    SplitOp,
    UndoThroughOp,
    UnlockOp,
)
from streams.identity.state import (
    CustState,
    StateView,
    _cust,
    _flat,
)
from streams.wire.model import IDENTIFIER_KINDS


class CustomerSide(NodeParts):
    """Handlers of the ops routed to a customer (``IdentityNode`` mixes them in)."""

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


def _defer(c: CustState, op: Op, cid: str, st: StateView) -> None:
    if op not in c.waiting:
        c.waiting.append(op)
        st.put(cid, c)
