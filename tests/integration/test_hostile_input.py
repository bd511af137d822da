"""Issue 12: hostile input through the real pipeline on the real broker.

94 named classes of bad input (``tests/hostile_inputs.py``: framing, Avro a lenient reader
misreads, hostile strings, numbers, timestamps, blocked identifiers, a message just under
the broker's size limit, a 900 KB key) and 60 seeded byte-level mutations of valid
messages, interleaved with generated journeys, go through one in-process worker (agents,
tables, ClickHouse sink). Asserted:

* every bad message is on the dead-letter topic once, with its reason and its original
  key and value (or, too large to carry, a truncated copy whose headers give the
  original's size and SHA-256) and its source position; and in ClickHouse ``dead_letters``;
* every good event (generated, and every mutation the ingest step accepts) is in
  ``touchpoints_v`` exactly once;
* the worker is alive and no ingest batch failed (a dead letter the broker refuses used to
  stall every partition for good, re-sending the batch's good events on each retry);
* the ingest consumer group's committed offsets reach the end of the raw topic (lag 0).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams import metrics
from streams.identity.graph import IdentityRules
from streams.ingest.stage import Accepted, IngestPolicy, Rejected, ingest_message
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.dlq import parse_dead_letter_headers
from tests.hostile_inputs import fuzzed, hostile_classes

pytestmark = pytest.mark.integration

CUSTOMERS = 40
FUZZ = 60


async def _produce(
    settings: Settings, traffic: list[tuple[str, bytes | None, bytes | None]]
) -> dict[str, tuple[int, int]]:
    """Send in order; return each message's (partition, offset) by name."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        max_request_size=2 * 1024 * 1024,
        enable_idempotence=True,
    )
    await producer.start()
    try:
        futures = [
            (name, await producer.send(settings.topics.raw, value, key=key))
            for name, key, value in traffic
        ]
        return {name: ((m := await f).partition, m.offset) for name, f in futures}
    finally:
        await producer.stop()


async def _read_topic(settings: Settings, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        parts = [AioTopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(messages)
            positions = [await consumer.position(tp) for tp in parts]
            if all(p >= ends[tp] for p, tp in zip(positions, parts, strict=True)):
                break
    finally:
        await consumer.stop()
    return out


def _ingest_lag(settings: Settings) -> int:
    """Raw-topic messages the worker's consumer group has not committed."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
        parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.topic_partitions)]
        ends = consumer.end_offsets(parts)
        committed = {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == settings.topics.raw
        }
        return sum(max(0, ends[tp] - max(0, committed.get(tp.partition, 0))) for tp in parts)
    finally:
        consumer.close()
        admin.close()


def test_hostile_input_is_dead_lettered_good_events_land_once_and_nothing_stalls(
    settings: Settings,
) -> None:
    registry = SchemaRegistry.from_dir(settings.schemas_dir)
    codec = AvroCodec(registry, TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    events = generate(CUSTOMERS, seed=1212, now_ms=now)
    good_pairs = encode_events(events, codec, old_schema_fraction=0.2, seed=1212)
    first_key, first_value = good_pairs[0]
    catalogue = hostile_classes(
        codec, registry, now, dict(events[0].record), duplicate_key=first_key
    )
    assert len(catalogue) >= 60
    rules = IdentityRules()
    expected_good = {e.record["event_id"] for e in events}
    expected_reason: dict[str, str] = {s.name: s.reason for s in catalogue}
    bad_traffic: list[tuple[str, bytes | None, bytes | None]] = [
        (s.name, s.key, s.value) for s in catalogue
    ]
    for name, value in fuzzed(codec, now, FUZZ, seed=1212):
        outcome = ingest_message(value, codec, IngestPolicy(), now, rules.is_blocked)
        if isinstance(outcome, Accepted):
            expected_good.add(outcome.record["event_id"])
        else:
            assert isinstance(outcome, Rejected)
            expected_reason[name] = outcome.reason
        bad_traffic.append((name, name.encode(), value))
    # interleave: every bad message sits between good ones; the original of the
    # duplicate goes first
    good = [(f"good-{i}", k, v) for i, (k, v) in enumerate(good_pairs)]
    traffic = [good[0]]
    step = max(1, (len(good) - 1) // len(bad_traffic))
    rest = good[1:]
    for i, bad in enumerate(bad_traffic):
        traffic.extend(rest[i * step : (i + 1) * step])
        traffic.append(bad)
    traffic.extend(rest[len(bad_traffic) * step :])
    assert len(traffic) == len(good) + len(bad_traffic)
    sent = {name: (key, value) for name, key, value in traffic}
    db = settings.clickhouse_database
    failures_before = metrics.STAGE_FAILURES.labels("ingest")._value.get()

    async def scenario() -> dict[str, Any]:
        prepare(settings)
        positions = await _produce(settings, traffic)
        async with running(settings) as pipeline:
            landed = await wait_for(
                pipeline, f"SELECT count() FROM {db}.touchpoints_v", len(expected_good)
            )
            dead = await wait_for(
                pipeline, f"SELECT count() FROM {db}.dead_letters", len(expected_reason)
            )
            deadline = time.monotonic() + 30
            lag = _ingest_lag(settings)
            while lag and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                lag = _ingest_lag(settings)
            await asyncio.sleep(1.0)  # anything still to come (nothing should) lands now
            facts = {
                "positions": positions,
                "landed": landed,
                "dead": dead,
                "lag": lag,
                "failing": set(pipeline.failing),
                "rows": await query(
                    pipeline,
                    f"SELECT event_id, count() FROM {db}.touchpoints_v GROUP BY event_id",
                ),
                "dead_rows": await query(
                    pipeline,
                    f"SELECT source_partition, source_offset, reason, size_bytes"
                    f" FROM {db}.dead_letters FINAL",
                ),
            }
        facts["dlq"] = await _read_topic(settings, settings.topics.dead_letter)
        return facts

    facts = asyncio.run(scenario())
    by_position = {pos: name for name, pos in facts["positions"].items()}
    problems: list[str] = []

    # every good event exactly once
    counts = dict(facts["rows"])
    if set(counts) != expected_good:
        lost = expected_good - set(counts)
        extra = set(counts) - expected_good
        problems.append(
            f"touchpoints_v: {len(lost)} lost {sorted(lost)[:5]}, {len(extra)} unexpected {sorted(extra)[:5]}"
        )
    doubled = {e: c for e, c in counts.items() if c != 1}
    if doubled:
        problems.append(f"events not exactly once: {doubled}")

    # every bad message dead-lettered once, with its reason, original bytes and position
    seen: dict[str, int] = {}
    for message in facts["dlq"]:
        meta = parse_dead_letter_headers(message.headers)
        position = (int(meta["dlq.source.partition"]), int(meta["dlq.source.offset"]))
        name = by_position.get(position, f"?{position}")
        seen[name] = seen.get(name, 0) + 1
        if meta["dlq.source.topic"] != settings.topics.raw or not meta["dlq.detail"]:
            problems.append(f"{name}: source topic/detail missing: {meta}")
        if meta["dlq.reason"] != expected_reason.get(name):
            problems.append(
                f"{name}: reason {meta['dlq.reason']} ({meta['dlq.detail'][:80]}), expected {expected_reason.get(name)}"
            )
            continue
        key, value = sent[name]
        value = value or b""
        if meta.get("dlq.truncated") == "true":
            if (
                int(meta["dlq.original.size"]) != len(value)
                or meta["dlq.original.sha256"] != hashlib.sha256(value).hexdigest()
                or not value.startswith(message.value)
                or not (key or b"").startswith(message.key or b"")
            ):
                problems.append(f"{name}: truncated copy does not describe the original")
        elif (message.key, message.value) != (key, value):
            problems.append(f"{name}: key/value are not the original bytes")
    missing = set(expected_reason) - set(seen)
    if missing:
        problems.append(f"not dead-lettered: {sorted(missing)}")
    repeated = {n: c for n, c in seen.items() if c != 1}
    if repeated:
        problems.append(f"dead-lettered more than once (a batch re-sent?): {repeated}")
    truncated = [
        m for m in facts["dlq"] if parse_dead_letter_headers(m.headers).get("dlq.truncated")
    ]
    if {
        by_position.get(
            (
                int(parse_dead_letter_headers(m.headers)["dlq.source.partition"]),
                int(parse_dead_letter_headers(m.headers)["dlq.source.offset"]),
            )
        )
        for m in truncated
    } != {"near_broker_limit", "huge_key_empty_value"}:
        problems.append(
            f"{len(truncated)} truncated dead letters, expected the two too large to carry"
        )

    # ClickHouse dead_letters: one row per bad message, same reason, original size
    ch = {(p, o): (r, size) for p, o, r, size in facts["dead_rows"]}
    for name, reason in expected_reason.items():
        row = ch.get(facts["positions"][name])
        if row is None or row[0] != reason:
            problems.append(f"dead_letters row of {name}: {row}, expected {reason}")
        elif row[1] != len(sent[name][1] or b""):
            problems.append(
                f"dead_letters row of {name}: size {row[1]} != {len(sent[name][1] or b'')}"
            )

    # alive, nothing stalled, lag back to zero
    if facts["failing"]:
        problems.append(f"failing stages: {facts['failing']}")
    failures = metrics.STAGE_FAILURES.labels("ingest")._value.get() - failures_before
    if failures:
        problems.append(f"{failures:.0f} ingest batches failed and were retried")
    if facts["lag"]:
        problems.append(f"ingest lag {facts['lag']} after everything landed")
    print(
        f"hostile classes {len(catalogue)}, fuzzed {FUZZ} ({FUZZ - (len(expected_reason) - len(catalogue))} accepted),"
        f" good events {len(expected_good)}, dead letters {len(facts['dlq'])}, lag {facts['lag']}"
    )
    assert not problems, "\n".join(problems)


def test_a_dead_letter_the_broker_refuses_goes_again_truncated_and_blocks_nothing(
    settings: Settings,
) -> None:
    """DEAD_LETTER_MAX_BYTES set above the broker's message.max.bytes (a misconfiguration):
    the dead letter of a message just under the broker's limit is refused with
    MessageSizeTooLargeError; it goes again cut to 4 KiB instead of failing its batch (and
    every partition of the worker) for good."""
    registry = SchemaRegistry.from_dir(settings.schemas_dir)
    codec = AvroCodec(registry, TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    s = settings.model_copy(update={"dead_letter_max_bytes": 4 * 1024 * 1024})
    events = generate(5, seed=77, now_ms=now)
    good = encode_events(events, codec, seed=77)
    near = next(
        c
        for c in hostile_classes(codec, registry, now, dict(events[0].record), b"k")
        if c.name == "near_broker_limit"
    )
    traffic = [(f"good-{i}", k, v) for i, (k, v) in enumerate(good)]
    traffic.insert(len(traffic) // 2, (near.name, near.key, near.value))
    db = s.clickhouse_database
    failures_before = metrics.STAGE_FAILURES.labels("ingest")._value.get()

    async def scenario() -> list[Any]:
        prepare(s)
        await _produce(s, traffic)
        async with running(s) as pipeline:
            assert await wait_for(
                pipeline, f"SELECT count() FROM {db}.touchpoints_v", len(good)
            ) == len(good)
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.dead_letters", 1) == 1
            assert not pipeline.failing
            stored = await query(
                pipeline,
                f"SELECT truncated, original_sha256, size_bytes FROM {db}.dead_letters",
            )
        # ClickHouse says its copy is not the whole original and names the original's hash
        assert stored == [(True, hashlib.sha256(near.value).hexdigest(), len(near.value))]
        return await _read_topic(s, s.topics.dead_letter)

    dlq = asyncio.run(scenario())
    assert len(dlq) == 1
    meta = parse_dead_letter_headers(dlq[0].headers)
    assert meta["dlq.reason"] == "oversize_message" and meta["dlq.truncated"] == "true"
    assert meta["dlq.original.sha256"] == hashlib.sha256(near.value).hexdigest()
    assert len(dlq[0].value) < 4096 and near.value.startswith(dlq[0].value)
    assert metrics.STAGE_FAILURES.labels("ingest")._value.get() == failures_before


def test_one_event_id_on_two_partitions_first_wins_in_clickhouse_and_aggregates(
    settings: Settings,
) -> None:
    """The decided rule: the first copy of an event id wins. A second copy on another raw
    partition, with other identifiers, must neither add a row to ``touchpoints_v`` nor be
    counted in the aggregates (before the dedupe stage it did both: the copies anchor on
    different identifiers and resolve to different customers). It is dead-lettered
    ``duplicate_event_id`` with its original bytes and raw position, in the topic and in
    ClickHouse ``dead_letters``."""
    registry = SchemaRegistry.from_dir(settings.schemas_dir)
    codec = AvroCodec(registry, TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    first = valid_template(now, "same-id-1")
    first["identifiers"] = {"email": "first@example.com"}
    second = valid_template(now, "same-id-1")
    second["identifiers"] = {"email": "second@example.com"}
    db = settings.clickhouse_database

    async def send(record: dict[str, Any], partition: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(
                settings.topics.raw, codec.encode(record), key=b"k", partition=partition
            )
        finally:
            await producer.stop()

    async def scenario() -> tuple[Any, Any, Any, list[Any]]:
        prepare(settings)
        async with running(settings) as pipeline:
            await send(first, 0)
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints_v", 1) == 1
            await send(second, 1)
            # the copy is decided once it is dead-lettered (or, were it let through, in
            # touchpoints_v); then past the aggregates' rolling flush
            dead_sql = f"SELECT count() FROM {db}.dead_letters"
            if await wait_for(pipeline, dead_sql, 1, timeout=20) < 1:
                await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints_v", 2, timeout=5)
            await asyncio.sleep(6)
            rows = await query(pipeline, f"SELECT email FROM {db}.touchpoints_v")
            counted = await query(pipeline, f"SELECT sum(events) FROM {db}.customer_360_v")
            dead = await query(pipeline, f"SELECT reason FROM {db}.dead_letters")
        return rows, counted, dead, await _read_topic(settings, settings.topics.dead_letter)

    rows, counted, dead, dlq = asyncio.run(scenario())
    assert rows == [("first@example.com",)], rows
    assert counted == [(1,)], counted
    assert dead == [("duplicate_event_id",)], dead
    (copy,) = dlq
    meta = parse_dead_letter_headers(copy.headers)
    assert meta["dlq.reason"] == "duplicate_event_id"
    assert (meta["dlq.source.topic"], meta["dlq.source.partition"]) == (settings.topics.raw, "1")
    assert (copy.key, copy.value) == (b"k", codec.encode(second))


def test_start_up_refuses_a_max_message_bytes_the_broker_cannot_carry(settings: Settings) -> None:
    """MAX_MESSAGE_BYTES was unbounded relative to the broker's max.message.bytes: an accepted
    message near it would make a checked frame the broker refuses, and the worker would
    retry that batch for good. ``prepare`` (every worker's start-up) reads the topics' limit
    from the broker and refuses such a setting, naming what would work."""
    prepare(settings)  # the default fits
    too_large = settings.model_copy(update={"max_message_bytes": 900_000})
    with pytest.raises(ValueError, match=r"MAX_MESSAGE_BYTES=900000 is too large") as refused:
        prepare(too_large)
    assert re.search(r"max.message.bytes \d+\): .* <= \d+", str(refused.value))
