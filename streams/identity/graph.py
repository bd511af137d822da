"""Streaming identity resolution: the pure, Faust-free core's entry point.

:class:`IdentityNode` handles the protocol's ops against one partition's state: the
identifier side (:mod:`streams.identity.identifier_side`) and the customer side
(:mod:`streams.identity.customer_side`), one handler per op. The protocol, its delivery
contract and its guards are described in :mod:`streams.identity`. This module re-exports
the public surface (ops, outputs, state, wire forms, rules, event helpers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from streams.identity.customer_side import CustomerSide
from streams.identity.effects import Effects
from streams.identity.events import (
    ResolutionMemory,
    event_identifiers,
    link_ops,
    offline_components,
    ops_for_event,
)
from streams.identity.identifier_side import IdentifierSide
from streams.identity.ids import (
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
    StateView,
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
    "SharedOp",
    "SplitOp",
    "SplitRecord",
    "StateView",
    "UndoThroughOp",
    "UnlockOp",
    "apply_writes",
    "created_ms_of",
    "customer_id",
    "event_identifiers",
    "is_household",
    "link_ops",
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


class IdentityNode(IdentifierSide, CustomerSide):
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
