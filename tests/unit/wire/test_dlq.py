"""Dead letters always fit (issue 12, item 1): whatever the original's size, the dead
letter stays under DEAD_LETTER_MAX_BYTES, says it was cut, and keeps the original's size,
SHA-256 and source position."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.wire.dlq import (
    DEFAULT_MAX_DEAD_LETTER_BYTES,
    RawMessage,
    dead_letter,
    parse_dead_letter_headers,
)


def _msg(value: bytes, key: bytes | None = b"k") -> RawMessage:
    return RawMessage("t.touchpoints.raw", 3, 41, key, value)


def test_small_dead_letters_keep_the_original_bytes_untouched() -> None:
    dead = dead_letter(_msg(b"\x00" * 1000), "corrupt_body", "x", 1)
    assert dead.value == b"\x00" * 1000 and dead.key == b"k"
    assert "dlq.truncated" not in parse_dead_letter_headers(dead.headers)


def test_a_message_near_the_broker_limit_gets_a_dead_letter_that_fits() -> None:
    original = bytes(range(256)) * 4090  # 1,047,040 bytes: just under 1 MiB
    dead = dead_letter(_msg(original), "oversize_message", "1047040 bytes > limit 65536", 7)
    assert dead.size <= DEFAULT_MAX_DEAD_LETTER_BYTES
    meta = parse_dead_letter_headers(dead.headers)
    assert meta["dlq.truncated"] == "true"
    assert meta["dlq.original.size"] == str(len(original))
    assert meta["dlq.original.sha256"] == hashlib.sha256(original).hexdigest()
    assert (meta["dlq.source.topic"], meta["dlq.source.partition"], meta["dlq.source.offset"]) == (
        "t.touchpoints.raw",
        "3",
        "41",
    )
    assert meta["dlq.reason"] == "oversize_message"
    assert original.startswith(dead.value) and len(dead.value) > 400_000


@settings(max_examples=100, deadline=None)
@given(
    value_size=st.integers(0, 2_000_000),
    key_size=st.integers(0, 300_000),
    limit=st.integers(4096, 1_000_000),
)
def test_every_dead_letter_fits_its_limit(value_size: int, key_size: int, limit: int) -> None:
    dead = dead_letter(_msg(b"v" * value_size, b"k" * key_size), "r", "d" * 5000, 1, limit)
    wire = len(dead.key or b"") + len(dead.value) + sum(len(k) + len(v) for k, v in dead.headers)
    assert wire <= limit
    truncated = parse_dead_letter_headers(dead.headers).get("dlq.truncated") == "true"
    assert truncated == (len(dead.value) < value_size or len(dead.key or b"") < key_size)
