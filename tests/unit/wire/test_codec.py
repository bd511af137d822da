from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingest.stage import Accepted, IngestPolicy, Reason, Rejected, ingest_message
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, DecodeError, SchemaRegistry

CODEC = AvroCodec(
    SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas"), TOUCHPOINT_SUBJECT
)
NOW = int(time.time() * 1000)


def test_confluent_wire_format_header() -> None:
    data = CODEC.encode(valid_template(NOW))
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, CODEC.schema_id) == (0, 2)


def test_round_trip_keeps_every_field() -> None:
    record = valid_template(NOW)
    decoded = CODEC.decode(CODEC.encode(record))
    assert decoded["occurred_at"] == record["occurred_at"]  # epoch ms, not datetime
    assert decoded["payload"][0] == "touchpoints.WebEvent"
    assert decoded["payload"][1]["url"] == record["payload"][1]["url"]
    assert decoded["identifiers"]["email"] == "Sample@Example.com"
    assert decoded["consent"] == "granted"


def test_v1_producers_are_read_with_the_v2_reader() -> None:
    record = valid_template(NOW)
    del record["consent"]
    data = CODEC.encode(record, schema_id=1)
    assert data[1:5] == b"\x00\x00\x00\x01"
    decoded = CODEC.decode(data)
    assert decoded["consent"] is None  # the v2 default
    assert decoded["event_id"] == record["event_id"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", "truncated_header"),
        (b"\x05\x00\x00\x00\x02abc", "bad_magic_byte"),
        (b"\x00\x00\x00\x00\x63abc", "unknown_schema_id"),
    ],
)
def test_decode_errors_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data)
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_are_rejected(data: bytes) -> None:
    outcome = ingest_message(data, CODEC, IngestPolicy(), NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.reason and outcome.detail


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=5, max_value=200), st.binary(min_size=1, max_size=8))
def test_mangled_valid_messages_never_raise(cut: int, junk: bytes) -> None:
    good = CODEC.encode(valid_template(NOW))
    for data in (good[:cut], good[:cut] + junk, good[:5] + junk + good[5 + len(junk) :]):
        outcome = ingest_message(data, CODEC, IngestPolicy(), NOW)
        if isinstance(outcome, Rejected):
            assert outcome.reason in set(Reason) - {Reason.INTERNAL_ERROR}, outcome
        else:
            assert isinstance(outcome, Accepted)
            assert outcome.record["event_id"]
