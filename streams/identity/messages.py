"""The identity protocol's messages: ops between partitions and the outputs the stage emits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias, TypeVar, dataclass_transform, get_args

from streams.identity.ids import _digest

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _message(cls: type[_T]) -> type[_T]:
    """A message class: a slotted dataclass, immutable by contract. The type checker holds
    it frozen (``frozen_default``: assigning a field is an error there); at run time it is
    not, since a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` — ~4x the cost, and ops and outputs are built by the thousand per
    batch (``streams.sim.stage_cpu``: identity ~-12 %). Hashable by value, as frozen."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


# ----------------------------------------------------------------------------- ops
# event_id/ts: the event (or operator request) that caused an op, carried as evidence.


class _Routed:
    """An op goes to ``partition_for(op.routing_key, n)``: the key whose state it changes,
    its first field (``ROUTE``). Its ``TAG`` (its name on the wire; the node's handler is
    ``_<TAG>``) is the class name in snake case, without ``Op``: ``AddMemberOp`` is
    ``add_member``. Both are set when the class is defined."""

    __slots__ = ()
    TAG: ClassVar[str]
    ROUTE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TAG = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Op")).lower()
        cls.ROUTE = next(iter(cls.__dict__.get("__annotations__", ())), "")

    @property
    def routing_key(self) -> str:
        key: str = getattr(self, self.ROUTE)
        return key


@_message
class LinkOp(_Routed):
    idents: tuple[str, ...]  # strongest first; idents[0] is the anchor
    event_id: str
    ts: int
    event: Any = field(default=None, compare=False)  # passed through to Resolved

    @property
    def routing_key(self) -> str:
        return self.idents[0]


@_message
class JoinOp(_Routed):
    identifier: str
    customer: str
    via: str  # the anchor that saw both
    event_id: str
    ts: int
    strong: bool = False  # the event carried a strong identifier (STRONG_KINDS)


@_message
class AddMemberOp(_Routed):
    customer: str  # where it is going (follows absorptions)
    identifier: str
    assigned: str  # the label the identifier was given
    event_id: str
    ts: int
    via: str = ""  # the anchor whose event brought it ("" : it started the customer)


@_message
class MergeOp(_Routed):
    absorbed: str  # the younger id
    survivor: str  # the older id
    via: str  # the identifier that glued them
    event_id: str
    ts: int
    anchor: str = ""  # the anchor of the event whose JOIN asked for it


@_message
class ProposeOp(_Routed):
    survivor: str
    absorbed: str
    seq: int  # the absorbed customer's lock number (names this proposal)
    members: tuple[str, ...]  # the absorbed customer's identifiers
    absorbed_ids: tuple[str, ...]  # customers it absorbed earlier
    via: str
    event_id: str
    ts: int
    through: tuple[str, ...] = ()  # its CustState.through, as "via\x1fmember" pairs
    anchor: str = ""  # MergeOp.anchor


@_message
class AbsorbedOp(_Routed):
    absorbed: str
    survivor: str
    seq: int
    event_id: str
    ts: int


@_message
class UnlockOp(_Routed):
    customer: str
    seq: int
    event_id: str
    ts: int


@_message
class RelabelOp(_Routed):
    identifier: str
    customer: str
    event_id: str
    ts: int
    src: str = ""  # the label the sender knew it by (the absorbed customer, or the assigned one)


@_message
class DetachOp(_Routed):
    """A customer refused the identifier (limit): it gets a customer of its own."""

    identifier: str
    customer: str  # the label it was refused under
    event_id: str
    ts: int


@_message
class RemoveMemberOp(_Routed):
    customer: str
    identifier: str
    event_id: str
    ts: int
    keep: str = ""  # its label now: if this customer is (or absorbed) it, it is back: keep it


@_message
class SplitOp(_Routed):
    """Operator request: move the identifier off its customer onto a new one."""

    identifier: str
    event_id: str  # the request id
    ts: int
    quarantine: bool = False  # also stop it linking (a shared device, a kiosk)
    household: bool = False  # its new customer is a household (is_household): shared
    unless_confirmed: bool = False  # an undo: leave it if a strong id vouched for its label


@_message
class SharedOp(_Routed):
    """Two customers with different strong identities were glued through ``identifier``
    (a limit on a strong kind refused their merge): find the identifier that is shared.

    At the identifier: if it came to its customer through a weak anchor (``IdState.via``),
    that anchor's value put it there: the blame moves on to it. Else the identifier was
    seen with a strong id (or started its customer) and is the shared one: it becomes a
    household (quarantined, a customer of its own that claims no person) and its old
    customer undoes what came through it (``UndoThroughOp``)."""

    identifier: str
    customers: tuple[str, ...]  # the customers the refused merge would have joined
    via: str  # the identifier the refused merge came through
    reason: str  # the refusal: limit:<kind> or merge_cap
    event_id: str
    ts: int
    hops: int = 0


@_message
class UndoThroughOp(_Routed):
    """At a customer: split off the members that came to it through ``via`` (a shared
    identifier), unless a strong id vouched for them since."""

    customer: str
    via: str
    event_id: str
    ts: int


@_message
class EraseOp(_Routed):
    """Operator request (``cascade_of`` None: erases the customer's survivor), or the
    cascade tombstoning a customer absorbed by an erased one."""

    customer: str
    event_id: str
    ts: int
    cascade_of: str | None = None


@_message
class EraseIdentifierOp(_Routed):
    """Operator request (``customers`` empty: erases the identifier and its customer), or
    the cascade: tombstone the identifier if its label is one of ``customers``."""

    identifier: str
    event_id: str
    ts: int
    customers: tuple[str, ...] = ()


Op: TypeAlias = (
    LinkOp
    | JoinOp
    | AddMemberOp
    | MergeOp
    | ProposeOp
    | AbsorbedOp
    | UnlockOp
    | RelabelOp
    | DetachOp
    | RemoveMemberOp
    | SplitOp
    | SharedOp
    | UndoThroughOp
    | EraseOp
    | EraseIdentifierOp
)
_OP_TYPES: Final[tuple[type[Any], ...]] = get_args(Op)


# ----------------------------------------------------------------------------- outputs


@_message
class Resolved:
    """The event stamped with its customer at that moment (None: nothing usable)."""

    TAG: ClassVar[str] = "resolved"
    event_id: str
    ts: int
    customer: str | None
    event: Any = field(default=None, compare=False)
    via: str = field(default="", compare=False)  # the identifier whose customer it took

    @property
    def id(self) -> str:
        return self.event_id


@_message
class Merge:
    TAG: ClassVar[str] = "merge"
    survivor: str
    absorbed: str
    via: str
    event_id: str
    ts: int
    identifiers: tuple[str, ...]  # the absorbed customer's identifiers

    @property
    def id(self) -> str:
        return _digest("merge", self.absorbed, self.survivor)


@_message
class Refusal:
    """A guard fired. reason: blocked_value | merge_cap, shared (both go to review) |
    limit:<kind> | shared_via (a merge through a value found shared) | undone (it came
    through a value found shared: split off) | split (a JOIN towards a customer it was
    split off)."""

    TAG: ClassVar[str] = "refusal"
    reason: str
    event_id: str
    ts: int
    identifier: str | None = None
    customers: tuple[str, ...] = ()
    survivor: str | None = None
    absorbed: str | None = None
    via: str | None = None
    evidence: tuple[str, ...] = ()  # the identifiers that made the guard fire

    @property
    def id(self) -> str:
        subject = self.identifier or f"{self.absorbed}>{self.survivor}"
        return _digest("refusal", self.reason, subject, self.event_id)

    @property
    def for_review(self) -> bool:
        return self.reason in ("merge_cap", "shared")


@_message
class IdentityUpdate:
    """An identifier's label changed (customer None: erased). ``version`` grows per identifier."""

    TAG: ClassVar[str] = "identity_update"
    identifier: str
    customer: str | None
    ts: int
    version: int

    @property
    def id(self) -> str:
        return _digest("identity", self.identifier, str(self.version))


@_message
class Erased:
    TAG: ClassVar[str] = "erased"
    customer: str
    customers: tuple[str, ...]  # the survivor and every id it absorbed: delete rows of all
    identifiers: int
    event_id: str
    ts: int

    @property
    def id(self) -> str:
        return _digest("erased", self.customer)


@_message
class SplitRecord:
    TAG: ClassVar[str] = "split"
    identifier: str
    from_customer: str
    to_customer: str
    event_id: str
    ts: int

    @property
    def id(self) -> str:
        return _digest("split", self.identifier, self.event_id)


Output: TypeAlias = Resolved | Merge | Refusal | IdentityUpdate | Erased | SplitRecord
_OUTPUT_TYPES: Final[tuple[type[Any], ...]] = get_args(Output)
