"""Strict Avro decoding (issue 12, item 3): bytes fastavro reads leniently are corrupt_body.

Every message the codec accepts must be one any conforming Avro reader reads the same way:
a union branch or enum index outside the union/enum, a boolean byte other than 0/1, a
negative length, an overlong number, a block count or size that lies are all refused; valid
but uncommon encodings (a map written as blocks with byte sizes) are still accepted.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from fastavro import schemaless_reader
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingest.stage import Accepted, IngestPolicy, Reason, Rejected, ingest_message
from streams.sim.samples import valid_template
from streams.wire.avro_strict import AvroStrictError, strict_checker
from streams.wire.codec import (
    ALERT_SUBJECT,
    TOUCHPOINT_SUBJECT,
    AvroCodec,
    DecodeError,
    SchemaRegistry,
)

REGISTRY = SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas")
CODEC = AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT)
NOW = int(time.time() * 1000)
GOOD = CODEC.encode(valid_template(NOW))
SOURCE = b"\x02\x0eweb-sdk"  # union index 1 (string) + "web-sdk"


def _lenient(data: bytes) -> object:
    """What fastavro alone makes of the bytes (the behaviour before the strict check)."""
    buf = io.BytesIO(data)
    buf.seek(5)
    return schemaless_reader(buf, REGISTRY.by_id(2).parsed, None, return_record_name=True)  # type: ignore[union-attr]


def _reason(data: bytes, codec: AvroCodec = CODEC) -> str:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.detail
    return info.value.reason


def test_union_index_minus_one_is_corrupt_not_the_last_branch() -> None:
    data = GOOD.replace(SOURCE, b"\x01" + SOURCE[1:], 1)
    assert _lenient(data)["source"] == "web-sdk"  # type: ignore[index]  # fastavro: branch -1 = last
    assert _reason(data) == "corrupt_body"


@pytest.mark.parametrize("index", [b"\x04", b"\x7f", b"\x03", b"\xff\xff\xff\xff\x0f"])
def test_out_of_range_union_indexes_are_corrupt(index: bytes) -> None:
    data = GOOD.replace(SOURCE, index + SOURCE[1:], 1)
    assert _reason(data) == "corrupt_body"


def _social(is_public: bool) -> bytes:
    record = valid_template(NOW)
    record.update(channel="social", event_type="mention")
    record["payload"] = ("touchpoints.SocialEvent", {"platform": "x", "is_public": is_public})
    return CODEC.encode(record)


@pytest.mark.parametrize("byte", [0x02, 0x7F, 0xFF])
def test_boolean_bytes_other_than_0_and_1_are_corrupt(byte: int) -> None:
    true, false = _social(True), _social(False)
    at = next(i for i, (a, b) in enumerate(zip(true, false, strict=True)) if a != b)
    data = true[:at] + bytes([byte]) + true[at + 1 :]
    assert _lenient(data)["payload"][1]["is_public"] is True  # type: ignore[index]  # fastavro
    assert _reason(data) == "corrupt_body"
    assert CODEC.decode(false)["payload"][1]["is_public"] is False


def test_negative_string_length_is_corrupt() -> None:
    data = GOOD.replace(SOURCE, b"\x02\x0d" + SOURCE[2:], 1)  # zig-zag 0x0d = -7
    assert _reason(data) == "corrupt_body"


def test_overlong_number_is_corrupt() -> None:
    # occurred_at follows the three strings; an 11-byte varint is never a long.
    start = 5 + 1 + len("tpl-0001") + 1 + len("web") + 1 + len("page_view")
    data = GOOD[:start] + b"\x80" * 10 + b"\x01" + GOOD[start:]
    assert _reason(data) == "corrupt_body"


def test_trailing_and_truncated_bodies_keep_their_reasons() -> None:
    assert _reason(GOOD + b"\x00") == "trailing_bytes"
    assert _reason(GOOD[:-3]) == "truncated_body"
    assert _reason(GOOD[:6]) == "truncated_body"


def test_a_map_block_count_that_lies_is_refused() -> None:
    # properties {"campaign": "autumn"}: count 1 (0x02) ... end 0x00; claim 2**40 items
    props = b"\x02\x10campaign\x0cautumn\x00"
    assert props in GOOD
    data = GOOD.replace(props, b"\x80\x80\x80\x80\x80\x80\x02" + props[1:], 1)
    assert _reason(data) in {"truncated_body", "corrupt_body"}


def test_blocks_with_byte_sizes_are_valid_avro_and_accepted() -> None:
    """A negative block count is followed by the block's size in bytes (Avro spec)."""
    props = b"\x02\x10campaign\x0cautumn\x00"
    items = props[1:-1]
    sized = b"\x01" + bytes([len(items) * 2]) + items + b"\x00"  # count -1, size
    data = GOOD.replace(props, sized, 1)
    assert CODEC.decode(data)["properties"] == {"campaign": "autumn"}
    wrong_size = b"\x01" + bytes([(len(items) + 1) * 2]) + items + b"\x00"
    assert _reason(GOOD.replace(props, wrong_size, 1)) == "corrupt_body"


def test_enum_index_out_of_range_is_corrupt() -> None:
    alerts = AvroCodec(REGISTRY, ALERT_SUBJECT)
    schema = REGISTRY.latest(ALERT_SUBJECT).schema
    check = strict_checker(schema)
    alert = {
        "alert_id": "a1",
        "customer_id": "c1",
        "rule": "r",
        "severity": "critical",
        "score": 1.0,
        "summary": "s",
        "event_ids": [],
        "evidence": {},
        "occurred_at": NOW,
        "detected_at": NOW,
    }
    assert set(alert) == {f["name"] for f in schema["fields"]}
    data = alerts.encode(alert)
    check(data, 5)
    critical = b"\x08"  # index 4, the last symbol
    at = data.index(b"\x02r" + critical) + 2
    for bad in (b"\x01", b"\x0a"):  # -1, 5
        with pytest.raises(AvroStrictError):
            check(data[:at] + bad + data[at + 1 :], 5)


def test_every_registered_schema_compiles() -> None:
    for subject in REGISTRY.subjects():
        for version in REGISTRY.versions(subject):
            strict_checker(version.schema)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_byte_mutations_of_valid_messages_decode_strictly_or_get_a_reason(
    data: st.DataObject,
) -> None:
    """Fuzz the decoder at byte level: any mutation is either a datum every reader reads
    the same way (it re-encodes to a message that decodes to the same record) or rejected
    with a decode reason; nothing else escapes."""
    template = data.draw(st.sampled_from([GOOD, _social(True), _social(False)]))
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(5, len(template) - 1), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        )
    )
    buf = bytearray(template)
    for at, byte in edits:
        buf[at] = byte
    mutated = bytes(buf)
    try:
        record = CODEC.decode(mutated)
    except DecodeError as exc:
        assert exc.reason in {"corrupt_body", "truncated_body", "trailing_bytes"}
        assert exc.detail
        return
    again = CODEC.decode(CODEC.encode(record))
    assert again == record


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_random_bodies_behind_a_valid_header_never_escape(body: bytes) -> None:
    outcome = ingest_message(GOOD[:5] + body, CODEC, IngestPolicy(), NOW)
    if isinstance(outcome, Rejected):
        assert outcome.reason in set(Reason) - {Reason.INTERNAL_ERROR}, outcome
        assert outcome.detail
    else:
        assert isinstance(outcome, Accepted)
