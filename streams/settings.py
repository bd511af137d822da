"""The one settings object. Only this module reads the environment.

Every field maps to an environment variable of the same name in upper case
(``kafka_bootstrap_servers`` -> ``KAFKA_BOOTSTRAP_SERVERS``). The README's
settings table is checked against this class by a test.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams import topology
from streams.topology import TopicNames

__all__ = ["Compatibility", "SecurityProtocol", "Settings", "SubjectNameStrategy", "TopicNames"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class SubjectNameStrategy(StrEnum):
    """How a topic's Avro value maps to a registry subject (Confluent serializers' names)."""

    TOPIC = "TopicNameStrategy"  # <topic>-value
    RECORD = "RecordNameStrategy"  # <record full name>
    TOPIC_RECORD = "TopicRecordNameStrategy"  # <topic>-<record full name>


class Compatibility(StrEnum):
    """Schema Registry compatibility levels."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class Settings(BaseSettings):
    """Runtime configuration. Immutable once built."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # --- identity of the deployment
    app_id: str = Field(
        "touchpoints", description="Faust app id: consumer group and changelog topic prefix."
    )
    topic_prefix: str = Field("", description="Prefix for every topic name (tenancy, tests).")

    # --- Kafka
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port].")
    kafka_security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL."
    )
    kafka_sasl_mechanism: str = Field("PLAIN", description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.")
    kafka_sasl_username: str = Field("", description="SASL user.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (secret).")
    kafka_ssl_cafile: str = Field("", description="CA bundle to verify the brokers (TLS).")
    kafka_ssl_certfile: str = Field("", description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str = Field("", description="Client key (mutual TLS).")
    kafka_session_timeout_seconds: float = Field(
        30.0,
        ge=6.0,
        le=300.0,
        description="Consumer-group session timeout: how soon a crashed worker's partitions move.",
    )
    topic_partitions: int = Field(8, ge=1, description="Partitions of every topic we create.")
    topic_replication_factor: int = Field(1, ge=1, description="Use 3 in production.")
    raw_retention_ms: int = Field(7 * 24 * 3600 * 1000, description="Retention of the raw topic.")
    dead_letter_retention_ms: int = Field(30 * 24 * 3600 * 1000, description="DLQ retention.")

    # --- ClickHouse
    clickhouse_url: str = Field(
        "", description="http(s)://user:pass@host:8123 of a server; empty = embedded engine."
    )
    clickhouse_username: str = Field("default", description="ClickHouse user (server mode).")
    clickhouse_password: SecretStr = Field(
        SecretStr(""), description="ClickHouse password (secret)."
    )
    clickhouse_database: str = Field(
        "touchpoints", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Database of all tables."
    )
    clickhouse_chdb_path: Path = Field(
        _REPO_ROOT / ".local" / "chdb", description="Data directory of the embedded engine."
    )
    clickhouse_verify_tls: bool = Field(True, description="Verify the server certificate (https).")

    # --- ingest
    schemas_dir: Path = Field(
        _REPO_ROOT / "schemas",
        description="The project's schemas; without SCHEMA_REGISTRY_URL its registry.json is"
        " the registry.",
    )

    # --- Confluent Schema Registry (names as Confluent clients name them)
    schema_registry_url: str = Field(
        "",
        description="Schema Registry URL(s), comma-separated (schema.registry.url); empty ="
        " schemas/registry.json.",
    )
    schema_registry_basic_auth_user_info: SecretStr = Field(
        SecretStr(""), description="user:password for HTTP basic auth (basic.auth.user.info)."
    )
    schema_registry_ssl_ca_location: str = Field(
        "", description="CA bundle to verify the registry (ssl.ca.location)."
    )
    schema_registry_ssl_certificate_location: str = Field(
        "", description="Client certificate, mutual TLS (ssl.certificate.location)."
    )
    schema_registry_ssl_key_location: str = Field(
        "", description="Client key, mutual TLS (ssl.key.location)."
    )
    schema_registry_ssl_key_password: SecretStr = Field(
        SecretStr(""), description="Password of the client key (ssl.key.password)."
    )
    schema_registry_subject_name_strategy: SubjectNameStrategy = Field(
        SubjectNameStrategy.TOPIC,
        description="TopicNameStrategy, RecordNameStrategy or TopicRecordNameStrategy: the"
        " subject a writer id must belong to, and the subject alerts are registered under.",
    )
    schema_registry_compatibility: Compatibility = Field(
        Compatibility.BACKWARD,
        description="Level set on our subjects when registering; what `touchpoints schemas"
        " check` tests against.",
    )
    schema_registry_timeout_seconds: float = Field(
        5.0, gt=0, description="Per request; a registry slower than that counts as unreachable."
    )
    ingest_batch_size: int = Field(2000, ge=1, description="Events per ingest batch.")
    ingest_batch_seconds: float = Field(
        0.01,
        ge=0,
        description="How long a stage that was idle waits after a batch's first message for"
        " more (a busy stage takes what queued up during its last batch, at once).",
    )
    delivery_lanes: bool = Field(
        True,
        description="Hand the agents' messages over in lanes, a fetch at a time, instead of"
        " through Faust's per-message conductor, event and ack path (streams/runtime/lanes.py);"
        " false: Faust's path, as before.",
    )
    lane_max_mb: int = Field(
        32,
        ge=1,
        description="Message bytes a stage's lane holds before its partitions are paused in the"
        " fetcher (at 3/4) and delivery waits (full); internal envelopes are up to 512 KiB each.",
    )
    producer_linger_ms: int = Field(
        5,
        ge=0,
        description="How long the worker's producer waits to fill a request (each stage awaits"
        " its deliveries before the next step).",
    )
    consumer_fetch_max_wait_ms: int = Field(
        1500,
        ge=0,
        description="How long the broker may hold the worker's fetch when the partitions in it"
        " have nothing new (Faust's fixed value is 1500).",
    )
    shutdown_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="A graceful stop taking longer ends the worker anyway (keep it below"
        " the pod's terminationGracePeriodSeconds).",
    )
    revoke_wait_seconds: float = Field(
        20.0, gt=0, description="On a rebalance, how long in-flight batches may finish."
    )
    max_message_bytes: int = Field(
        64 * 1024,
        ge=256,
        description="Larger messages are rejected. At most (max.message.bytes of the internal"
        " topics - 16 KiB) / 7, 147,457 with the broker's default: an accepted message travels"
        " as its bytes plus its JSON form; the worker refuses to start above it.",
    )
    dead_letter_max_bytes: int = Field(
        512 * 1024,
        ge=4096,
        description="A dead letter never exceeds this (keep it under the broker's"
        " message.max.bytes): larger originals are truncated, with their size and SHA-256 in"
        " headers.",
    )
    max_properties: int = Field(64, ge=0, description="Max entries in the properties map.")
    max_property_value_chars: int = Field(2048, ge=1, description="Longest property value.")
    max_future_skew_seconds: int = Field(
        300, ge=0, description="occurred_at and received_at ahead of now."
    )
    max_event_age_seconds: int = Field(
        90 * 24 * 3600, ge=60, description="occurred_at and received_at behind now."
    )
    max_identifier_chars: int = Field(
        256, ge=16, le=4096, description="Longest event id and identifier (after trimming)."
    )
    default_phone_region: str = Field("GB", description="Region for phones without +code.")
    dedupe_horizon_seconds: int = Field(
        3600,
        ge=0,
        description="Event ids remembered for de-duplication by the dedupe stage (first copy"
        " wins) and in the customer stage (0 = off).",
    )

    # --- identity, detection and aggregates
    rules_file: Path | None = Field(
        _REPO_ROOT / "deploy" / "rules.yaml",
        description="Detector rules and webhook subscribers (YAML); empty = built-in defaults.",
    )
    identity_rules: Path | None = Field(
        None, description="YAML with identity guard limits/caps/blocked values (default: built-in)."
    )
    identity_undo_through: bool = Field(
        True,
        description="When a value is found shared (a household), split off what joined the"
        " person through it, unless a strong id vouched for it.",
    )
    identity_cache_keys: int = Field(
        50_000,
        ge=0,
        description="Identity states kept decoded between batches, each beside the stored bytes"
        " it stands for (~1 KiB of memory each; README Performance); 0 = decode every read.",
    )
    aggregate_lateness_seconds: int = Field(
        300, ge=0, description="Allowed lateness of events for the rolling windows."
    )
    aggregate_pane_events: int = Field(
        20_000, ge=0, description="Input block size that bounds open aggregate state."
    )
    customer_cache_entries: int = Field(
        4096,
        ge=0,
        description="Decoded table values (behaviour profiles, customer-360 states, moved ids)"
        " the customer stage keeps between batches, least recently used dropped first"
        " (0 = off): a customer seen again is not decoded and rebuilt from JSON. Bounds the"
        " memory: ~15 KB a full profile, ~1 KB a 360 state (README Performance).",
    )

    # --- ClickHouse sink
    sink_enabled: bool = Field(
        False,
        description="Also run the ClickHouse sink inside this worker (default: its own"
        " process, `touchpoints sink`).",
    )
    sink_batch_rows: int = Field(50_000, ge=1, description="Flush when a batch has this many.")
    sink_flush_seconds: float = Field(
        5.0,
        gt=0,
        description="Flush at least this often (how far ClickHouse may lag behind the topics;"
        " each flush costs an insert per table, ~3-15 ms of CPU each with the embedded engine).",
    )

    # --- worker
    web_host: str = Field("0.0.0.0", description="HTTP bind address.")  # noqa: S104 - pods
    web_port: int = Field(
        6066, ge=0, le=65535, description="HTTP: /metrics, /healthz, /readyz; 0 = off."
    )
    data_dir: Path = Field(_REPO_ROOT / ".local" / "faust", description="Faust table data.")
    table_store: str = Field("memory://", description="memory:// or rocksdb://")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR.")
    log_format: str = Field("json", pattern="^(json|text)$", description="json or text.")
    log_pii: bool = Field(False, description="Log identifiers unmasked (emails, phones).")
    log_repeat_limit: int = Field(
        5,
        ge=0,
        description="Lines of one kind (logger, level, message template) per window; the rest"
        " are counted and summarised in one line (0 = no limit).",
    )
    log_repeat_window_seconds: float = Field(
        10.0, gt=0, description="The window of LOG_REPEAT_LIMIT."
    )
    gc_freeze: bool = Field(
        True,
        description="gc.freeze() after start-up and each recovery: long-lived objects leave"
        " the cyclic collector's scans.",
    )
    gc_threshold: int = Field(
        50_000,
        ge=0,
        description="First-generation threshold of the cyclic collector (0 = Python's default"
        " 700).",
    )
    batch_max_bytes: int = Field(
        0,
        ge=0,
        description="If > 0, a batch taken from a stage's input is processed in consecutive"
        " slices of at most this many message bytes (at least one message each): bounds what"
        " one batch holds decoded in a backlog (an internal message carries up to 512 KiB of"
        " events), at a CPU cost in catch-up (README Performance: 4 MiB measured +18 %).",
    )
    malloc_trim_seconds: float = Field(
        30.0,
        ge=0,
        description="Every this many seconds the worker hands the C allocator's free pages back"
        " to the system (glibc malloc_trim; 0 = never).",
    )

    @field_validator("identity_rules", "rules_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value in ("", "None") else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _strip_scheme(cls, value: str) -> str:
        return value.removeprefix("kafka://")

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def sink_group_id(self) -> str:
        return f"{self.app_id}-clickhouse-sink"

    def changelog_topic(self, table: str) -> str:
        """Faust's changelog topic of ``table`` (one of ``TABLES``)."""
        return f"{self.app_id}-{table}-changelog"


TABLES: tuple[str, ...] = tuple(t.name for t in topology.TABLES)
"""The worker's Faust tables (declared in ``streams.topology``), each with a compacted changelog."""


def settings_table() -> str:
    """The README's settings table (``python -m streams.settings``)."""
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "(secret)" if default.get_secret_value() else "(empty)"
        elif isinstance(default, Path):
            shown = (
                f"`{default.relative_to(_REPO_ROOT)}`"
                if default.is_relative_to(_REPO_ROOT)
                else f"`{default}`"
            )
        elif default == "":
            shown = "(empty)"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from streams.readme import write_section

    write_section(_REPO_ROOT / "README.md", "settings-table", settings_table())
