"""The ``touchpoints.checked`` wire format: what ingest hands the de-duplication stage.

One Kafka message holds many *frames*, one per event that passed ingest. A frame carries
what the de-duplication stage needs without decoding anything again:

* the event id (the state key) and channel (for the valid-events metric);
* the valid item, already encoded (``streams.wire.valid.valid_item``) and the
  ``touchpoints.valid`` partition its anchor routes to: forwarded byte for byte;
* the raw message's position and original key and value: the source of a
  ``duplicate_event_id`` dead letter, and its origin — the same origin read again is a
  replay (a crash or a retried batch), another origin is a second copy.

Layout, big-endian: a fixed header (``_HEAD``), then the event id, channel, source topic,
key (absent when its length is -1) and value, then the item. No JSON, no Avro: ~1 µs a
frame each way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Frame", "frame", "iter_frames", "pack_frames"]

_HEAD = struct.Struct(">HBBHiqqiII")
"""event id length, channel length, topic length, valid partition, raw partition,
raw offset, raw timestamp (-1: none), key length (-1: none), value length, item length."""


@dataclass(frozen=True, slots=True)
class Frame:
    event_id: str
    channel: str
    partition: int  # the touchpoints.valid partition (by anchor)
    item: bytes  # streams.wire.valid.valid_item (older: JSON {"a": anchor, "r": record})
    source_topic: str
    source_partition: int
    source_offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes

    @property
    def origin(self) -> tuple[int, int]:
        return (self.source_partition, self.source_offset)


def frame(
    event_id: str,
    channel: str,
    partition: int,
    item: bytes,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes,
) -> bytes:
    """One frame's bytes. Event ids and topic names are bounded by ingest (256 chars)."""
    eid = event_id.encode()
    chan = channel.encode()
    topic = source_topic.encode()
    head = _HEAD.pack(
        len(eid),
        len(chan),
        len(topic),
        partition,
        source_partition,
        source_offset,
        -1 if timestamp_ms is None else timestamp_ms,
        -1 if key is None else len(key),
        len(value),
        len(item),
    )
    return b"".join((head, eid, chan, topic, key or b"", value, item))


def iter_frames(data: bytes) -> Iterator[Frame]:
    """The frames of one ``touchpoints.checked`` message, in order."""
    view = memoryview(data)
    pos, end, size = 0, len(data), _HEAD.size
    unpack = _HEAD.unpack_from
    while pos < end:
        eid_n, chan_n, topic_n, part, src_part, src_off, ts, key_n, val_n, item_n = unpack(
            data, pos
        )
        pos += size
        event_id = str(view[pos : pos + eid_n], "utf-8")
        pos += eid_n
        channel = str(view[pos : pos + chan_n], "utf-8")
        pos += chan_n
        topic = str(view[pos : pos + topic_n], "utf-8")
        pos += topic_n
        key = None
        if key_n >= 0:
            key = bytes(view[pos : pos + key_n])
            pos += key_n
        value = bytes(view[pos : pos + val_n])
        pos += val_n
        item = bytes(view[pos : pos + item_n])
        pos += item_n
        yield Frame(
            event_id,
            channel,
            part,
            item,
            topic,
            src_part,
            src_off,
            None if ts < 0 else ts,
            key,
            value,
        )
    if pos != end:
        raise ValueError(f"checked message cut inside a frame ({pos} of {end} bytes)")


def pack_frames(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """Frames joined into messages of at most ``max_bytes`` (a lone larger frame excepted)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for f in frames:
        if current and size + len(f) > max_bytes:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(f)
        size += len(f)
    if current:
        out.append(b"".join(current))
    return out
