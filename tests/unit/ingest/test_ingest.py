"""The ingest step: every kind of bad input gets its reason; good input is normalised."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.identity.graph import IdentityRules
from streams.ingest.normalise import normalise_identifiers, normalise_phone
from streams.ingest.stage import (
    Accepted,
    Deduplicator,
    IngestPolicy,
    IngestStage,
    Reason,
    Rejected,
    anchor_key,
    ingest_message,
)
from streams.sim.samples import bad_samples, valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import RawMessage, parse_dead_letter_headers
from streams.wire.envelope import partition_for

CODEC = AvroCodec(
    SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas"), TOUCHPOINT_SUBJECT
)
NOW = int(time.time() * 1000)
POLICY = IngestPolicy()
SAMPLES = bad_samples(CODEC, NOW, duplicate_of=valid_template(NOW, "dup-1"))
IS_BLOCKED = IdentityRules().is_blocked  # what the pipeline's ingest stage is given


def test_the_catalogue_covers_at_least_15_kinds_and_every_stateless_reason() -> None:
    assert len(SAMPLES) >= 15
    covered = {s.reason for s in SAMPLES}
    # wrong_subject / incompatible_schema need a registry that holds such ids (the local one
    # does not): tests/unit/adapters/test_schema_registry.py and the registry integration tests.
    stateless = set(Reason) - {
        Reason.INTERNAL_ERROR,
        Reason.WRONG_SUBJECT,
        Reason.INCOMPATIBLE_SCHEMA,
    }
    assert stateless <= covered


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.name != "duplicate"], ids=lambda s: s.name
)
def test_bad_input_is_rejected_with_its_reason(sample) -> None:  # type: ignore[no-untyped-def]
    outcome = ingest_message(sample.value, CODEC, POLICY, NOW, IS_BLOCKED)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == sample.reason
    assert outcome.detail


def test_good_event_is_normalised() -> None:
    record = valid_template(NOW)
    record["identifiers"] = {
        "email": "  Jane.Doe@Example.COM ",
        "phone": "07700 900123",
        "social_handle": "@JaneDoe",
        "device_id": "ABCD-EF",
        "login_id": " JDoe ",
        "anonymous_id": "undefined",
    }
    record["context"]["country"] = "gb"
    outcome = ingest_message(CODEC.encode(record), CODEC, POLICY, NOW)
    assert isinstance(outcome, Accepted)
    ids = outcome.record["identifiers"]
    assert ids["email"] == "jane.doe@example.com"
    assert ids["phone"] == "+447700900123"
    assert ids["social_handle"] == "janedoe"
    assert ids["device_id"] == "abcd-ef"
    assert ids["login_id"] == "jdoe"
    assert ids["anonymous_id"] is None  # junk value dropped
    assert outcome.record["context"]["country"] == "GB"
    assert anchor_key(outcome.record) == "login_id:jdoe"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 7700 900123", "US", "+447700900123"),
        ("0044 7700 900123", "US", "+447700900123"),
        ("(202) 555-0143", "US", "+12025550143"),
        ("not a phone", "GB", None),
        ("", "GB", None),
    ],
)
def test_phone_normalisation(raw: str, region: str, expected: str | None) -> None:
    assert normalise_phone(raw, region) == expected


def test_bad_email_is_dropped_not_fatal() -> None:
    ids = normalise_identifiers({"email": "no-at-sign", "customer_id": " CRM-1 "}, "GB")  # type: ignore[typeddict-item]
    assert ids["email"] is None and ids["customer_id"] == "CRM-1"


def _raw(partition: int, offset: int, value: bytes) -> RawMessage:
    return RawMessage("raw", partition, offset, b"k", value)


def test_stage_routes_good_and_bad_and_keeps_original_bytes() -> None:
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000, partitions=4)
    good = [CODEC.encode(valid_template(NOW, f"g{i}")) for i in range(3)]
    bad = [s for s in SAMPLES if s.name in ("json", "year_2099")]
    msgs = [
        _raw(0, 0, good[0]),
        _raw(0, 1, bad[0].value),
        _raw(1, 0, good[1]),
        _raw(1, 1, bad[1].value),
        _raw(1, 2, good[2]),
    ]
    result = stage.process(msgs, NOW)
    assert [v.record["event_id"] for v in result.valid] == ["g0", "g1", "g2"]
    assert [d.value for d in result.dead] == [bad[0].value, bad[1].value]
    meta = parse_dead_letter_headers(result.dead[1].headers)
    assert meta["dlq.reason"] == bad[1].reason
    assert (meta["dlq.source.topic"], meta["dlq.source.partition"], meta["dlq.source.offset"]) == (
        "raw",
        "1",
        "1",
    )
    # one durable dedupe entry per event-id partition per batch, not per event
    id_partitions = {partition_for(f"g{i}", 4) for i in range(3)}
    assert sorted((p, k) for p, k, _ in result.state_puts) == [
        (p, f"{p}:0") for p in sorted(id_partitions)
    ]


def test_duplicates_are_caught_within_a_batch_and_across_batches() -> None:
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000)
    a = CODEC.encode(valid_template(NOW, "same"))
    first = stage.process([_raw(0, 0, a), _raw(0, 1, a)], NOW)
    assert len(first.valid) == 1 and [d.reason for d in first.dead] == ["duplicate_event_id"]
    second = stage.process([_raw(0, 2, a)], NOW + 1000)
    assert not second.valid and second.dead[0].reason == "duplicate_event_id"


def test_dedupe_state_restores_after_restart() -> None:
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000)
    a = CODEC.encode(valid_template(NOW, "persisted"))
    result = stage.process([_raw(3, 10, a)], NOW)
    restarted = _restarted(result.state_puts)
    again = restarted.process([_raw(3, 11, a)], NOW + 5)
    assert [d.reason for d in again.dead] == ["duplicate_event_id"]


def test_dedupe_forgets_after_the_horizon_and_deletes_state() -> None:
    d = Deduplicator(horizon_ms=1000)
    d.remember("0:0", ["a", "b"], now_ms=0)
    d.remember("0:2", ["c"], now_ms=900)
    assert d.is_duplicate("a", set())
    assert d.expire(now_ms=1500) == ["0:0"]
    assert not d.is_duplicate("a", set()) and d.is_duplicate("c", set())
    assert len(d) == 1


def test_dedupe_is_bounded_in_ids() -> None:
    d = Deduplicator(horizon_ms=10**9, max_ids=4)
    for i in range(5):
        d.remember(f"0:{i}", [f"e{i}a", f"e{i}b"], now_ms=i)
    dropped = d.expire(now_ms=10)
    assert dropped == ["0:0", "0:1", "0:2"]
    assert len(d) == 4


def _with_ids(ids: dict[str, str | None], event_id: str = "ids-1") -> bytes:
    record = valid_template(NOW, event_id)
    record["identifiers"] = ids
    return CODEC.encode(record)


def test_invisible_characters_are_stripped_from_identifiers() -> None:
    outcome = ingest_message(
        _with_ids({"customer_id": "\u200bCRM-42\u200d", "email": "\ufeffa@b.example\u202e"}),
        CODEC,
        POLICY,
        NOW,
        IS_BLOCKED,
    )
    assert isinstance(outcome, Accepted), outcome
    assert outcome.record["identifiers"]["customer_id"] == "CRM-42"
    assert outcome.record["identifiers"]["email"] == "a@b.example"


def test_an_id_of_only_zero_width_characters_is_no_identifier() -> None:
    outcome = ingest_message(
        _with_ids({"anonymous_id": "\u200b\u200c\u2060"}), CODEC, POLICY, NOW, IS_BLOCKED
    )
    assert isinstance(outcome, Rejected) and outcome.reason == Reason.MISSING_IDENTIFIERS


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("CRM-1\x1b[31m", "U+001B"),
        ("a\x00b", "U+0000"),
        ("line\u2028break", "U+2028"),
        ("x" * 257, "257 characters > limit 256"),
    ],
)
def test_control_characters_and_overlong_ids_are_refused_with_the_kind(
    value: str, needle: str
) -> None:
    outcome = ingest_message(
        _with_ids({"customer_id": value, "email": "ok@example.com"}), CODEC, POLICY, NOW
    )
    assert isinstance(outcome, Rejected) and outcome.reason == Reason.INVALID_IDENTIFIER
    assert "identifiers.customer_id" in outcome.detail and needle in outcome.detail
    assert "\x1b" not in outcome.detail  # the reason is safe to print on a terminal


@pytest.mark.parametrize("event_id", ["e\x1b[0m", "e" * 257, "ev\u200b1"])
def test_bad_event_ids_are_refused(event_id: str) -> None:
    outcome = ingest_message(_with_ids({"email": "ok@example.com"}, event_id), CODEC, POLICY, NOW)
    assert isinstance(outcome, Rejected) and outcome.reason == Reason.INVALID_EVENT_ID


def test_a_blocked_identifier_next_to_a_usable_one_is_fine() -> None:
    ids = {"device_id": "00000000-0000-0000-0000-000000000000", "email": "ok@example.com"}
    outcome = ingest_message(_with_ids(ids), CODEC, POLICY, NOW, IS_BLOCKED)
    assert isinstance(outcome, Accepted), outcome
    assert anchor_key(outcome.record, IS_BLOCKED) == "email:ok@example.com"


@pytest.mark.parametrize(
    "ids",
    [
        {"anonymous_id": "anonymous"},
        {"device_id": "00000000-0000-0000-0000-000000000000"},
        {"email": "test@test.com", "phone": "+10000000000"},
        {"anonymous_id": "Anonymous", "customer_id": "0"},
    ],
)
def test_only_blocked_identifiers_is_missing_identifiers(ids: dict[str, str]) -> None:
    outcome = ingest_message(_with_ids(ids), CODEC, POLICY, NOW, IS_BLOCKED)
    assert isinstance(outcome, Rejected) and outcome.reason == Reason.MISSING_IDENTIFIERS
    assert "blocked" in outcome.detail


@pytest.mark.parametrize(
    ("received_at", "reason"),
    [
        (-62_135_596_800_000, Reason.TIMESTAMP_TOO_OLD),  # 0001-01-01
        (2**63 - 1, Reason.TIMESTAMP_IN_FUTURE),
        (-(2**63), Reason.TIMESTAMP_TOO_OLD),
        (NOW + 3600_000, Reason.TIMESTAMP_IN_FUTURE),
    ],
)
def test_received_at_is_bounded_like_occurred_at(received_at: int, reason: Reason) -> None:
    record = valid_template(NOW, "rcv")
    record["received_at"] = received_at
    outcome = ingest_message(CODEC.encode(record), CODEC, POLICY, NOW)
    assert isinstance(outcome, Rejected) and outcome.reason == reason
    assert "received_at" in outcome.detail


def test_a_batch_replayed_after_a_crash_is_not_dead_lettered() -> None:
    """Issue 12, item 6: the dedupe state is written after the batch's output is delivered;
    a crash before the offsets commit replays the batch. Those events are counted as
    replays (their output already left), not dead-lettered as duplicate_event_id; an id
    the producer really sent twice (another offset) still is."""
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000)
    values = [CODEC.encode(valid_template(NOW, f"r{i}")) for i in range(5)]
    first = stage.process([_raw(2, 100 + i, v) for i, v in enumerate(values)], NOW)
    assert len(first.valid) == 5 and first.replayed == 0
    restarted = _restarted(first.state_puts)
    replay = [_raw(2, 100 + i, v) for i, v in enumerate(values)]
    producer_retry = _raw(2, 105, values[0])  # same id, a new offset
    again = restarted.process([*replay, producer_retry], NOW + 2000)
    assert again.replayed == 5
    assert not again.valid
    assert [
        (d.reason, parse_dead_letter_headers(d.headers)["dlq.source.offset"]) for d in again.dead
    ] == [("duplicate_event_id", "105")]
    assert not again.state_puts  # nothing new to remember


def test_a_copy_on_another_partition_is_a_duplicate_even_after_a_restart() -> None:
    """Issue 12, item 4: first wins across raw partitions; the second copy (other
    identifiers, another raw partition) is dead-lettered with its own bytes and position."""
    first = valid_template(NOW, "same-id")
    first["identifiers"] = {"email": "first@example.com"}  # type: ignore[typeddict-item]
    second = valid_template(NOW, "same-id")
    second["identifiers"] = {"email": "second@example.com"}  # type: ignore[typeddict-item]
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000, partitions=4)
    taken = stage.process([_raw(0, 5, CODEC.encode(first))], NOW)
    assert [v.record["identifiers"]["email"] for v in taken.valid] == ["first@example.com"]
    restarted = _restarted(taken.state_puts, partitions=4)
    copy = CODEC.encode(second)
    again = restarted.process([_raw(1, 9, copy)], NOW + 10)
    assert not again.valid and again.replayed == 0
    (dead,) = again.dead
    meta = parse_dead_letter_headers(dead.headers)
    assert (dead.reason, dead.value) == ("duplicate_event_id", copy)
    assert (meta["dlq.source.partition"], meta["dlq.source.offset"]) == ("1", "9")


def _restarted(state_puts: list[tuple[int, str, dict]], partitions: int = 1) -> IngestStage:
    """A new stage on the state ``state_puts`` persisted (what a restarted worker reads)."""
    by_partition: dict[int, list[tuple[str, dict]]] = {}
    for partition, key, value in state_puts:
        by_partition.setdefault(partition, []).append((key, value))
    stage = IngestStage(CODEC, POLICY, dedupe_horizon_ms=3_600_000, partitions=partitions)
    for partition, entries in by_partition.items():
        stage.restore(partition, entries)
    return stage
