"""A ``touchpoints`` row lines up with ``TOUCHPOINT_COLUMNS``: every identifier kind lands in
its own column (the insert names its columns, so a shifted value would go to another one)."""

from __future__ import annotations

import hashlib
from typing import Any

from streams.adapters.clickhouse import (
    DEAD_LETTER_COLUMNS,
    STORED_ORIGINAL_BYTES,
    TOUCHPOINT_COLUMNS,
    dead_letter_row,
    load_migrations,
    touchpoint_row,
)
from streams.wire.dlq import RawMessage, dead_letter
from streams.wire.model import IDENTIFIER_KINDS


def test_each_identifier_and_field_lands_in_its_named_column() -> None:
    ids = {kind: f"{kind}-value" for kind in IDENTIFIER_KINDS}
    record: Any = {
        "event_id": "e-1",
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": 1_000,
        "received_at": 2_000,
        "source": "web-sdk",
        "identifiers": ids,
        "context": {
            "country": "GB",
            "geo": {"lat": 51.5, "lon": -0.12, "city": "London"},
            "ip": "192.0.2.1",
            "user_agent": "ua",
        },
        "payload": ("touchpoints.WebEvent", {"session_id": "s1"}),
        "properties": {},
        "consent": "granted",
    }
    row = touchpoint_row(record, "email:x", 3, 17, 5_000, customer_id="c1")
    assert len(row) == len(TOUCHPOINT_COLUMNS)
    by_column = dict(zip(TOUCHPOINT_COLUMNS, row, strict=True))
    for kind in IDENTIFIER_KINDS:
        assert by_column[kind] == f"{kind}-value", kind
    assert (by_column["event_id"], by_column["identity_key"]) == ("e-1", "email:x")
    assert (by_column["customer_id_at_ingest"], by_column["country"]) == ("c1", "GB")


def test_a_dead_letter_row_says_whether_its_copy_is_whole_and_hashes_the_original() -> None:
    """Issue 12: ``dead_letters.truncated`` and ``original_sha256`` (migration 0005)."""
    small = b"\x00\x00\x00\x00\x01 not avro"
    msg = RawMessage("t.raw", 2, 9, b"k", small)
    row = dict(
        zip(
            DEAD_LETTER_COLUMNS,
            dead_letter_row(small, dead_letter(msg, "x", "d", 1).headers),
            strict=True,
        )
    )
    assert (row["original"], row["truncated"]) == (small, False)
    assert row["original_sha256"] == hashlib.sha256(small).hexdigest()

    large = bytes(range(256)) * 1024  # 256 KiB: over the 64 KiB kept in ClickHouse
    cut_here = dead_letter(RawMessage("t.raw", 0, 1, None, large), "x", "d", 1)
    row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(large, cut_here.headers), strict=True))
    assert row["truncated"] is True and len(row["original"]) == STORED_ORIGINAL_BYTES
    assert large.startswith(row["original"])
    assert row["original_sha256"] == hashlib.sha256(large).hexdigest()

    # a dead letter already cut to fit the broker: the hash is the full original's, from
    # its headers, not the hash of the cut copy
    cut_upstream = dead_letter(RawMessage("t.raw", 0, 2, None, large), "x", "d", 1, 8192)
    assert len(cut_upstream.value) < len(large)
    row = dict(
        zip(
            DEAD_LETTER_COLUMNS,
            dead_letter_row(cut_upstream.value, cut_upstream.headers),
            strict=True,
        )
    )
    assert row["truncated"] is True and row["size_bytes"] == len(large)
    assert row["original_sha256"] == hashlib.sha256(large).hexdigest()


def test_migration_0005_adds_the_columns_without_editing_an_applied_migration() -> None:
    migrations = {m.version: m for m in load_migrations()}
    added = " ".join(migrations[5].statements)
    assert "ADD COLUMN IF NOT EXISTS truncated" in added
    assert "ADD COLUMN IF NOT EXISTS original_sha256" in added
    assert "truncated" not in " ".join(migrations[1].statements)
