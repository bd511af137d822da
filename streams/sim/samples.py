"""A catalogue of bad inputs, one per dead-letter reason, around a valid template.

Used by the tests (each must land in the DLQ with its reason while good events
around it pass) and by the demo (so a newcomer sees the DLQ at work).
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass
from typing import Any

from streams.wire.codec import AvroCodec

__all__ = ["BadSample", "bad_samples", "template_variant", "valid_template"]


@dataclass(frozen=True, slots=True)
class BadSample:
    name: str
    reason: str
    key: bytes
    value: bytes


def valid_template(now_ms: int, event_id: str = "tpl-0001") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "channel": "web",
        "event_type": "page_view",
        "occurred_at": now_ms - 5_000,
        "received_at": now_ms - 4_000,
        "source": "web-sdk",
        "identifiers": {"anonymous_id": "anon-sample-1", "email": "Sample@Example.com"},
        "context": {"country": "GB", "geo": {"lat": 51.5, "lon": -0.12, "city": "London"}},
        "payload": ("touchpoints.WebEvent", {"url": "https://shop.example/", "session_id": "s1"}),
        "properties": {"campaign": "autumn"},
        "consent": "granted",
    }


def template_variant(now_ms: int, event_id: str, /, **changes: Any) -> dict[str, Any]:
    """The valid template with ``changes``: ``context__country="FR"`` sets a nested field."""
    rec = copy.deepcopy(valid_template(now_ms, event_id=event_id))
    for path, value in changes.items():
        target = rec
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = value
    return rec


# Long on purpose: a flat catalogue, one bad message per dead-letter reason (test_sizes.py).
def bad_samples(
    codec: AvroCodec, now_ms: int, duplicate_of: dict[str, Any], duplicate_key: bytes = b"dup"
) -> list[BadSample]:
    """Bad messages. ``duplicate_of`` is a valid record sent earlier with ``duplicate_key``;
    it is sent again with the same key, as a producer retry would (same key, same partition).
    """

    def variant(name: str, **changes: Any) -> dict[str, Any]:
        return template_variant(now_ms, f"bad-{name}", **changes)

    good = codec.encode(variant("base"))
    body = good[5:]
    no_ids = {k: None for k in ("anonymous_id", "email")}
    # A union branch index of -1 (zig-zag 0x01) where the template has 1 (0x02, the string
    # branch of `source`): lenient readers take it as the union's last branch.
    source = b"\x02\x0eweb-sdk"
    union_minus_one = good.replace(source, b"\x01" + source[1:], 1)
    social = {
        "channel": "social",
        "event_type": "mention",
        "identifiers": {"social_handle": "@sample"},
    }
    true, false = (
        codec.encode(
            variant(
                "bool",
                payload=("touchpoints.SocialEvent", {"platform": "x", "is_public": flag}),
                **social,
            )
        )
        for flag in (True, False)
    )
    at = next(i for i, (a, b) in enumerate(zip(true, false, strict=True)) if a != b)
    boolean_two = true[:at] + b"\x02" + true[at + 1 :]
    samples = [
        ("empty", "empty_message", b""),
        ("two_bytes", "truncated_header", b"\x00\x00"),
        ("bad_magic", "bad_magic_byte", b"\x01" + good[1:]),
        ("unknown_schema", "unknown_schema_id", struct.pack(">bI", 0, 999) + body),
        ("truncated_avro", "truncated_body", good[: len(good) // 2]),
        ("trailing_garbage", "trailing_bytes", good + b"\x00\x00\x07"),
        ("json", "json_not_avro", b'{"event_id": "j1", "channel": "web"}'),
        (
            "oversize",
            "oversize_message",
            codec.encode(variant("oversize", properties={"blob": "x" * 70_000})),
        ),
        (
            "no_identifiers",
            "missing_identifiers",
            codec.encode(variant("noids", identifiers=no_ids)),
        ),
        (
            "junk_identifiers",
            "missing_identifiers",
            codec.encode(variant("junkids", identifiers={"anonymous_id": "  ", "email": "null"})),
        ),
        (
            "year_2099",
            "timestamp_in_future",
            codec.encode(variant("y2099", occurred_at=4_070_908_800_000)),
        ),
        ("year_1970", "timestamp_too_old", codec.encode(variant("y1970", occurred_at=0))),
        (
            "huge_property_map",
            "too_many_properties",
            codec.encode(variant("props", properties={f"p{i}": "v" for i in range(500)})),
        ),
        (
            "long_property",
            "property_too_long",
            codec.encode(variant("longprop", properties={"note": "y" * 5000})),
        ),
        ("unknown_channel", "unknown_channel", codec.encode(variant("chan", channel="fax"))),
        (
            "unknown_type",
            "unknown_event_type",
            codec.encode(variant("type", event_type="teleport")),
        ),
        (
            "payment_without_commerce",
            "payload_mismatch",
            codec.encode(variant("mismatch", event_type="payment")),
        ),
        ("empty_event_id", "missing_event_id", codec.encode(variant("noid", event_id="  "))),
        (
            "geo_off_earth",
            "invalid_value",
            codec.encode(variant("geo", context__geo={"lat": 200.0, "lon": 0.0, "city": None})),
        ),
        (
            "csat_out_of_range",
            "invalid_value",
            codec.encode(
                variant(
                    "csat",
                    channel="contact_centre",
                    event_type="survey_response",
                    payload=("touchpoints.ContactCentreEvent", {"csat": 9, "medium": "call"}),
                )
            ),
        ),
        ("union_index_minus_one", "corrupt_body", union_minus_one),
        ("boolean_byte_two", "corrupt_body", boolean_two),
        (
            "only_blocked_identifiers",
            "missing_identifiers",
            codec.encode(
                variant(
                    "blocked",
                    identifiers={
                        "device_id": "00000000-0000-0000-0000-000000000000",
                        "anonymous_id": "anonymous",
                    },
                )
            ),
        ),
        (
            "terminal_escape_in_crm_id",
            "invalid_identifier",
            codec.encode(variant("esc", identifiers={"customer_id": "CRM-1\x1b[2J\x1b[31mroot"})),
        ),
        (
            "zero_width_and_control_only_id",
            "invalid_identifier",
            codec.encode(variant("ctl", identifiers={"login_id": "\u200b\x00\u200d\x07"})),
        ),
        (
            "identifier_10000_chars",
            "invalid_identifier",
            codec.encode(variant("longid", identifiers={"anonymous_id": "a" * 10_000})),
        ),
        (
            "event_id_10000_chars",
            "invalid_event_id",
            codec.encode(variant("x", event_id="e" * 10_000)),
        ),
        (
            "received_at_year_1",
            "timestamp_too_old",
            codec.encode(variant("rcv1", received_at=-62_135_596_800_000)),
        ),
        (
            "received_at_int64_max",
            "timestamp_in_future",
            codec.encode(variant("rcvmax", received_at=2**63 - 1)),
        ),
        ("duplicate", "duplicate_event_id", codec.encode(duplicate_of)),
    ]
    return [
        BadSample(
            name, reason, duplicate_key if name == "duplicate" else f"bad:{name}".encode(), value
        )
        for name, reason, value in samples
    ]
