"""Per-key identity state (an identifier's label, a customer's members) and the views over it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from streams.identity.ids import _KIND_RANK, created_ms_of
from streams.identity.messages import Op

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
    refused: list[str] = field(default_factory=list)  # proposals it refused: "absorbed\x1fseq"


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
            from streams.identity.wire import state_from_json  # (wire builds on this module)

            self.data[key] = state_from_json(saved)


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
