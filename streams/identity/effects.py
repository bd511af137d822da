"""What a handler produces (:class:`Effects`) and what the node's two sides share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.identity.messages import Op, Output
from streams.identity.rules import IdentityRules
from streams.identity.state import State, StateView


@dataclass(slots=True)
class Effects:
    ops: list[Op] = field(default_factory=list)  # to send, each to partition_for(routing_key)
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, State] = field(default_factory=dict)  # handle_batch(defer_writes=True)


class NodeParts:
    """The attributes the handlers use; ``IdentityNode.__init__`` sets them."""

    rules: IdentityRules
    undo_through: bool  # undo what joined a person through a value found shared
    # one method per op, named after its tag: LinkOp -> self._link
    _handlers: dict[type[Any], Callable[[Any, StateView, Effects], None]]
