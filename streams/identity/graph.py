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
a digest of the previous number, the survivor asked and the members and absorbed ids
proposed. A crash that loses state writes rolls the customer back to an earlier
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
that reaches it makes the sender drop it (``RemoveMemberOp.keep``). Undoing what joined
the person through it (``UNDO_THROUGH``, ``IdentityNode(undo_through=True)``) is off by
default: the guarded property test finds rare divergence with it under redelivery.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Final, Protocol, TypeAlias, get_args

import orjson

from streams.wire.envelope import partition_for
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord

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
    "Simulator",
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

_KIND_RANK: Final = {kind: i for i, kind in enumerate(IDENTIFIER_KINDS)}
_MAX_FORMER: Final = 16
STRONG_KINDS: Final = frozenset({"customer_id", "login_id", "loyalty_id"})
"""Kinds that name one person (an account): two of them in conflict prove two people."""
_MAX_THROUGH: Final = 32  # members a customer remembers per weak identifier they came through
_MAX_THROUGH_VIAS: Final = 16  # weak identifiers a customer remembers that for
_MAX_BLAME_HOPS: Final = 4
_SEP: Final = "\x1f"
WEAK_CAP_FACTOR: Final = 3
"""An identifier may glue ``cap`` customers with an account, ``3 x cap`` in all."""


def customer_id(created_ms: int, anchor: str) -> str:
    """``c`` + creation time (11 hex digits) + sha1(anchor)[:8]: string order is age order."""
    digest = hashlib.sha1(anchor.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"c{max(created_ms, 0):011x}{digest}"


def created_ms_of(customer: str) -> int:
    return int(customer[1:12], 16)


def is_household(customer: str) -> bool:
    """A shared identifier's own customer (``h`` + ...): it stands for no one person."""
    return customer.startswith("h")


def _is_strong(key: str) -> bool:
    return _kind(key) in STRONG_KINDS


def _kind(key: str) -> str:
    return key.partition(":")[0]


def _digest(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode(), usedforsecurity=False).hexdigest()[:16]


def _peer_tag(key: str) -> str:
    """What an anchor remembers of the identifiers it already joined (no identifier values)."""
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


# ----------------------------------------------------------------------------- rules

DEFAULT_LIMITS: Final[Mapping[str, int]] = {
    "customer_id": 1,
    "login_id": 2,
    "email": 5,
    "phone": 5,
    "loyalty_id": 1,
    "social_handle": 5,
    "device_id": 10,
    "anonymous_id": 200,
}
DEFAULT_MERGE_CAPS: Final[Mapping[str, int]] = {
    kind: 3 if kind in ("phone", "email", "device_id") else 5 for kind in IDENTIFIER_KINDS
}
DEFAULT_BLOCKED_VALUES: Final[Mapping[str, frozenset[str]]] = {
    "*": frozenset({"anonymous", "0", "-1", "unknown", "null", "undefined", "none", "test"}),
    "email": frozenset({"test@test.com", "test@example.com", "noreply@example.com"}),
    "phone": frozenset({"+10000000000"}),
}
DEFAULT_BLOCKED_PATTERNS: Final[Mapping[str, tuple[str, ...]]] = {
    "*": (r"^0+$",),
    "device_id": (r"^[0-]+$",),  # all-zero device ids / advertising ids
    "phone": (r"^\+\d0{6,}$", r"^\+(\d)\1{6,}$"),  # +10000000000, +1111111111
}
_UNLIMITED: Final = 1 << 40


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """Guards: per-customer limits and merge caps per identifier kind, blocked values."""

    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    merge_caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MERGE_CAPS))
    blocked_values: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: dict(DEFAULT_BLOCKED_VALUES)
    )
    blocked_patterns: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_BLOCKED_PATTERNS)
    )
    max_peers: int = 16  # identifiers an anchor remembers having joined (saves repeat JOINs)
    _block: dict[str, tuple[frozenset[str], re.Pattern[str] | None]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Per kind: its blocked values and one pattern, each merged with the ``*`` ones."""
        block = {}
        for kind in (*IDENTIFIER_KINDS, "*"):
            values = self.blocked_values.get(kind, frozenset()) | self.blocked_values.get(
                "*", frozenset()
            )
            patterns = (*self.blocked_patterns.get(kind, ()), *self.blocked_patterns.get("*", ()))
            joined = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
            block[kind] = (frozenset(v.lower() for v in values), joined)
        object.__setattr__(self, "_block", block)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> IdentityRules:
        """Defaults overridden by ``{"limits": {kind: n}, "merge_caps": {kind: k},
        "blocked_values": {kind | "*": [...]}, "blocked_patterns": {kind | "*": [regex]},
        "max_peers": n}``; a kind given replaces that kind's default entirely."""
        unknown = set(config) - {f.name for f in fields(cls) if f.init}
        if unknown:
            raise ValueError(f"unknown identity settings: {sorted(unknown)}")

        def kinds(name: str, wildcard: bool) -> Mapping[str, Any]:
            section: Mapping[str, Any] = config.get(name) or {}
            allowed = set(IDENTIFIER_KINDS) | ({"*"} if wildcard else set())
            if set(section) - allowed:
                raise ValueError(f"{name}: unknown kinds {sorted(set(section) - allowed)}")
            return section

        limits = {**DEFAULT_LIMITS, **{k: int(v) for k, v in kinds("limits", False).items()}}
        caps = {**DEFAULT_MERGE_CAPS, **{k: int(v) for k, v in kinds("merge_caps", False).items()}}
        if min(limits.values()) < 1 or min(caps.values()) < 1:
            raise ValueError("limits and merge caps must be >= 1")
        values = {**DEFAULT_BLOCKED_VALUES}
        values.update(
            {k: frozenset(v.lower() for v in vs) for k, vs in kinds("blocked_values", True).items()}
        )
        patterns = {**DEFAULT_BLOCKED_PATTERNS}
        patterns.update({k: tuple(v) for k, v in kinds("blocked_patterns", True).items()})
        try:
            return cls(limits, caps, values, patterns, int(config.get("max_peers", 16)))
        except re.error as exc:
            raise ValueError(f"blocked_patterns: {exc}") from exc

    @classmethod
    def unguarded(cls) -> IdentityRules:
        """No limits, no caps, nothing blocked: plain connected components."""
        unlimited = {kind: _UNLIMITED for kind in IDENTIFIER_KINDS}
        return cls(unlimited, dict(unlimited), {}, {})

    def limit(self, kind: str) -> int:
        return self.limits.get(kind, _UNLIMITED)

    def merge_cap(self, kind: str) -> int:
        return self.merge_caps.get(kind, _UNLIMITED)

    def is_blocked(self, key: str) -> bool:
        kind, _, value = key.partition(":")
        values, pattern = self._block.get(kind) or self._block["*"]
        return value.lower() in values or (
            pattern is not None and pattern.search(value) is not None
        )

    def filter(
        self, idents: Iterable[str], event_id: str = "", ts: int = 0
    ) -> tuple[list[str], list[Refusal]]:
        """Drop blocked (and repeated) identifier keys; one Refusal per blocked key."""
        usable: list[str] = []
        refusals: list[Refusal] = []
        for key in dict.fromkeys(idents):
            if self.is_blocked(key):
                refusals.append(Refusal("blocked_value", event_id, ts, identifier=key))
            else:
                usable.append(key)
        return usable, refusals


# ----------------------------------------------------------------------------- ops
# event_id/ts: the event (or operator request) that caused an op, carried as evidence.


class _Routed:
    """An op goes to ``partition_for(op.routing_key, n)``: the key whose state it changes."""

    __slots__ = ()
    ROUTE: ClassVar[str]

    @property
    def routing_key(self) -> str:
        key: str = getattr(self, self.ROUTE)
        return key


@dataclass(frozen=True, slots=True)
class LinkOp:
    TAG: ClassVar[str] = "link"
    idents: tuple[str, ...]  # strongest first; idents[0] is the anchor
    event_id: str
    ts: int
    event: Any = field(default=None, compare=False)  # passed through to Resolved

    @property
    def routing_key(self) -> str:
        return self.idents[0]


@dataclass(frozen=True, slots=True)
class JoinOp(_Routed):
    TAG: ClassVar[str] = "join"
    ROUTE: ClassVar[str] = "identifier"
    identifier: str
    customer: str
    via: str  # the anchor that saw both
    event_id: str
    ts: int
    strong: bool = False  # the event carried a strong identifier (STRONG_KINDS)


@dataclass(frozen=True, slots=True)
class AddMemberOp(_Routed):
    TAG: ClassVar[str] = "add_member"
    ROUTE: ClassVar[str] = "customer"
    customer: str  # where it is going (follows absorptions)
    identifier: str
    assigned: str  # the label the identifier was given
    event_id: str
    ts: int
    via: str = ""  # the anchor whose event brought it ("" : it started the customer)


@dataclass(frozen=True, slots=True)
class MergeOp(_Routed):
    TAG: ClassVar[str] = "merge"
    ROUTE: ClassVar[str] = "absorbed"
    absorbed: str  # the younger id
    survivor: str  # the older id
    via: str  # the identifier that glued them
    event_id: str
    ts: int
    anchor: str = ""  # the anchor of the event whose JOIN asked for it


@dataclass(frozen=True, slots=True)
class ProposeOp(_Routed):
    TAG: ClassVar[str] = "propose"
    ROUTE: ClassVar[str] = "survivor"
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


@dataclass(frozen=True, slots=True)
class AbsorbedOp(_Routed):
    TAG: ClassVar[str] = "absorbed"
    ROUTE: ClassVar[str] = "absorbed"
    absorbed: str
    survivor: str
    seq: int
    event_id: str
    ts: int


@dataclass(frozen=True, slots=True)
class UnlockOp(_Routed):
    TAG: ClassVar[str] = "unlock"
    ROUTE: ClassVar[str] = "customer"
    customer: str
    seq: int
    event_id: str
    ts: int


@dataclass(frozen=True, slots=True)
class RelabelOp(_Routed):
    TAG: ClassVar[str] = "relabel"
    ROUTE: ClassVar[str] = "identifier"
    identifier: str
    customer: str
    event_id: str
    ts: int
    src: str = ""  # the label the sender knew it by (the absorbed customer, or the assigned one)


@dataclass(frozen=True, slots=True)
class DetachOp(_Routed):
    """A customer refused the identifier (limit): it gets a customer of its own."""

    TAG: ClassVar[str] = "detach"
    ROUTE: ClassVar[str] = "identifier"
    identifier: str
    customer: str  # the label it was refused under
    event_id: str
    ts: int


@dataclass(frozen=True, slots=True)
class RemoveMemberOp(_Routed):
    TAG: ClassVar[str] = "remove_member"
    ROUTE: ClassVar[str] = "customer"
    customer: str
    identifier: str
    event_id: str
    ts: int
    keep: str = ""  # its label now: if this customer is (or absorbed) it, it is back: keep it


@dataclass(frozen=True, slots=True)
class SplitOp(_Routed):
    """Operator request: move the identifier off its customer onto a new one."""

    TAG: ClassVar[str] = "split"
    ROUTE: ClassVar[str] = "identifier"
    identifier: str
    event_id: str  # the request id
    ts: int
    quarantine: bool = False  # also stop it linking (a shared device, a kiosk)
    household: bool = False  # its new customer is a household (is_household): shared
    unless_confirmed: bool = False  # an undo: leave it if a strong id vouched for its label


@dataclass(frozen=True, slots=True)
class SharedOp(_Routed):
    """Two customers with different strong identities were glued through ``identifier``
    (a limit on a strong kind refused their merge): find the identifier that is shared.

    At the identifier: if it came to its customer through a weak anchor (``IdState.via``),
    that anchor's value put it there: the blame moves on to it. Else the identifier was
    seen with a strong id (or started its customer) and is the shared one: it becomes a
    household (quarantined, a customer of its own that claims no person) and its old
    customer undoes what came through it (``UndoThroughOp``)."""

    TAG: ClassVar[str] = "shared"
    ROUTE: ClassVar[str] = "identifier"
    identifier: str
    customers: tuple[str, ...]  # the customers the refused merge would have joined
    via: str  # the identifier the refused merge came through
    reason: str  # the refusal: limit:<kind> or merge_cap
    event_id: str
    ts: int
    hops: int = 0


@dataclass(frozen=True, slots=True)
class UndoThroughOp(_Routed):
    """At a customer: split off the members that came to it through ``via`` (a shared
    identifier), unless a strong id vouched for them since."""

    TAG: ClassVar[str] = "undo_through"
    ROUTE: ClassVar[str] = "customer"
    customer: str
    via: str
    event_id: str
    ts: int


@dataclass(frozen=True, slots=True)
class EraseOp(_Routed):
    """Operator request (``cascade_of`` None: erases the customer's survivor), or the
    cascade tombstoning a customer absorbed by an erased one."""

    TAG: ClassVar[str] = "erase"
    ROUTE: ClassVar[str] = "customer"
    customer: str
    event_id: str
    ts: int
    cascade_of: str | None = None


@dataclass(frozen=True, slots=True)
class EraseIdentifierOp(_Routed):
    """Operator request (``customers`` empty: erases the identifier and its customer), or
    the cascade: tombstone the identifier if its label is one of ``customers``."""

    TAG: ClassVar[str] = "erase_identifier"
    ROUTE: ClassVar[str] = "identifier"
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


# ----------------------------------------------------------------------------- state


@dataclass(slots=True)
class IdState:
    customer: str | None = None  # label: the customer as this identifier last heard it
    quarantined: bool = False  # glued too many customers: keeps its label, links nothing
    glued: list[str] = field(default_factory=list)  # customers it was asked to join (merge cap)
    former: list[str] = field(default_factory=list)  # labels it had before (already reconciled)
    peers: list[str] = field(default_factory=list)  # tags of identifiers it already joined
    first_seen_ms: int = 0
    version: int = 0
    erased: bool = False  # tombstone
    via: str | None = None  # the anchor whose event gave it its label (None: it started it)
    strong_glued: list[str] = field(default_factory=list)  # customers it joined with a strong id
    confirmed: bool = False  # a strong id on one event vouched for its current label
    left: list[str] = field(default_factory=list)  # labels it had when it was split off
    parked: list[str] = field(default_factory=list)  # relabels waiting: "customer\x1fsrc"
    rejoin: str | None = None  # where it goes if an undo splits it (it was seen with them)


@dataclass(slots=True)
class CustState:
    created_ms: int
    members: dict[str, list[str]] = field(default_factory=dict)  # kind -> sorted keys
    absorbed_into: str | None = None
    absorbed: list[str] = field(default_factory=list)  # every customer merged into this one
    pending: str | None = None  # locked: proposing itself to this survivor
    lock_seq: int = 0
    waiting: list[Op] = field(default_factory=list)  # ops deferred while locked
    erased: bool = False  # tombstone
    through: dict[str, list[str]] = field(default_factory=dict)  # weak id -> members it brought
    shared: list[str] = field(default_factory=list)  # identifiers found shared: glue nothing here


State: TypeAlias = IdState | CustState


class StateView(Protocol):
    """One partition's identity state by routing key (a Faust table shard, or a dict)."""

    def get(self, key: str) -> State | None: ...

    def put(self, key: str, value: State) -> None: ...


class DictState:
    """State objects in a dict (handlers mutate them in place)."""

    def __init__(self) -> None:
        self.data: dict[str, State] = {}

    def get(self, key: str) -> State | None:
        return self.data.get(key)

    def put(self, key: str, value: State) -> None:
        self.data[key] = value

    def items(self) -> Iterable[tuple[str, State]]:
        return self.data.items()

    def restore(self, key: str, saved: dict[str, Any] | None) -> None:
        if saved is None:
            self.data.pop(key, None)
        else:
            self.data[key] = state_from_json(saved)


class JsonState(DictState):
    """State stored as orjson bytes, as a Faust table with the json serializer holds it:
    every get decodes a fresh object, so a handler that forgot a put loses its write."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[str, bytes] = {}

    def get(self, key: str) -> State | None:
        raw = self.raw.get(key)
        return None if raw is None else state_from_json(orjson.loads(raw))

    def put(self, key: str, value: State) -> None:
        self.raw[key] = bytes(memoryview(orjson.dumps(state_to_json(value))))  # see packed()

    def items(self) -> Iterable[tuple[str, State]]:
        return ((key, state_from_json(orjson.loads(raw))) for key, raw in self.raw.items())

    def restore(self, key: str, saved: dict[str, Any] | None) -> None:
        if saved is None:
            self.raw.pop(key, None)
        else:
            self.raw[key] = bytes(memoryview(orjson.dumps(saved)))


def apply_writes(state: StateView, writes: Mapping[str, State]) -> None:
    for key, value in writes.items():
        state.put(key, value)


class _Overlay:
    """Read-through, write-back view for one batch: one write per touched key."""

    __slots__ = ("base", "cache", "dirty")

    def __init__(self, base: StateView) -> None:
        self.base = base
        self.cache: dict[str, State | None] = {}
        self.dirty: dict[str, State] = {}

    def get(self, key: str) -> State | None:
        if key not in self.cache:
            self.cache[key] = self.base.get(key)
        return self.cache[key]

    def put(self, key: str, value: State) -> None:
        self.cache[key] = value
        self.dirty[key] = value


def _ident(state: StateView, key: str) -> IdState | None:
    value = state.get(key)
    if value is not None and not isinstance(value, IdState):
        raise TypeError(f"{key!r} holds {type(value).__name__}, not IdState")
    return value


def _cust(state: StateView, cid: str) -> CustState:
    """The customer's state, or a fresh one (ops may reach a customer before its first member)."""
    value = state.get(cid)
    if value is None:
        return CustState(created_ms_of(cid))
    if not isinstance(value, CustState):
        raise TypeError(f"{cid!r} holds {type(value).__name__}, not CustState")
    return value


def _flat(members: Mapping[str, list[str]]) -> tuple[str, ...]:
    kinds = sorted(members, key=lambda kind: _KIND_RANK.get(kind, len(_KIND_RANK)))
    return tuple(m for kind in kinds for m in members[kind])


# ----------------------------------------------------------------------------- the node


@dataclass(slots=True)
class Effects:
    ops: list[Op] = field(default_factory=list)  # to send, each to partition_for(routing_key)
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, State] = field(default_factory=dict)  # handle_batch(defer_writes=True)


class IdentityNode:
    """Handles ops against one partition's state. Stateless itself; safe to share."""

    def __init__(self, rules: IdentityRules | None = None, *, undo_through: bool = False) -> None:
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
        if old == _fresh_id(op.ts, op.identifier, op.event_id, op.household, undo):
            return  # replay
        if op.unless_confirmed and (s.confirmed or s.customer in s.strong_glued):
            return  # a strong id on one event vouched for its customer since
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
        if c.pending is not None:
            _defer(c, op, cid, st)
            return
        kind = _kind(key)
        have = c.members.get(kind, [])
        if key in have:
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
        c.lock_seq = _lock_number(c.lock_seq, op.survivor, _flat(c.members), tuple(c.absorbed))
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
        if c.erased:
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
            fx.ops.append(UnlockOp(op.absorbed, op.seq, op.event_id, op.ts))
            return
        merged = {kind: list(keys) for kind, keys in c.members.items()}
        for key in op.members:
            kind = _kind(key)
            have = merged.setdefault(kind, [])
            if key not in have:
                bisect.insort(have, key)
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
                fx.ops.append(UnlockOp(op.absorbed, op.seq, op.event_id, op.ts))
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
                return
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
        st.put(cid, CustState(c.created_ms, absorbed_into=op.survivor, lock_seq=c.lock_seq))
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
    previous: int, survivor: str, members: tuple[str, ...], absorbed: tuple[str, ...]
) -> int:
    """The next lock's number: it names the proposal (to whom, what), so a number reused
    after lost state writes belongs to the same proposal. 52 bits: exact as a JSON number."""
    return int(_digest("lock", str(previous), survivor, *members, "/", *absorbed)[:13], 16)


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


# ----------------------------------------------------------------------------- events


def event_identifiers(record: TouchpointRecord) -> list[str]:
    """The record's identifier keys, strongest first."""
    ids = record["identifiers"]
    return [f"{kind}:{v}" for kind in IDENTIFIER_KINDS if (v := ids.get(kind))]


class ResolutionMemory:
    """The customer each recently resolved event was stamped with, on one identity partition.

    The protocol is at-least-once: a batch replayed after a crash runs against whatever of
    its state writes already landed, so a replayed LINK can stamp its event with a newer
    customer (the survivor of a merge the same batch made) — whose customer-stage partition
    has never seen the event and would count it again. Remembering each event's first stamp
    (persisted per batch, before the batch's outputs) makes a replay re-send the
    same stamp, which the customer stage then recognises by event id. The stamps are
    persisted before the outputs they describe: a stamp whose output never left only pins
    the customer the replay will use.

    Entries are one per batch (``key -> {"seen_ms", "r": {event_id: customer}}``) and
    expire after ``horizon_ms`` of processing time, like ``streams.ingest.stage.Deduplicator``.
    """

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._stamps: dict[str, str | None] = {}
        self._batches: deque[tuple[str, int, list[str]]] = deque()

    def restore(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        for key, saved in sorted(entries, key=lambda kv: int(kv[1]["seen_ms"])):
            stamps: Mapping[str, str | None] = saved["r"]
            self._stamps.update(stamps)
            self._batches.append((key, int(saved["seen_ms"]), list(stamps)))

    def stamp(self, resolved: Resolved) -> Resolved:
        """The event as first stamped, if it was; else as given."""
        if resolved.event_id in self._stamps:
            first = self._stamps[resolved.event_id]
            if first != resolved.customer:
                return replace(resolved, customer=first)
        return resolved

    def remember(self, key: str, outputs: Iterable[Resolved], now_ms: int) -> dict[str, Any] | None:
        """Record the stamps of events not seen before; the entry to persist under ``key``."""
        fresh = {r.event_id: r.customer for r in outputs if r.event_id not in self._stamps}
        if not fresh or self.horizon_ms <= 0:
            return None
        self._stamps.update(fresh)
        self._batches.append((key, now_ms, list(fresh)))
        return {"seen_ms": now_ms, "r": fresh}

    def expire(self, now_ms: int) -> list[str]:
        """Forget batches older than the horizon; their keys, to delete."""
        dropped = []
        while self._batches and self._batches[0][1] < now_ms - self.horizon_ms:
            key, _, event_ids = self._batches.popleft()
            for event_id in event_ids:
                self._stamps.pop(event_id, None)
            dropped.append(key)
        return dropped

    def __len__(self) -> int:
        return len(self._stamps)


def ops_for_event(
    record: TouchpointRecord, rules: IdentityRules, *, carry_event: bool = True
) -> tuple[list[Op], list[Refusal]]:
    """The LINK op for a normalised touchpoint (none if every identifier is blocked)."""
    event_id, ts = record["event_id"], record["occurred_at"]
    usable, refusals = rules.filter(event_identifiers(record), event_id, ts)
    if not usable:
        return [], refusals
    return [LinkOp(tuple(usable), event_id, ts, record if carry_event else None)], refusals


def offline_components(
    events: Iterable[TouchpointRecord], rules: IdentityRules | None = None
) -> list[frozenset[str]]:
    """Plain union-find: identifiers seen on one event are connected."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for record in events:
        keys = event_identifiers(record)
        if rules is not None:
            keys = rules.filter(keys)[0]
        for key in keys:
            parent.setdefault(key, key)
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    groups: dict[str, set[str]] = {}
    for key in parent:
        groups.setdefault(find(key), set()).add(key)
    return sorted((frozenset(g) for g in groups.values()), key=min)


# ----------------------------------------------------------------------------- JSON


def _tuple_fields(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if str(f.type).startswith("tuple"))


_OPS_BY_TAG: Final = {cls.TAG: (cls, _tuple_fields(cls)) for cls in _OP_TYPES}
_OUTPUTS_BY_TAG: Final = {cls.TAG: (cls, _tuple_fields(cls)) for cls in _OUTPUT_TYPES}


def _to_json(obj: Op | Output, tag: str) -> dict[str, Any]:
    data: dict[str, Any] = {tag: obj.TAG}
    for f in fields(obj):
        value = getattr(obj, f.name)
        data[f.name] = list(value) if isinstance(value, tuple) and f.name != "event" else value
    return data


def _from_json(data: Mapping[str, Any], tag: str, registry: Mapping[str, Any]) -> Any:
    try:
        cls, tuples = registry[data[tag]]
        kwargs = {k: tuple(v) if k in tuples else v for k, v in data.items() if k != tag}
        return cls(**kwargs)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an identity {tag}: {data!r:.200}") from exc


def op_to_json(op: Op) -> dict[str, Any]:
    return _to_json(op, "op")


def op_from_json(data: Mapping[str, Any]) -> Op:
    op: Op = _from_json(data, "op", _OPS_BY_TAG)
    return op


def output_to_json(output: Output) -> dict[str, Any]:
    return _to_json(output, "type")


def output_from_json(data: Mapping[str, Any]) -> Output:
    output: Output = _from_json(data, "type", _OUTPUTS_BY_TAG)
    return output


def state_to_json(value: State) -> dict[str, Any]:
    """A JSON-able copy (shares nothing with ``value``); fields at their defaults are left out."""
    data: dict[str, Any]
    if isinstance(value, IdState):
        data = {"t": "id", "first_seen_ms": value.first_seen_ms, "version": value.version}
        for name in ("customer", "quarantined", "erased", "via", "confirmed", "rejoin"):
            if getattr(value, name):
                data[name] = getattr(value, name)
        for name in ("glued", "former", "peers", "strong_glued", "left", "parked"):
            if getattr(value, name):
                data[name] = list(getattr(value, name))
        return data
    data = {"t": "customer", "created_ms": value.created_ms}
    for name in ("absorbed_into", "pending", "lock_seq", "erased"):
        if getattr(value, name):
            data[name] = getattr(value, name)
    if value.members:
        data["members"] = {kind: list(keys) for kind, keys in value.members.items()}
    if value.absorbed:
        data["absorbed"] = list(value.absorbed)
    if value.waiting:
        data["waiting"] = [op_to_json(op) for op in value.waiting]
    if value.through:
        data["through"] = {via: list(keys) for via, keys in value.through.items()}
    if value.shared:
        data["shared"] = list(value.shared)
    return data


def state_from_json(data: Mapping[str, Any]) -> State:
    if data.get("t") == "id":
        return IdState(
            data.get("customer"),
            bool(data.get("quarantined")),
            list(data.get("glued", ())),
            list(data.get("former", ())),
            list(data.get("peers", ())),
            int(data.get("first_seen_ms", 0)),
            int(data.get("version", 0)),
            bool(data.get("erased")),
            via=data.get("via"),
            strong_glued=list(data.get("strong_glued", ())),
            confirmed=bool(data.get("confirmed")),
            left=list(data.get("left", ())),
            parked=list(data.get("parked", ())),
            rejoin=data.get("rejoin"),
        )
    if data.get("t") == "customer":
        return CustState(
            int(data["created_ms"]),
            {k: list(v) for k, v in data.get("members", {}).items()},
            data.get("absorbed_into"),
            list(data.get("absorbed", ())),
            data.get("pending"),
            int(data.get("lock_seq", 0)),
            [op_from_json(op) for op in data.get("waiting", ())],
            bool(data.get("erased")),
            {k: list(v) for k, v in data.get("through", {}).items()},
            list(data.get("shared", ())),
        )
    raise ValueError(f"not an identity state: {data!r:.200}")


# ----------------------------------------------------------------------------- simulator


class Simulator:
    """Many partitions, one process: per-partition FIFO queues, a seeded random interleaving.

    ``redeliver`` is the chance, after each batch, that the partition "crashes" before
    committing: its last 1-3 batches are delivered again, in order, and half the time
    their state writes are lost too (ops were already produced: the delivery contract).
    ``wire``: state kept as JSON bytes and every op and output sent through orjson.
    """

    def __init__(
        self,
        partitions: int,
        rules: IdentityRules | None = None,
        seed: int = 0,
        *,
        redeliver: float = 0.0,
        max_batch: int = 4,
        wire: bool = False,
        undo_through: bool = False,
    ) -> None:
        self.partitions = partitions
        self.rules = rules or IdentityRules()
        self.node = IdentityNode(self.rules, undo_through=undo_through)
        self.rng = random.Random(seed)
        self.redeliver = redeliver
        self.max_batch = max_batch
        self.queues: list[deque[Op]] = [deque() for _ in range(partitions)]
        self.wire = wire
        self.states = [JsonState() if wire else DictState() for _ in range(partitions)]
        self.outputs: list[Output] = []
        self.ops_handled = 0
        self._history: list[deque[tuple[list[Op], dict[str, dict[str, Any] | None]]]] = [
            deque(maxlen=3) for _ in range(partitions)
        ]

    def submit(self, op: Op) -> None:
        if self.wire:
            op = op_from_json(orjson.loads(orjson.dumps(op_to_json(op))))
        self.queues[partition_for(op.routing_key, self.partitions)].append(op)

    def _emit(self, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if self.wire:
                out = output_from_json(orjson.loads(orjson.dumps(output_to_json(out))))
            self.outputs.append(out)

    def run(self, events: Iterable[TouchpointRecord] = (), max_steps: int = 1_000_000) -> None:
        """Feed events (interleaved with processing) and run until nothing is in flight."""
        incoming = deque(events)
        for _ in range(max_steps):
            busy = [p for p, q in enumerate(self.queues) if q]
            if incoming and (not busy or self.rng.random() < 0.3):
                event = incoming.popleft()
                ops, refusals = ops_for_event(event, self.rules)
                self._emit(refusals)
                if not ops:  # nothing usable on it: attributed to nobody
                    self._emit([Resolved(event["event_id"], event["occurred_at"], None, event)])
                for op in ops:
                    self.submit(op)
            elif busy:
                self._step(self.rng.choice(busy))
            else:
                return
        raise RuntimeError(f"not quiescent after {max_steps} steps")

    def _step(self, p: int) -> None:
        queue, state = self.queues[p], self.states[p]
        batch = [
            queue.popleft() for _ in range(min(len(queue), self.rng.randint(1, self.max_batch)))
        ]
        before: dict[str, dict[str, Any] | None] = {}
        for op in batch:
            if op.routing_key not in before:
                value = state.get(op.routing_key)
                before[op.routing_key] = None if value is None else state_to_json(value)
        effects = self.node.handle_batch(batch, state)
        self.ops_handled += len(batch)
        self._emit(effects.outputs)
        for op in effects.ops:
            self.submit(op)
        self._history[p].append((batch, before))
        if self.redeliver and self.rng.random() < self.redeliver:
            history = self._history[p]
            replay = [history.pop() for _ in range(self.rng.randint(1, len(history)))]
            lose_writes = self.rng.random() < 0.5
            for ops, snapshot in replay:  # newest first
                if lose_writes:
                    for key, saved in snapshot.items():
                        state.restore(key, saved)
                queue.extendleft(reversed(ops))

    def state(self, key: str) -> State | None:
        return self.states[partition_for(key, self.partitions)].get(key)

    def customer_of(self, identifier: str) -> str | None:
        s = self.state(identifier)
        return s.customer if isinstance(s, IdState) and not s.erased else None

    def survivor(self, customer: str) -> str:
        """Follow absorptions to the customer that holds the members now."""
        while isinstance(c := self.state(customer), CustState) and c.absorbed_into is not None:
            customer = c.absorbed_into
        return customer

    def identifiers(self) -> dict[str, IdState]:
        return {k: v for s in self.states for k, v in s.items() if isinstance(v, IdState)}

    def customers(self) -> dict[str, CustState]:
        return {k: v for s in self.states for k, v in s.items() if isinstance(v, CustState)}

    def components(self) -> list[frozenset[str]]:
        """Identifiers grouped by their customer label."""
        groups: dict[str, set[str]] = {}
        for key, s in self.identifiers().items():
            if s.customer is not None and not s.erased:
                groups.setdefault(s.customer, set()).add(key)
        return sorted((frozenset(g) for g in groups.values()), key=min)
