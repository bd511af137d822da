"""MAX_MESSAGE_BYTES against the broker's max.message.bytes (issue 12): an accepted message
travels on touchpoints.checked as its raw bytes plus its JSON form; a limit that lets a frame
outgrow the broker's would stall the worker on the first such message, so start-up refuses it."""

from __future__ import annotations

import time

from streams.adapters.kafka import (
    FRAME_GROWTH,
    FRAME_HEADROOM,
    _limits_from,
    max_message_bytes_allowed,
    message_size_problem,
)
from streams.ingest.stage import IngestPolicy, IngestStage
from streams.settings import Settings
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage

BROKER_DEFAULT = 1_048_588


def test_the_default_fits_the_broker_default_and_a_larger_limit_is_refused() -> None:
    allowed = max_message_bytes_allowed(BROKER_DEFAULT)
    assert Settings().max_message_bytes <= allowed < BROKER_DEFAULT // 2
    limits = {"p.touchpoints.checked": BROKER_DEFAULT, "p.touchpoints.valid": 600_000}
    assert message_size_problem(64 * 1024, limits) is None
    problem = message_size_problem(900_000, limits)
    assert problem is not None
    # names the tightest topic, its limit and what would work
    assert "p.touchpoints.valid" in problem and "600000" in problem
    assert f"<= {max_message_bytes_allowed(600_000)}" in problem
    assert message_size_problem(900_000, {}) is None  # nothing to compare with


def test_the_largest_accepted_message_makes_a_frame_within_the_bound() -> None:
    """The worst case the bound is for: every property value as long as allowed and made of
    characters JSON escapes six-fold."""
    settings = Settings()
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    record = valid_template(now, "big-1")
    record["properties"] = {
        f"p{i:02d}": "\x01" * settings.max_property_value_chars
        for i in range(settings.max_properties)
    }
    value = codec.encode(record)
    policy = IngestPolicy(max_message_bytes=len(value))
    result = IngestStage(codec, policy, 3_600_000).check(
        [RawMessage("raw", 0, 0, None, value)], now
    )
    assert result.accepted == 1, [d.reason for d in result.dead]
    (frame,) = [f for frames in result.checked.values() for f in frames]
    assert len(frame) > 5 * len(value)  # the escapes really do blow it up
    assert len(frame) <= FRAME_GROWTH * len(value) + FRAME_HEADROOM


def test_the_broker_answer_is_read_per_topic() -> None:
    answer = {
        "topic": {
            "a": {"max.message.bytes": {"value": "1048588", "config_source": "DEFAULT_CONFIG"}},
            "b": {"max.message.bytes": {"value": "2000000", "config_source": "TOPIC_CONFIG"}},
            "other": {"max.message.bytes": {"value": "1"}},
        }
    }
    assert _limits_from(answer, ["a", "b"]) == {"a": 1_048_588, "b": 2_000_000}
