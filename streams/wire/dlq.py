"""Dead letters: the original bytes, plus why and where they came from, in headers.

The shape follows Kafka Connect's dead-letter convention: the record's key and
value are the *original* bytes, untouched, and the context travels in headers
(``dlq.reason``, ``dlq.detail``, ``dlq.source.topic``, ``dlq.source.partition``,
``dlq.source.offset``, ``dlq.failed_at``), so a fixed pipeline can replay
them byte for byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_DEAD_LETTER_BYTES",
    "DeadLetter",
    "RawMessage",
    "dead_letter",
    "parse_dead_letter_headers",
    "shrink",
]

REASON = "dlq.reason"
DETAIL = "dlq.detail"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
FAILED_AT = "dlq.failed_at"
TRUNCATED = "dlq.truncated"
ORIGINAL_SIZE = "dlq.original.size"
ORIGINAL_SHA256 = "dlq.original.sha256"
_MAX_DETAIL = 1000
DEFAULT_MAX_DEAD_LETTER_BYTES = 512 * 1024
"""A dead letter (key + value + headers) never exceeds this: well under the broker's
``message.max.bytes`` (1 MiB by default), whatever the original's size."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka record, as the pure steps see it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    reason: str

    @property
    def size(self) -> int:
        """Bytes on the wire, framing included (an upper bound)."""
        return len(self.key or b"") + len(self.value) + _headers_size(self.headers) + _OVERHEAD


def dead_letter(
    msg: RawMessage,
    reason: str,
    detail: str,
    now_ms: int,
    max_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES,
) -> DeadLetter:
    """The original bytes with the reason in headers; a dead letter that would not fit in
    ``max_bytes`` is ``shrink``-ed (it must never be refused by the broker: a dead letter
    that cannot be written stops its whole batch)."""
    headers = [
        (REASON, reason.encode()),
        (DETAIL, detail[:_MAX_DETAIL].encode("utf-8", "replace")),
        (SOURCE_TOPIC, msg.topic[:_MAX_DETAIL].encode("utf-8", "replace")),
        (SOURCE_PARTITION, str(msg.partition).encode()),
        (SOURCE_OFFSET, str(msg.offset).encode()),
        (FAILED_AT, str(now_ms).encode()),
    ]
    dead = DeadLetter(key=msg.key, value=msg.value or b"", headers=headers, reason=reason)
    return dead if dead.size <= max_bytes else shrink(dead, max_bytes)


def shrink(dead: DeadLetter, max_bytes: int) -> DeadLetter:
    """A dead letter cut to fit ``max_bytes``: the key and value keep their first bytes, and
    headers say so (``dlq.truncated``), with the original value's size and SHA-256. The
    source topic, partition and offset point at the full original while the raw topic
    retains it. ``touchpoints dlq replay`` leaves truncated dead letters alone."""
    original = dead.value
    headers = [
        (k, v) for k, v in dead.headers if k not in (TRUNCATED, ORIGINAL_SIZE, ORIGINAL_SHA256)
    ]
    headers += [
        (TRUNCATED, b"true"),
        (ORIGINAL_SIZE, str(len(original)).encode()),
        (ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
    ]
    key = dead.key[:1024] if dead.key is not None else None
    room = max_bytes - _headers_size(headers) - len(key or b"") - _OVERHEAD
    value = original[: max(0, room)]
    return DeadLetter(key=key, value=value, headers=headers, reason=dead.reason)


_OVERHEAD = 256
"""Room for the record's framing (lengths, timestamps, attributes) within ``max_bytes``."""


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) + 10 for k, v in headers)


def parse_dead_letter_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers or [] if k.startswith("dlq.")}
