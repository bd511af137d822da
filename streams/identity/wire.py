"""Ops, outputs and state to and from JSON (envelopes and the identity table)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, Final

import orjson

from streams.identity.messages import _OP_TYPES, _OUTPUT_TYPES, Op, Output
from streams.identity.state import CustState, DictState, IdState, State

# ----------------------------------------------------------------------------- JSON


def _tuple_fields(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if str(f.type).startswith("tuple"))


_OPS_BY_TAG: Final = {cls.TAG: (cls, _tuple_fields(cls)) for cls in _OP_TYPES}
_OUTPUTS_BY_TAG: Final = {cls.TAG: (cls, _tuple_fields(cls)) for cls in _OUTPUT_TYPES}


_NAMES: Final = {cls: tuple(f.name for f in fields(cls)) for cls in (*_OP_TYPES, *_OUTPUT_TYPES)}
"""Field names per class (``dataclasses.fields`` is slow enough to show in a profile)."""


def _to_json(obj: Op | Output, tag: str) -> dict[str, Any]:
    data: dict[str, Any] = {tag: obj.TAG}
    for name in _NAMES[type(obj)]:
        value = getattr(obj, name)
        data[name] = list(value) if isinstance(value, tuple) and name != "event" else value
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
    if value.refused:
        data["refused"] = list(value.refused)
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
            list(data.get("refused", ())),
        )
    raise ValueError(f"not an identity state: {data!r:.200}")


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
