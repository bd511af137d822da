"""The ``touchpoints.valid`` wire format: what the de-duplication stage hands identity.

One message holds many items, one per event. An item carries what identity reads — the
anchor, the event id, the event time and the event's identifier keys — beside the
normalised record, kept as the JSON bytes ingest encoded it. Identity never parses nor
re-encodes the record: it re-emits those bytes inside its ``touchpoints.resolved``
envelope (``orjson.Fragment``), where the customer stage and the sink decode it, once.
(Parsing the record and encoding it again was ~20 % of the identity stage in the worker.)

Layout, big-endian: ``MAGIC``, then per item its length (u32) and the item. An item is
``ITEM_TAG``, the length of its head (u32), the head ``[anchor, event_id, occurred_at,
[identifier keys]]`` as JSON, then the record's JSON.

Upgrades: a message written before this format is a JSON list of ``{"a": anchor, "r":
record}`` (what ``streams.wire.envelope`` packs); a frame of ``touchpoints.checked`` in
flight holds such an item. ``read_valid`` reads both, so a running deployment can be
upgraded with events in flight. The record bytes are trusted as JSON: only this
pipeline's ingest writes them (a foreign writer's bytes on this internal topic fail the
message that carries them, at identity or downstream, as any internal poison does).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from streams.wire.model import IDENTIFIER_KINDS

__all__ = [
    "ITEM_TAG",
    "MAGIC",
    "ValidItem",
    "identifier_keys",
    "pack_valid",
    "read_valid",
    "valid_item",
]

MAGIC = b"\x01"  # an older message is a JSON list: it starts with "["
ITEM_TAG = b"\x01"  # an older item (a JSON object) starts with "{"
_U32 = struct.Struct(">I")
_ITEM_HEAD = struct.Struct(">cI")


class ValidItem(NamedTuple):
    anchor: str  # the strongest usable identifier, ``kind:value`` (the message's partition)
    event_id: str
    ts: int  # occurred_at, epoch ms
    keys: list[str]  # the event's identifier keys, strongest first (``identifier_keys``)
    record: bytes | dict[str, Any]  # the record's JSON bytes; decoded in an older item

    def record_json(self) -> Any:
        """The record for an envelope that ``orjson.dumps`` encodes: the bytes as they are."""
        record = self.record
        return orjson.Fragment(record) if isinstance(record, bytes) else record

    def decoded_record(self) -> dict[str, Any]:
        """The record as a dict (as JSON gives it: the payload union is a list)."""
        record = self.record
        decoded: dict[str, Any] = orjson.loads(record) if isinstance(record, bytes) else record
        return decoded


def identifier_keys(identifiers: Mapping[str, Any]) -> list[str]:
    """An event's identifier keys (``kind:value``), strongest first; null values skipped."""
    return [f"{kind}:{v}" for kind in IDENTIFIER_KINDS if (v := identifiers.get(kind))]


def valid_item(anchor: str, record: Mapping[str, Any]) -> bytes:
    """One event's item (what a ``touchpoints.checked`` frame carries to be forwarded)."""
    dumps = orjson.dumps
    head = dumps(
        (anchor, record["event_id"], record["occurred_at"], identifier_keys(record["identifiers"]))
    )
    return _ITEM_HEAD.pack(ITEM_TAG, len(head)) + head + dumps(record)


def pack_valid(items: list[bytes], max_bytes: int) -> list[bytes]:
    """Items as messages of at most ``max_bytes`` (a lone larger item excepted), in order."""
    out: list[bytes] = []
    current: list[bytes] = [MAGIC]
    size = len(MAGIC)
    pack = _U32.pack
    for item in items:
        if len(current) > 1 and size + 4 + len(item) > max_bytes:
            out.append(b"".join(current))
            current, size = [MAGIC], len(MAGIC)
        current.append(pack(len(item)))
        current.append(item)
        size += 4 + len(item)
    if len(current) > 1:
        out.append(b"".join(current))
    return out


def read_valid(data: bytes) -> list[ValidItem]:
    """The items of one ``touchpoints.valid`` message, in order (either format)."""
    if data[:1] == b"[":
        return [_older(item) for item in orjson.loads(data)]
    if data[:1] != MAGIC:
        raise ValueError(f"not a touchpoints.valid message (starts {bytes(data[:8])!r})")
    items: list[ValidItem] = []
    view = memoryview(data)
    pos, end = len(MAGIC), len(data)
    length, head_of = _U32.unpack_from, _ITEM_HEAD.unpack_from
    loads = orjson.loads
    while pos < end:
        (n,) = length(data, pos)
        start, pos = pos + 4, pos + 4 + n
        if pos > end:
            raise ValueError(f"touchpoints.valid message cut inside an item ({end} bytes)")
        if data[start : start + 1] != ITEM_TAG:
            items.append(_older(loads(view[start:pos])))
            continue
        _, head_n = head_of(data, start)
        body = start + _ITEM_HEAD.size + head_n
        if body > pos:
            raise ValueError("touchpoints.valid item cut inside its head")
        anchor, event_id, ts, keys = loads(view[start + _ITEM_HEAD.size : body])
        items.append(ValidItem(anchor, event_id, ts, keys, data[body:pos]))
    return items


def _older(item: Mapping[str, Any]) -> ValidItem:
    """An item written before this format: ``{"a": anchor, "r": record}``."""
    record = item["r"]
    return ValidItem(
        item["a"],
        record["event_id"],
        record["occurred_at"],
        identifier_keys(record["identifiers"]),
        record,
    )
