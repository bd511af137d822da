"""Confluent Schema Registry: writer schemas by id, our output schemas registered.

Used only when ``SCHEMA_REGISTRY_URL`` is set; otherwise ``schemas/registry.json`` is the
registry (``streams.codec.SchemaRegistry``). The HTTP client is confluent-kafka's
``SchemaRegistryClient`` (the same client, settings and subject-name strategies as
Confluent's serializers); it caches every schema it fetched by id.

What happens to a message, by what the registry says about its writer id:

* found, under the subject of the topic (``SCHEMA_REGISTRY_SUBJECT_NAME_STRATEGY``), readable
  as our schema: decoded, with Avro schema resolution to the project's (reader) schema;
* not found (HTTP 404, error 40403, asked twice half a second apart):
  dead-lettered ``unknown_schema_id``;
* found under other subjects only: dead-lettered ``wrong_subject``;
* found, but not Avro, or not readable as our schema: dead-lettered ``incompatible_schema``;
* no answer (unreachable, timeout, 5xx, 401/403, any other error): ``SchemaUnavailableError``;
  the batch waits and is retried, nothing is dead-lettered and its offsets are not committed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streams import metrics
from streams.settings import Compatibility, SubjectNameStrategy
from streams.wire.codec import (
    ALERT_SUBJECT,
    TOUCHPOINT_SUBJECT,
    AvroCodec,
    DecodeError,
    RegisteredSchema,
    SchemaRegistry,
    SchemaUnavailableError,
    backward_compatibility_problems,
    parse_writer_schema,
)

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = [
    "ConfluentEncoder",
    "OUTPUT_SUBJECTS",
    "PUBLIC_SUBJECTS",
    "RegistryWriters",
    "RemoteSchemas",
    "SubjectReport",
    "client_config",
    "reader_codec",
    "record_name",
    "schema_text",
]

log = logging.getLogger(__name__)

# Our subjects (schemas/registry.json) -> the topic (TopicNames attribute) they describe.
PUBLIC_SUBJECTS: dict[str, str] = {TOUCHPOINT_SUBJECT: "raw", ALERT_SUBJECT: "alerts"}
# The ones the pipeline writes: registered at start-up.
OUTPUT_SUBJECTS: tuple[str, ...] = (ALERT_SUBJECT,)

_NOT_FOUND = 40403  # Confluent error code: schema (id) not found
_STRATEGIES: dict[SubjectNameStrategy, Callable[..., str | None]] = {
    SubjectNameStrategy.TOPIC: topic_subject_name_strategy,
    SubjectNameStrategy.RECORD: record_subject_name_strategy,
    SubjectNameStrategy.TOPIC_RECORD: topic_record_subject_name_strategy,
}


def client_config(settings: Settings) -> dict[str, Any]:
    """``SchemaRegistryClient`` configuration from the settings (Confluent's own key names)."""
    conf: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_seconds,
        # One quick retry inside the client; the pipeline's own retry is the batch's.
        "max.retries": 1,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 1000,
        "cache.capacity": 10_000,
    }
    user_info = settings.schema_registry_basic_auth_user_info.get_secret_value()
    if user_info:
        conf["basic.auth.user.info"] = user_info
    for key, value in (
        ("ssl.ca.location", settings.schema_registry_ssl_ca_location),
        ("ssl.certificate.location", settings.schema_registry_ssl_certificate_location),
        ("ssl.key.location", settings.schema_registry_ssl_key_location),
        ("ssl.key.password", settings.schema_registry_ssl_key_password.get_secret_value()),
    ):
        if value:
            conf[key] = value
    return conf


def record_name(schema: dict[str, Any]) -> str:
    """The full name of a record schema (``touchpoints.Touchpoint``)."""
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def schema_text(schema: dict[str, Any]) -> str:
    """The text we register and serialize with: one spelling, so one id per schema."""
    return json.dumps(schema, separators=(",", ":"))


def subject_for(strategy: SubjectNameStrategy, topic: str, schema: dict[str, Any]) -> str:
    """The registry subject of ``topic``'s values written with ``schema``."""
    ctx = SerializationContext(topic, MessageField.VALUE)
    return str(_STRATEGIES[strategy](ctx, record_name(schema)))


class RegistryWriters:
    """``codec.WriterSchemas`` over a Schema Registry: writer schemas by id, checked against
    the subject. Found schemas are kept for good (the client caches them too); an unknown
    id or a wrong subject is remembered for ``negative_ttl_s`` (a flood of bad ids asks
    the registry once per id per interval, at most ``max_negative`` ids remembered)."""

    def __init__(
        self,
        client: Any,
        *,
        negative_ttl_s: float = 60.0,
        confirm_unknown_s: float = 0.5,
        max_negative: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._negative_ttl_s = negative_ttl_s
        self._confirm_unknown_s = confirm_unknown_s
        self._max_negative = max_negative
        self._clock = clock
        self._sleep = sleep
        self._found: dict[tuple[int, str], RegisteredSchema] = {}
        self._refused: OrderedDict[tuple[int, str], tuple[float, DecodeError]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0  # registry round trips for ids (what the cache saves)

    def prefetch(self, schema_ids: set[int], subject: str) -> None:
        """Ask for every id not known yet; an id the registry says it does not have is asked
        again once after ``confirm_unknown_s`` (a replica that has not caught up yet)."""
        unknown: list[int] = []
        for schema_id in sorted(schema_ids):
            if self._known(schema_id, subject):
                continue
            try:
                if self._lookup(schema_id, subject, final=False) is None:
                    unknown.append(schema_id)
            except DecodeError:
                pass  # remembered: ``writer`` refuses it, the message is dead-lettered
        if unknown:
            self._sleep(self._confirm_unknown_s)
            for schema_id in unknown:
                with contextlib.suppress(DecodeError):
                    self._lookup(schema_id, subject, final=True)

    def writer(self, schema_id: int, subject: str) -> RegisteredSchema:
        key = (schema_id, subject)
        found = self._found.get(key)
        if found is not None:
            return found
        refused = self._refused.get(key)
        if refused is not None and refused[0] > self._clock():
            raise DecodeError(refused[1].reason, refused[1].detail)
        result = self._lookup(schema_id, subject, final=True)
        assert result is not None  # final lookups return or raise  # noqa: S101
        return result

    def _known(self, schema_id: int, subject: str) -> bool:
        key = (schema_id, subject)
        if key in self._found:
            return True
        refused = self._refused.get(key)
        return refused is not None and refused[0] > self._clock()

    def _lookup(self, schema_id: int, subject: str, *, final: bool) -> RegisteredSchema | None:
        """Fetch and check one id. Raises ``SchemaUnavailableError``; a refusal is remembered and
        raised as ``DecodeError`` when ``final``, else an unknown id returns None."""
        try:
            self.fetches += 1
            versions = self._client.get_schema_versions(schema_id)
            mine = [v.version for v in versions if v.subject == subject]
            schema = self._client.get_schema(schema_id) if mine else None
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code == _NOT_FOUND:
                if not final:
                    return None
                self._refuse(schema_id, subject, "unknown_schema_id", "not in the registry")
            metrics.SCHEMA_REGISTRY_LOOKUPS.labels("unavailable").inc()
            raise SchemaUnavailableError(f"schema id {schema_id}: registry answered {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors of any kind: no answer
            metrics.SCHEMA_REGISTRY_LOOKUPS.labels("unavailable").inc()
            raise SchemaUnavailableError(
                f"schema id {schema_id}: registry unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if schema is None:
            subjects = sorted({v.subject for v in versions})
            self._refuse(
                schema_id, subject, "wrong_subject", f"belongs to {', '.join(subjects)}, not here"
            )
        if (schema.schema_type or "AVRO") != "AVRO":
            self._refuse(
                schema_id, subject, "incompatible_schema", f"is a {schema.schema_type} schema"
            )
        if schema.references:
            self._refuse(schema_id, subject, "incompatible_schema", "has schema references")
        try:
            raw = json.loads(schema.schema_str)
            parsed = parse_writer_schema(raw)
        except Exception as exc:  # noqa: BLE001 - any parse failure means it cannot decode
            self._refuse(schema_id, subject, "incompatible_schema", f"does not parse: {exc}")
        found = RegisteredSchema(subject, max(mine), schema_id, raw, parsed)
        with self._lock:
            self._found[(schema_id, subject)] = found
        metrics.SCHEMA_REGISTRY_LOOKUPS.labels("found").inc()
        return found

    def _refuse(self, schema_id: int, subject: str, reason: str, why: str) -> NoReturn:
        error = DecodeError(reason, f"schema id {schema_id} {why} (subject {subject})")
        metrics.SCHEMA_REGISTRY_LOOKUPS.labels(reason).inc()
        with self._lock:
            self._refused[(schema_id, subject)] = (self._clock() + self._negative_ttl_s, error)
            self._refused.move_to_end((schema_id, subject))
            while len(self._refused) > self._max_negative:
                self._refused.popitem(last=False)
        raise error


@dataclass(frozen=True, slots=True)
class SubjectReport:
    """``touchpoints schemas check`` for one of our subjects."""

    ours: str  # our subject name (schemas/registry.json)
    subject: str  # the registry's subject
    registered_id: int | None  # our newest schema's id there, if registered
    versions: int  # how many versions the subject has
    level: str  # its compatibility level (subject's, else the registry's global)
    registry_compatible: bool | None  # the registry's verdict (None: nothing to compare)
    problems: tuple[str, ...]  # our own check under the configured level

    @property
    def ok(self) -> bool:
        return self.registry_compatible is not False and not self.problems


class RemoteSchemas:
    """The project's schemas against a Schema Registry (one client, shared)."""

    def __init__(
        self,
        client: Any,
        local: SchemaRegistry,
        topics: Any,
        strategy: SubjectNameStrategy,
        compatibility: Compatibility,
    ) -> None:
        self.client = client
        self.local = local
        self.topics = topics
        self.strategy = strategy
        self.compatibility = compatibility
        self.writers = RegistryWriters(client)

    @classmethod
    def from_settings(cls, settings: Settings, local: SchemaRegistry) -> RemoteSchemas:
        return cls(
            SchemaRegistryClient(client_config(settings)),
            local,
            settings.topics,
            settings.schema_registry_subject_name_strategy,
            settings.schema_registry_compatibility,
        )

    def subject(self, ours: str) -> str:
        """The registry subject of our subject ``ours`` (by its topic and the strategy)."""
        topic = getattr(self.topics, PUBLIC_SUBJECTS[ours])
        return subject_for(self.strategy, topic, self.local.latest(ours).schema)

    def input_codec(self, ours: str) -> AvroCodec:
        """Decodes what producers wrote (any registered writer version) into our schema."""
        return AvroCodec(self.local, ours, writers=self.writers, wire_subject=self.subject(ours))

    def register(self, ours: str) -> int:
        """Register our newest schema under its subject with our compatibility level
        (idempotent: the same schema gets the same id). Raises ``SchemaUnavailableError`` when
        the registry does not answer, ``SchemaRegistryError`` when it refuses (409)."""
        subject = self.subject(ours)
        schema = Schema(schema_text(self.local.latest(ours).schema), "AVRO")
        try:
            self.client.set_compatibility(subject, self.compatibility.value)
            return int(self.client.register_schema(subject, schema))
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422):
                raise
            raise SchemaUnavailableError(f"registering {subject}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors of any kind
            raise SchemaUnavailableError(
                f"registering {subject}: {type(exc).__name__}: {exc}"
            ) from exc

    def output_codec(self, ours: str) -> AvroCodec:
        """Registers ``ours`` (blocking) and returns a codec writing the registry's id."""
        return AvroCodec(self.local, ours, schema_id=self.register(ours))

    def check(self, ours: str) -> SubjectReport:
        """Compare our newest schema with the subject: registered? compatible under our
        level (the registry's verdict and our own check against the versions it holds)?"""
        subject = self.subject(ours)
        mine = self.local.latest(ours).schema
        schema = Schema(schema_text(mine), "AVRO")
        versions = self._versions(subject)
        level = self._level(subject)
        registered_id: int | None = None
        verdict: bool | None = None
        problems: list[str] = []
        if versions:
            try:
                registered_id = int(self.client.lookup_schema(subject, schema).schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise
            verdict = bool(self.client.test_compatibility(subject, schema))
            transitive = self.compatibility.value.endswith("_TRANSITIVE")
            for version in versions if transitive else versions[-1:]:
                theirs = json.loads(self.client.get_version(subject, version).schema.schema_str)
                problems += _problems(self.compatibility, theirs, mine, version)
        return SubjectReport(
            ours, subject, registered_id, len(versions), level, verdict, tuple(problems)
        )

    def _versions(self, subject: str) -> list[int]:
        try:
            return sorted(int(v) for v in self.client.get_versions(subject))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return []
            raise

    def _level(self, subject: str) -> str:
        try:
            return str(self.client.get_compatibility(subject))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise
        return f"{self.client.get_compatibility()} (global)"


def _problems(level: Compatibility, theirs: Any, mine: Any, version: int) -> list[str]:
    """Our own compatibility check of ``mine`` against one registered version."""
    found: list[str] = []
    if level.value.startswith(("BACKWARD", "FULL")):
        found += [
            f"data written with v{version} unreadable: {p}"
            for p in backward_compatibility_problems(theirs, mine)
        ]
    if level.value.startswith(("FORWARD", "FULL")):
        found += [
            f"readers on v{version} cannot read ours: {p}"
            for p in backward_compatibility_problems(mine, theirs)
        ]
    return found


def reader_codec(settings: Settings, ours: str) -> AvroCodec:
    """A codec that reads one of our topics: ids of schemas/registry.json, or with
    ``SCHEMA_REGISTRY_URL`` the registry's ids (``prefetch`` them off the event loop)."""
    local = SchemaRegistry.from_dir(settings.schemas_dir)
    if not settings.schema_registry_url:
        return AvroCodec(local, ours)
    return RemoteSchemas.from_settings(settings, local).input_codec(ours)


class ConfluentEncoder:
    """Writes our records as a real producer does: confluent-kafka's ``AvroSerializer``
    (auto-registering each version of our subject under the strategy's subject, writing the
    registry's id). ``encode(record, schema_id)`` takes the registry.json id of the version
    to write with (None: the newest), so ``generator.encode_events`` can use it as is."""

    def __init__(self, remote: RemoteSchemas, ours: str = TOUCHPOINT_SUBJECT) -> None:
        from confluent_kafka.schema_registry.avro import AvroSerializer

        topic = getattr(remote.topics, PUBLIC_SUBJECTS[ours])
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        conf = {
            "auto.register.schemas": True,
            "subject.name.strategy": _STRATEGIES[remote.strategy],
        }
        self._by_local_id = {
            v.schema_id: AvroSerializer(remote.client, schema_text(v.schema), conf=conf)
            for v in remote.local.versions(ours)
        }
        self._newest = remote.local.latest(ours).schema_id

    def encode(self, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        serialize = self._by_local_id[self._newest if schema_id is None else schema_id]
        value = serialize(record, self._ctx)
        if value is None:  # only for a None record
            raise ValueError("nothing to encode")
        return bytes(value)
