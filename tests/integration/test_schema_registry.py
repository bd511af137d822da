"""The pipeline against a real Schema Registry (Apicurio, Confluent API) and real Kafka.

Producers use confluent-kafka's AvroSerializer (auto-registered ids, not registry.json's);
alerts are read back with confluent-kafka's AvroDeserializer.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.adapters.schema_registry import ConfluentEncoder, RemoteSchemas, schema_text
from streams.cli import main
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.generator import GeneratedEvent, encode_events, generate
from streams.wire.codec import ALERT_SUBJECT, TOUCHPOINT_SUBJECT, SchemaRegistry
from streams.wire.dlq import parse_dead_letter_headers
from tests.integration.harness import landed_ids, produce_raw, read_topic

pytestmark = pytest.mark.integration

NEW_FIELD = "referrer"


def _with_registry(settings: Settings, url: str, **more: Any) -> Settings:
    return settings.model_copy(update={"schema_registry_url": url, **more})


def _evolved(local: SchemaRegistry) -> dict[str, Any]:
    """A producer one step ahead: our newest schema plus a new optional field."""
    schema = copy.deepcopy(local.latest(TOUCHPOINT_SUBJECT).schema)
    schema["fields"].append({"name": NEW_FIELD, "type": ["null", "string"], "default": None})
    return schema


def _serializer(client: SchemaRegistryClient, schema: dict[str, Any]) -> AvroSerializer:
    return AvroSerializer(client, schema_text(schema), conf={"auto.register.schemas": True})


def _evolved_pairs(
    client: SchemaRegistryClient, settings: Settings, events: list[GeneratedEvent]
) -> list[tuple[bytes, bytes]]:
    serialize = _serializer(client, _evolved(SchemaRegistry.from_dir(settings.schemas_dir)))
    ctx = SerializationContext(settings.topics.raw, MessageField.VALUE)
    out = []
    for ev in events:
        record = dict(ev.record)
        record[NEW_FIELD] = "https://partner.example/"
        out.append((ev.key, bytes(serialize(record, ctx))))
    return out


def _schema_id(value: bytes) -> int:
    assert value[0] == 0
    return int.from_bytes(value[1:5], "big")


def _burst(events: list[GeneratedEvent], now: int) -> list[GeneratedEvent]:
    """Six payments by one customer within a minute: a velocity_burst alert."""
    payment = next(e for e in events if e.record["event_type"] == "payment")
    out = []
    for i in range(6):
        record = copy.deepcopy(dict(payment.record))
        record["event_id"] = f"burst-{i}"
        record["occurred_at"] = now - 60_000 + i * 5_000
        record["received_at"] = record["occurred_at"]
        out.append(GeneratedEvent(record, payment.person, payment.key))  # type: ignore[arg-type]
    return out


def test_confluent_producers_evolved_schema_bad_ids_and_alerts_for_confluent_consumers(
    settings: Settings, local_registry: Any
) -> None:
    settings = _with_registry(settings, local_registry.url)
    client = SchemaRegistryClient({"url": local_registry.url})
    local = SchemaRegistry.from_dir(settings.schemas_dir)
    remote = RemoteSchemas.from_settings(settings, local)
    now = int(time.time() * 1000)
    events = generate(30, seed=5, now_ms=now)
    # The generator as a real producer: AvroSerializer, auto-registered v1 and v2 ids.
    current = events[: len(events) // 2]
    pairs = encode_events(current, ConfluentEncoder(remote), old_schema_fraction=0.3, seed=5)
    pairs += encode_events(_burst(events, now), ConfluentEncoder(remote))
    evolved = _evolved_pairs(client, settings, events[len(events) // 2 :])
    used = {_schema_id(v) for _, v in pairs + evolved}
    assert len(used) == 3  # v1, v2 and the evolved schema
    assert used.isdisjoint({s.schema_id for s in local.versions(TOUCHPOINT_SUBJECT)}), used
    # Two messages no decoder can read: an id nobody registered, an id of another subject.
    body = pairs[0][1][5:]
    other = client.get_latest_version("elsewhere.topic0-value").schema_id
    bad = [
        (b"bad-1", b"\x00" + (987_654).to_bytes(4, "big") + body),
        (b"bad-2", b"\x00" + other.to_bytes(4, "big") + body),
    ]
    traffic = pairs[:10] + bad[:1] + pairs[10:] + bad[1:] + evolved
    good_ids = {e.record["event_id"] for e in events} | {f"burst-{i}" for i in range(6)}
    db = settings.clickhouse_database

    async def scenario() -> list[Any]:
        prepare(settings)
        await produce_raw(settings, traffic)
        async with running(settings) as pipeline:
            assert await landed_ids(pipeline, db, len(good_ids)) == good_ids
            dead = await wait_for(pipeline, f"SELECT count() FROM {db}.dead_letters", 2)
            assert dead == 2
            alerts = await read_topic(settings, settings.topics.alerts, 1)
        dlq = await read_topic(settings, settings.topics.dead_letter, 2)
        reasons = {m.key: parse_dead_letter_headers(m.headers)["dlq.reason"] for m in dlq}
        assert reasons == {b"bad-1": "unknown_schema_id", b"bad-2": "wrong_subject"}
        assert {m.value for m in dlq} == {v for _, v in bad}  # original bytes
        # the worker asked the registry once per id (the client caches what it fetched)
        assert pipeline.remote_schemas is not None
        # (the unknown id twice: confirmed after half a second; the other subject's once)
        assert pipeline.remote_schemas.writers.fetches <= len(used) + 3
        return alerts

    alerts = asyncio.run(scenario())
    assert alerts, "the payment burst raised no alert"
    # Downstream: a stock Confluent deserializer reads our alerts by the registry's id.
    registered = client.lookup_schema(
        f"{settings.topics.alerts}-value",
        Schema(schema_text(local.latest(ALERT_SUBJECT).schema), "AVRO"),
    )
    deserialize = AvroDeserializer(client)
    ctx = SerializationContext(settings.topics.alerts, MessageField.VALUE)
    decoded = [deserialize(m.value, ctx) for m in alerts]
    assert {_schema_id(m.value) for m in alerts} == {registered.schema_id}
    assert registered.schema_id != local.latest(ALERT_SUBJECT).schema_id
    assert client.get_compatibility(f"{settings.topics.alerts}-value") == "BACKWARD"
    burst = [a for a in decoded if a["rule"] == "velocity_burst"]
    assert burst, [a["rule"] for a in decoded]
    assert burst[0]["customer_id"] == alerts[decoded.index(burst[0])].key.decode()


def _cli(settings: Settings, *args: str) -> Any:
    env = {
        "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "TOPIC_PREFIX": settings.topic_prefix,
        "SCHEMAS_DIR": str(settings.schemas_dir),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }
    return CliRunner().invoke(main, list(args), env=env)


def test_an_incompatible_schema_is_refused_by_the_registry_and_surfaced_by_schemas_check(
    settings: Settings, local_registry: Any, tmp_path: Path
) -> None:
    settings = _with_registry(settings, local_registry.url)
    client = SchemaRegistryClient({"url": local_registry.url})
    subject = f"{settings.topics.raw}-value"

    first = _cli(settings, "schemas", "check")
    assert first.exit_code == 0, first.output
    assert "not registered yet" in first.output
    registered = _cli(settings, "schemas", "register")
    assert registered.exit_code == 0, registered.output
    assert client.get_compatibility(subject) == "BACKWARD"
    again = _cli(settings, "schemas", "check")
    assert again.exit_code == 0, again.output
    assert again.output.count("registered as id") == 2
    versions = client.get_versions(subject)

    # A producer that changed a field's type: the registry refuses it (HTTP 409).
    local = SchemaRegistry.from_dir(settings.schemas_dir)
    broken = copy.deepcopy(local.latest(TOUCHPOINT_SUBJECT).schema)
    next(f for f in broken["fields"] if f["name"] == "occurred_at")["type"] = "string"
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(schema_text(broken), "AVRO"))
    assert refused.value.http_status_code == 409

    # Our next version adds a field without a default: `schemas check` says so before a deploy.
    schemas = tmp_path / "schemas"
    shutil.copytree(settings.schemas_dir, schemas)
    ahead = copy.deepcopy(local.latest(TOUCHPOINT_SUBJECT).schema)
    ahead["fields"].append({"name": "loyalty_tier", "type": "string"})
    (schemas / "versions" / "touchpoints-value.v3.avsc").write_text(json.dumps(ahead))
    index = json.loads((schemas / "registry.json").read_text())
    index["subjects"][TOUCHPOINT_SUBJECT].append(
        {"version": 3, "id": 4, "file": "versions/touchpoints-value.v3.avsc"}
    )
    (schemas / "registry.json").write_text(json.dumps(index))
    ahead_settings = settings.model_copy(update={"schemas_dir": schemas})
    check = _cli(ahead_settings, "schemas", "check")
    assert check.exit_code == 1, check.output
    assert "INCOMPATIBLE under BACKWARD (registry says INCOMPATIBLE)" in check.output
    assert "loyalty_tier: new field has no default" in check.output
    register = _cli(ahead_settings, "schemas", "register")
    assert register.exit_code == 1 and "REFUSED" in register.output, register.output
    assert client.get_versions(subject) == versions  # nothing was registered


async def _committed(settings: Settings) -> int:
    """What the worker's group committed on the raw topic (sum over partitions)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    return sum(max(m.offset, 0) for tp, m in offsets.items() if tp.topic == settings.topics.raw)


def test_the_registry_going_away_mid_stream_loses_nothing_and_dead_letters_nothing(
    settings: Settings, local_registry: Any
) -> None:
    settings = _with_registry(settings, local_registry.url, schema_registry_timeout_seconds=1.0)
    client = SchemaRegistryClient({"url": local_registry.url})
    remote = RemoteSchemas.from_settings(settings, SchemaRegistry.from_dir(settings.schemas_dir))
    now = int(time.time() * 1000)
    events = generate(20, seed=9, now_ms=now)
    before, during = events[: len(events) // 2], events[len(events) // 2 :]
    first = encode_events(before, ConfluentEncoder(remote))
    # The evolved producer registers now; its messages come while the registry is away,
    # so the worker has never fetched that id when it first sees it.
    second = _evolved_pairs(client, settings, during)
    db = settings.clickhouse_database

    async def scenario() -> None:
        prepare(settings)
        await produce_raw(settings, first)
        async with running(settings) as pipeline:
            assert await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", len(first))
            deadline = time.monotonic() + 30.0  # the first part's offsets commit (1 s interval)
            while (committed_before := await _committed(settings)) < len(first):
                assert time.monotonic() < deadline, committed_before
                await asyncio.sleep(0.5)
            assert committed_before == len(first)
            local_registry.stop()
            try:
                await produce_raw(settings, second)
                await asyncio.sleep(8.0)
                landed = await query(pipeline, f"SELECT count() FROM {db}.touchpoints")
                assert landed[0][0] == len(first)  # waiting, not skipped
                assert "ingest" in pipeline.failing  # /readyz says so
                assert await _committed(settings) == committed_before  # offsets wait too
                dead = await query(pipeline, f"SELECT count() FROM {db}.dead_letters")
                assert dead[0][0] == 0
            finally:
                local_registry.start()
            total = len(first) + len(second)
            landed_all = await wait_for(
                pipeline, f"SELECT count() FROM {db}.touchpoints", total, timeout=60.0
            )
            assert landed_all == total
            ids = {r[0] for r in await query(pipeline, f"SELECT event_id FROM {db}.touchpoints_v")}
            assert ids == {e.record["event_id"] for e in events}
            dead = await query(pipeline, f"SELECT count() FROM {db}.dead_letters")
            assert dead[0][0] == 0
        assert await read_topic(settings, settings.topics.dead_letter, 1, timeout=3.0) == []

    asyncio.run(scenario())
