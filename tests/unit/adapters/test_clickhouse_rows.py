"""A ``touchpoints`` row lines up with ``TOUCHPOINT_COLUMNS``: every identifier kind lands in
its own column (the insert names its columns, so a shifted value would go to another one)."""

from __future__ import annotations

from typing import Any

from streams.adapters.clickhouse import TOUCHPOINT_COLUMNS, touchpoint_row
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
