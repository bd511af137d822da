"""Dead letters: the original bytes, plus why and where they came from, in headers.

The shape follows Kafka Connect's dead-letter convention: the record's key and
value are the *original* bytes, untouched, and the context travels in headers
(``dlq.reason``, ``dlq.detail``, ``dlq.source.topic``, ``dlq.source.partition``,
``dlq.source.offset``, ``dlq.failed_at``), so a fixed pipeline can replay
them byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeadLetter", "RawMessage", "dead_letter", "parse_dead_letter_headers"]

REASON = "dlq.reason"
DETAIL = "dlq.detail"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
FAILED_AT = "dlq.failed_at"
_MAX_DETAIL = 1000


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


def dead_letter(msg: RawMessage, reason: str, detail: str, now_ms: int) -> DeadLetter:
    headers = [
        (REASON, reason.encode()),
        (DETAIL, detail[:_MAX_DETAIL].encode("utf-8", "replace")),
        (SOURCE_TOPIC, msg.topic.encode()),
        (SOURCE_PARTITION, str(msg.partition).encode()),
        (SOURCE_OFFSET, str(msg.offset).encode()),
        (FAILED_AT, str(now_ms).encode()),
    ]
    return DeadLetter(key=msg.key, value=msg.value or b"", headers=headers, reason=reason)


def parse_dead_letter_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers or [] if k.startswith("dlq.")}
