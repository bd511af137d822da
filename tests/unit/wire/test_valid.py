"""The ``touchpoints.valid`` format: what identity reads beside the record's bytes, both
formats read (an upgrade with envelopes in flight), and the resolved envelope identity
builds from it byte for byte what it built when it decoded and re-encoded the record."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.adapters.clickhouse import touchpoint_row
from streams.adapters.sink import SourceMessage, _resolved_rows
from streams.customers.items import event_item
from streams.identity.graph import event_identifiers
from streams.ingest.stage import Accepted, IngestPolicy, anchor_key, from_json, ingest_message
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.envelope import pack, pack_chunks, unpack
from streams.wire.valid import MAGIC, ValidItem, pack_valid, read_valid, valid_item

NOW = 1_765_000_000_000


def _records() -> list[dict[str, Any]]:
    """Normalised records as ingest makes them: every channel, unicode, floats, nulls."""
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    policy = IngestPolicy.from_settings(settings)
    odd = valid_template(NOW, "é-ünïcödé-1")
    odd["identifiers"]["email"] = "zoë+tag@exämple.com"
    odd["properties"] = {"quote": 'say "hi"\n\t\\', "emoji": "🙂", "ctl": "\x01"}
    pairs = [*encode_events(generate(12, seed=5, now_ms=NOW - 60_000), codec, seed=5)]
    pairs.append((b"odd", codec.encode(odd)))
    records = []
    for _, value in pairs:
        outcome = ingest_message(value, codec, policy, NOW)
        assert isinstance(outcome, Accepted), outcome
        records.append(outcome.record)
    assert len({r["channel"] for r in records}) >= 4
    return records


RECORDS = _records()


def _older_message(records: list[Any]) -> bytes:
    """What ingest and dedupe wrote before: a JSON list of ``{"a": anchor, "r": record}``."""
    return pack([{"a": anchor_key(r), "r": r} for r in records])


def test_items_round_trip_with_what_identity_reads() -> None:
    items = [valid_item(anchor_key(r), r) for r in RECORDS]
    (message,) = pack_valid(items, 10 << 20)
    assert message[:1] == MAGIC
    read = read_valid(message)
    assert [v.anchor for v in read] == [anchor_key(r) for r in RECORDS]
    assert [v.event_id for v in read] == [r["event_id"] for r in RECORDS]
    assert [v.ts for v in read] == [r["occurred_at"] for r in RECORDS]
    assert [v.keys for v in read] == [event_identifiers(r) for r in RECORDS]
    assert all(isinstance(v.record, bytes) for v in read)
    assert [v.decoded_record() for v in read] == orjson.loads(orjson.dumps(RECORDS))


def test_messages_are_cut_under_the_size_limit_in_order() -> None:
    items = [valid_item(anchor_key(r), r) for r in RECORDS]
    limit = 3 * max(map(len, items))
    messages = pack_valid(items, limit)
    assert len(messages) > 2
    assert all(len(m) <= limit for m in messages)
    assert [v.event_id for m in messages for v in read_valid(m)] == [r["event_id"] for r in RECORDS]
    big = valid_item("email:big@example.com", {**RECORDS[0], "properties": {"x": "y" * 5000}})
    lone = pack_valid([items[0], big, items[1]], 1000)
    assert [len(read_valid(m)) for m in lone] == [1, 1, 1]  # a lone larger item still goes
    assert pack_valid([], 1000) == []


def test_an_older_message_is_still_read() -> None:
    read = read_valid(_older_message(RECORDS))
    assert [v.anchor for v in read] == [anchor_key(r) for r in RECORDS]
    assert [v.event_id for v in read] == [r["event_id"] for r in RECORDS]
    assert [v.keys for v in read] == [event_identifiers(r) for r in RECORDS]
    assert [v.ts for v in read] == [r["occurred_at"] for r in RECORDS]
    assert [v.decoded_record() for v in read] == orjson.loads(orjson.dumps(RECORDS))


def test_an_older_item_forwarded_in_a_new_message_is_read() -> None:
    """A ``touchpoints.checked`` frame written before the upgrade holds an older item; the
    upgraded dedupe stage forwards it byte for byte beside new ones."""
    older = orjson.dumps({"a": anchor_key(RECORDS[0]), "r": RECORDS[0]})
    newer = valid_item(anchor_key(RECORDS[1]), RECORDS[1])
    (message,) = pack_valid([older, newer], 1 << 20)
    first, second = read_valid(message)
    assert isinstance(first.record, dict) and isinstance(second.record, bytes)
    assert (first.event_id, second.event_id) == (RECORDS[0]["event_id"], RECORDS[1]["event_id"])
    assert first.keys == event_identifiers(RECORDS[0])


@pytest.mark.parametrize(
    "data",
    [
        b"not json at all",
        MAGIC + b"\x00\x00\x00\x50" + b"short",  # cut inside an item
        MAGIC + b"\x00\x00\x00\x06" + b"\x01\x00\x00\x00\x09{",  # cut inside its head
        MAGIC + b"\x00\x00\x00\x08" + b"\x01\x00\x00\x00\x03[1]",  # a head that is no head
        pack([{"a": "email:x@example.com"}]),  # an older item without its record
    ],
)
def test_a_message_that_is_not_valid_items_fails(data: bytes) -> None:
    with pytest.raises((ValueError, TypeError, LookupError)):
        read_valid(data)


def _resolved_envelope(items: list[ValidItem], customer: str) -> bytes:
    """What the identity agent sends to ``touchpoints.resolved`` for these events."""
    events = [{"a": v.anchor, "r": v.record_json()} for v in items]
    (chunk,) = pack_chunks([event_item(customer, e["r"], e["a"]) for e in events])
    return chunk


def _resolved_envelope_before(message: bytes, customer: str) -> bytes:
    """What it sent when it decoded each record and encoded it again."""
    out = []
    for item in unpack(message):
        record = from_json(item["r"])
        out.append(event_item(customer, record, item["a"]))
    (chunk,) = pack_chunks(out)
    return chunk


def test_the_resolved_envelope_and_the_sink_rows_are_unchanged() -> None:
    newer = pack_valid([valid_item(anchor_key(r), r) for r in RECORDS], 10 << 20)[0]
    before = _resolved_envelope_before(_older_message(RECORDS), "c0000000001a1b2c3d4")
    assert _resolved_envelope(read_valid(newer), "c0000000001a1b2c3d4") == before
    older = _older_message(RECORDS)  # an older message in flight gives the same bytes too
    assert _resolved_envelope(read_valid(older), "c0000000001a1b2c3d4") == before
    rows = list(_resolved_rows(SourceMessage(None, before, None, 3, 17, NOW)))
    assert [row for _, row in rows] == [
        touchpoint_row(
            from_json(orjson.loads(orjson.dumps(r))),
            anchor_key(r),
            3,
            17,
            NOW,
            "c0000000001a1b2c3d4",
        )
        for r in RECORDS
    ]
