"""The adversarial catalogue (tests/hostile_inputs.py) through the pure ingest step: every
class gets the reason it is named with. The same catalogue goes through the real pipeline
in tests/integration/test_hostile_input.py."""

from __future__ import annotations

import time
from pathlib import Path

from streams.identity.graph import IdentityRules
from streams.ingest.stage import IngestPolicy, IngestStage, Reason
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage, parse_dead_letter_headers
from tests.hostile_inputs import fuzzed, hostile_classes

REGISTRY = SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas")
CODEC = AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT)
NOW = int(time.time() * 1000)


def test_every_hostile_class_gets_its_reason_and_there_are_at_least_60() -> None:
    original = valid_template(NOW, "dup-original")
    catalogue = hostile_classes(CODEC, REGISTRY, NOW, original, b"dup-key")
    assert len(catalogue) >= 60
    stage = IngestStage(CODEC, IngestPolicy(), 3_600_000, is_blocked=IdentityRules().is_blocked)
    first = stage.process([RawMessage("raw", 0, 0, b"dup-key", CODEC.encode(original))], NOW)
    assert len(first.valid) == 1
    messages = [RawMessage("raw", 0, i + 1, s.key, s.value) for i, s in enumerate(catalogue)]
    result = stage.process(messages, NOW)
    assert not result.valid, [v.record["event_id"] for v in result.valid]
    got = {
        int(parse_dead_letter_headers(d.headers)["dlq.source.offset"]): d.reason
        for d in result.dead
    }
    wrong = {
        s.name: (s.reason, got.get(i + 1))
        for i, s in enumerate(catalogue)
        if got.get(i + 1) != s.reason
    }
    assert not wrong
    # incompatible_schema needs a Schema Registry holding such a schema (test_schema_registry)
    unreachable = {Reason.INTERNAL_ERROR, Reason.INCOMPATIBLE_SCHEMA}
    assert {s.reason for s in catalogue} >= set(Reason) - unreachable


def test_fuzzed_messages_are_valid_or_rejected_with_a_reason() -> None:
    stage = IngestStage(CODEC, IngestPolicy(), 3_600_000, is_blocked=IdentityRules().is_blocked)
    cases = fuzzed(CODEC, NOW, 200, seed=12)
    result = stage.process(
        [RawMessage("raw", 0, i, name.encode(), v) for i, (name, v) in enumerate(cases)], NOW
    )
    assert len(result.valid) + len(result.dead) == len(cases)
    assert all(d.reason != Reason.INTERNAL_ERROR for d in result.dead)
    assert result.valid and result.dead  # the mutations reach both outcomes
