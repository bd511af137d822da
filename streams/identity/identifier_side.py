"""The identifier side of the identity protocol: the handlers of ops routed to an
identifier's key (LINK, JOIN, RELABEL, DETACH, SPLIT, SHARED, ERASE_IDENTIFIER) and what
they share. The protocol is described in :mod:`streams.identity`."""

from __future__ import annotations

from dataclasses import replace

from streams.identity.effects import Effects, NodeParts
from streams.identity.ids import (
    _MAX_BLAME_HOPS,
    _MAX_FORMER,
    _SEP,
    WEAK_CAP_FACTOR,
    _is_strong,
    _kind,
    _peer_tag,
    customer_id,
    is_household,
)
from streams.identity.messages import (
    AddMemberOp,
    DetachOp,
    EraseIdentifierOp,
    EraseOp,
    IdentityUpdate,
    JoinOp,
    LinkOp,
    MergeOp,
    Refusal,
    RelabelOp,
    RemoveMemberOp,
    Resolved,
    SharedOp,
    SplitOp,
    SplitRecord,
    UndoThroughOp,
)
from streams.identity.state import (
    IdState,
    StateView,
    _ident,
)


class IdentifierSide(NodeParts):
    """Handlers of the ops routed to an identifier (``IdentityNode`` mixes them in)."""

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
        fresh = _fresh_id(op.ts, op.identifier, op.event_id, op.household, undo, s.first_seen_ms)
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
        new = _fresh_id(ts, key, event_id, household, undo, s.first_seen_ms)
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


def _fresh_id(
    ts: int, key: str, event_id: str, household: bool, undo: bool = False, first_seen: int = 0
) -> str:
    """A split's new customer (``h...`` for a household).

    A household is the identifier's own, one per identifier: its id depends on the
    identifier alone (and when it was first seen), not on the op that found it shared.
    Several SHARED ops can reach a shared identifier, and after a crash that lost the
    writes of the batch that made it a household a redelivered *other* one may do it
    again: with an id per op the second household would be a new customer while the
    first one already took the identifier (its ADD_MEMBER was sent): two live customers
    holding it. With one id per identifier the second is a replay of the first."""
    if household:
        return f"h{customer_id(first_seen, f'{key}#household')[1:]}"
    return customer_id(ts, f"{key}#{event_id}{'#undo' if undo else ''}")


def _set_label(key: str, s: IdState, customer: str, ts: int, fx: Effects) -> None:
    s.customer = customer
    if customer in s.left:
        s.left.remove(customer)
    s.version += 1
    fx.outputs.append(IdentityUpdate(key, customer, ts, s.version))


def _remember_former(s: IdState, label: str) -> None:
    if label not in s.former:
        s.former.append(label)
        del s.former[:-_MAX_FORMER]
