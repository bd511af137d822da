"""Schema Registry logic without a registry: what each answer of the registry means for a
message (the real registry is in tests/integration/test_schema_registry.py)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import SecretStr

from streams import metrics
from streams.adapters.schema_registry import (
    RegistryWriters,
    RemoteSchemas,
    client_config,
    schema_text,
    subject_for,
)
from streams.ingest.stage import IngestPolicy, IngestStage, Reason, Rejected, ingest_message
from streams.settings import Compatibility, Settings, SubjectNameStrategy
from streams.sim.samples import valid_template
from streams.wire.codec import (
    TOUCHPOINT_SUBJECT,
    DecodeError,
    SchemaRegistry,
    SchemaUnavailableError,
)
from streams.wire.dlq import RawMessage

LOCAL = SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas")
OURS = LOCAL.latest(TOUCHPOINT_SUBJECT).schema
SUBJECT = "touchpoints.raw-value"
NOW = 1_800_000_000_000


@dataclass
class _Version:
    subject: str
    version: int


class FakeClient:
    """The two calls RegistryWriters makes, answering from a dict; ``down`` = unreachable."""

    def __init__(self) -> None:
        self.schemas: dict[int, tuple[Schema, list[_Version]]] = {}
        self.down: Exception | None = None
        self.calls = 0

    def add(
        self, schema_id: int, schema: dict[str, Any], *subjects: str, kind: str = "AVRO"
    ) -> None:
        versions = [_Version(s, 1) for s in subjects]
        self.schemas[schema_id] = (Schema(schema_text(schema), kind), versions)

    def get_schema_versions(self, schema_id: int) -> list[_Version]:
        self.calls += 1
        if self.down is not None:
            raise self.down
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, f"schema {schema_id} not found")
        return self.schemas[schema_id][1]

    def get_schema(self, schema_id: int) -> Schema:
        return self.schemas[schema_id][0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _writers(client: FakeClient, clock: Clock | None = None) -> RegistryWriters:
    clock = clock or Clock()
    return RegistryWriters(client, negative_ttl_s=60.0, clock=clock, sleep=clock.sleep)


def _remote(client: FakeClient) -> RemoteSchemas:
    remote = RemoteSchemas(
        client, LOCAL, Settings().topics, SubjectNameStrategy.TOPIC, Compatibility.BACKWARD
    )
    remote.writers = _writers(client)
    return remote


def _message(schema_id: int, record: dict[str, Any] | None = None, schema: Any = None) -> bytes:
    """A message as a producer with ``schema`` (default: ours) writes it under ``schema_id``."""
    from streams.wire.codec import AvroCodec

    body = AvroCodec(LOCAL, TOUCHPOINT_SUBJECT).encode(record or valid_template(NOW))[5:]
    if schema is not None:
        import io

        from fastavro import parse_schema, schemaless_writer

        buf = io.BytesIO()
        schemaless_writer(buf, parse_schema(schema), record)
        body = buf.getvalue()
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def test_settings_map_to_confluent_client_keys_and_the_client_accepts_them() -> None:
    settings = Settings(
        schema_registry_url="https://sr.example:8081,https://sr2.example:8081",
        schema_registry_basic_auth_user_info=SecretStr("svc:s3cret"),
        schema_registry_ssl_ca_location="/etc/ssl/certs/ca-certificates.crt",
    )
    conf = client_config(settings)
    assert conf["url"] == settings.schema_registry_url
    assert conf["basic.auth.user.info"] == "svc:s3cret"
    assert conf["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "ssl.key.location" not in conf  # unset settings are left out
    SchemaRegistryClient(conf)  # no unknown keys (it raises on those); no I/O here


def test_subject_name_strategies_match_confluents() -> None:
    assert subject_for(SubjectNameStrategy.TOPIC, "p.touchpoints.raw", OURS) == (
        "p.touchpoints.raw-value"
    )
    assert subject_for(SubjectNameStrategy.RECORD, "p.touchpoints.raw", OURS) == (
        "touchpoints.Touchpoint"
    )
    assert subject_for(SubjectNameStrategy.TOPIC_RECORD, "x", OURS) == "x-touchpoints.Touchpoint"


def test_a_found_id_is_fetched_once_and_decodes_to_the_reader_schema() -> None:
    client = FakeClient()
    client.add(1047, LOCAL.versions(TOUCHPOINT_SUBJECT)[0].schema, SUBJECT)  # a v1 producer
    codec = _remote(client).input_codec(TOUCHPOINT_SUBJECT)
    record = {k: v for k, v in valid_template(NOW).items() if k != "consent"}
    v1 = LOCAL.versions(TOUCHPOINT_SUBJECT)[0].schema
    values = [_message(1047, record, v1) for _ in range(50)]
    codec.prefetch(values)
    decoded = [codec.decode(v) for v in values]
    assert client.calls == 1
    assert decoded[0]["consent"] is None  # the reader's default: v1 had no consent
    assert decoded[0]["event_id"] == "tpl-0001"


def test_an_unknown_id_is_confirmed_then_dead_lettered_and_remembered_for_a_while() -> None:
    client, clock = FakeClient(), Clock()
    remote = _remote(client)
    remote.writers = _writers(client, clock)
    codec = remote.input_codec(TOUCHPOINT_SUBJECT)
    values = [_message(999)] * 10
    codec.prefetch(values)
    assert clock.slept == [0.5] and client.calls == 2  # asked again after half a second
    outcomes = [ingest_message(v, codec, IngestPolicy(), NOW) for v in values]
    assert {o.reason for o in outcomes if isinstance(o, Rejected)} == {Reason.UNKNOWN_SCHEMA_ID}
    assert len(outcomes) == 10 and client.calls == 2
    clock.now += 61  # after the TTL it is asked again (an id registered meanwhile decodes)
    client.add(999, OURS, SUBJECT)
    assert codec.decode(values[0])["event_id"] == "tpl-0001"


def _lookups(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "touchpoints_schema_registry_lookups_total", {"outcome": outcome}
    )
    return value or 0.0


def test_an_id_of_another_subject_is_wrong_subject() -> None:
    client = FakeClient()
    client.add(7, OURS, "orders-value")
    codec = _remote(client).input_codec(TOUCHPOINT_SUBJECT)
    before = _lookups("wrong_subject")
    outcome = ingest_message(_message(7), codec, IngestPolicy(), NOW)
    assert isinstance(outcome, Rejected) and outcome.reason is Reason.WRONG_SUBJECT
    assert "orders-value" in outcome.detail
    assert _lookups("wrong_subject") == before + 1


def test_a_schema_the_reader_cannot_read_is_incompatible_schema() -> None:
    client = FakeClient()
    changed = copy.deepcopy(OURS)
    next(f for f in changed["fields"] if f["name"] == "event_id")["type"] = "long"
    client.add(8, changed, SUBJECT)
    client.add(9, {"type": "object"}, SUBJECT, kind="JSON")
    codec = _remote(client).input_codec(TOUCHPOINT_SUBJECT)
    for schema_id in (8, 9):
        outcome = ingest_message(_message(schema_id), codec, IngestPolicy(), NOW)
        assert isinstance(outcome, Rejected), schema_id
        assert outcome.reason is Reason.INCOMPATIBLE_SCHEMA, outcome


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError("connection refused"),
        TimeoutError("read timed out"),
        SchemaRegistryError(503, 50301, "unavailable"),
        SchemaRegistryError(401, 40101, "unauthorized"),
        SchemaRegistryError(404, 0, "no such endpoint (a proxy, a wrong URL path)"),
    ],
    ids=["refused", "timeout", "503", "401", "404-not-40403"],
)
def test_no_answer_is_unavailable_never_a_dead_letter(failure: Exception) -> None:
    client = FakeClient()
    client.add(5, OURS, SUBJECT)
    client.down = failure
    codec = _remote(client).input_codec(TOUCHPOINT_SUBJECT)
    stage = IngestStage(codec, IngestPolicy(), dedupe_horizon_ms=0)
    message = RawMessage("touchpoints.raw", 0, 0, b"k", _message(5), None)
    before = _lookups("unavailable")
    with pytest.raises(SchemaUnavailableError):
        codec.prefetch([message.value])
    assert _lookups("unavailable") == before + 1
    with pytest.raises(SchemaUnavailableError):  # the batch fails whole: nothing dead-lettered
        stage.process([message], NOW)
    client.down = None  # the registry is back: the same message decodes
    assert stage.process([message], NOW).valid


def test_the_local_registry_refuses_as_before() -> None:
    with pytest.raises(DecodeError) as unknown:
        LOCAL.writer(999, TOUCHPOINT_SUBJECT)
    assert unknown.value.reason == "unknown_schema_id"
    with pytest.raises(DecodeError) as wrong:
        LOCAL.writer(LOCAL.latest("alerts-value").schema_id, TOUCHPOINT_SUBJECT)
    assert wrong.value.reason == "wrong_subject"


def test_registered_text_is_one_spelling_per_schema() -> None:
    assert schema_text(OURS) == schema_text(json.loads(json.dumps(OURS, indent=2)))


def test_schemas_check_says_when_the_registry_does_not_answer() -> None:
    import socket

    from click.testing import CliRunner

    from streams.cli import main

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = CliRunner().invoke(main, ["schemas", "check"], env={"SCHEMA_REGISTRY_URL": url})
    assert result.exit_code == 1
    assert "no answer from the schema registry" in result.output
