"""ClickHouse: one client factory, versioned migrations, and row mapping.

``connect`` gives a clickhouse-connect client either to a server over HTTP(S)
(``CLICKHOUSE_URL``) or to the embedded engine (chdb) at a local path. Both
speak the same client API. The embedded engine can be open in one process
only, so exactly one process of a deployment runs the sink (``SINK_ENABLED``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast

import orjson

from streams.settings import Settings
from streams.wire.dlq import parse_dead_letter_headers
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord

__all__ = [
    "ClickHouse",
    "Migration",
    "TOUCHPOINT_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "STORED_ORIGINAL_BYTES",
    "connect",
    "dead_letter_row",
    "stored_original",
    "load_migrations",
    "migrate",
    "touchpoint_row",
]

log = logging.getLogger(__name__)


class ClickHouse(Protocol):
    """The part of clickhouse-connect's client we use (server and chdb alike)."""

    def command(self, *args: Any, **kwargs: Any) -> Any: ...
    def query(self, *args: Any, **kwargs: Any) -> Any: ...
    def insert(self, *args: Any, **kwargs: Any) -> Any: ...
    def create_insert_context(self, *args: Any, **kwargs: Any) -> Any: ...
    def close(self) -> None: ...


def connect(settings: Settings) -> ClickHouse:
    import clickhouse_connect

    if settings.clickhouse_url:
        client: ClickHouse = clickhouse_connect.get_client(
            dsn=settings.clickhouse_url,
            username=settings.clickhouse_username,
            password=settings.clickhouse_password.get_secret_value(),
            verify=settings.clickhouse_verify_tls,
        )
    else:
        settings.clickhouse_chdb_path.mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(
            interface="chdb", path=str(settings.clickhouse_chdb_path.resolve())
        )
    return client


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str


def load_migrations() -> list[Migration]:
    out: list[Migration] = []
    folder = resources.files("streams.adapters") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text()
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        # A statement ends with ';' at the end of a line (comments may contain ';').
        statements = tuple(s.strip() for s in re.split(r";[ \t]*(?:\n|$)", body) if s.strip())
        version = int(entry.name.split("_", 1)[0])
        checksum = hashlib.sha256(text.encode()).hexdigest()[:16]
        out.append(Migration(version, entry.name, statements, checksum))
    return out


def migrate(client: ClickHouse, database: str) -> list[str]:
    """Apply pending migrations in order; idempotent. Returns the names applied."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version "
        "COMMENT 'Migrations applied to this database (managed by touchpoints migrate)'"
    )
    done = {
        int(row[0]): row[1]
        for row in client.query(
            f"SELECT version, checksum FROM {database}.schema_migrations"
        ).result_rows
    }
    applied: list[str] = []
    for migration in load_migrations():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                log.warning("migration %s changed after it was applied", migration.name)
            continue
        for statement in migration.statements:
            client.command(statement.replace("{db}", database))
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration.name)
        log.info("applied migration %s", migration.name)
    return applied


TOUCHPOINT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "channel",
    "event_type",
    "occurred_at",
    "received_at",
    "ingested_at",
    "source",
    "identity_key",
    "customer_id_at_ingest",
    *IDENTIFIER_KINDS,  # one column per identifier kind, in the record's order
    "country",
    "lat",
    "lon",
    "city",
    "ip",
    "user_agent",
    "payload_type",
    "session_id",
    "success",
    "error_code",
    "amount",
    "currency",
    "order_id",
    "transaction_id",
    "merchant",
    "payment_status",
    "medium",
    "queue",
    "wait_seconds",
    "handle_seconds",
    "resolved",
    "is_complaint",
    "csat",
    "nps",
    "sentiment",
    "payload",
    "properties",
    "consent",
    "kafka_partition",
    "kafka_offset",
)

_PAYLOAD_KIND = {
    "touchpoints.WebEvent": "web",
    "touchpoints.MobileEvent": "mobile",
    "touchpoints.SocialEvent": "social",
    "touchpoints.ContactCentreEvent": "contact_centre",
    "touchpoints.CommerceEvent": "commerce",
}


def touchpoint_row(
    record: TouchpointRecord,
    identity_key: str,
    partition: int,
    offset: int,
    ingested_ms: int,
    customer_id: str = "",
) -> list[Any]:
    """One ``touchpoints`` row, in ``TOUCHPOINT_COLUMNS`` order."""
    by_kind = cast(Mapping[str, str | None], record["identifiers"])
    ctx = record["context"]
    geo = ctx["geo"]
    kind, body = record["payload"] or ("", {})
    p: dict[str, Any] = body  # type: ignore[assignment]
    amount = p.get("amount")
    return [
        record["event_id"],
        record["channel"],
        record["event_type"],
        record["occurred_at"],
        record["received_at"],
        ingested_ms,
        record["source"] or "",
        identity_key,
        customer_id,
        *(by_kind[kind] or "" for kind in IDENTIFIER_KINDS),
        ctx["country"] or "",
        geo["lat"] if geo else None,
        geo["lon"] if geo else None,
        (geo["city"] if geo else None) or "",
        ctx["ip"] or "",
        ctx["user_agent"] or "",
        _PAYLOAD_KIND.get(kind, ""),
        p.get("session_id") or "",
        p.get("success"),
        p.get("error_code") or "",
        None if amount is None else round(float(amount), 4),
        p.get("currency") or "",
        p.get("order_id") or "",
        p.get("transaction_id") or "",
        p.get("merchant") or "",
        p.get("status") or "",
        p.get("medium") or "",
        p.get("queue") or "",
        p.get("wait_seconds"),
        p.get("handle_seconds"),
        p.get("resolved"),
        p.get("is_complaint"),
        p.get("csat"),
        p.get("nps"),
        p.get("sentiment"),
        orjson.dumps(body).decode() if kind else "",
        record["properties"],
        record["consent"] or "",
        partition,
        offset,
    ]


DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "source_topic",
    "source_partition",
    "source_offset",
    "reason",
    "detail",
    "failed_at",
    "size_bytes",
    "original",
    "truncated",
    "original_sha256",
)

STORED_ORIGINAL_BYTES = 64 * 1024
"""``dead_letters.original`` keeps this much of a value; the topic has the rest."""


def stored_original(
    value: bytes, truncated: bool = False, sha256: str = ""
) -> tuple[bytes, bool, str]:
    """``(original, truncated, original_sha256)`` for a ``dead_letters`` row: the first
    ``STORED_ORIGINAL_BYTES`` of ``value``; ``truncated`` when that is not all of the
    original (or ``value`` is itself a cut copy); the SHA-256 of the whole original
    (``sha256`` as a cut copy's headers give it, else computed)."""
    cut = len(value) > STORED_ORIGINAL_BYTES
    digest = sha256 if truncated and sha256 else hashlib.sha256(value).hexdigest()
    return value[:STORED_ORIGINAL_BYTES], truncated or cut, digest


def dead_letter_row(
    value: bytes | None, headers: list[tuple[str, bytes]] | None, now_ms: int = 0
) -> list[Any]:
    """A ``dead_letters`` row; headers a foreign writer got wrong read as 0/empty, never raise."""
    meta = parse_dead_letter_headers(headers)
    original = value or b""
    stored, truncated, sha256 = stored_original(
        original, meta.get("dlq.truncated") == "true", meta.get("dlq.original.sha256", "")
    )
    return [
        meta.get("dlq.source.topic", ""),
        _header_int(meta, "dlq.source.partition", 0, 2**16 - 1),  # UInt16
        _header_int(meta, "dlq.source.offset", 0, 2**63 - 1),
        meta.get("dlq.reason", "unknown"),
        meta.get("dlq.detail", ""),
        _header_int(meta, "dlq.failed_at", now_ms, _MAX_DATETIME64_MS),
        _header_int(meta, "dlq.original.size", len(original), 2**32 - 1),  # UInt32
        stored,
        truncated,
        sha256,
    ]


_MAX_DATETIME64_MS = 10_413_792_000_000  # 2300-01-01: past DateTime64(3)'s range


def _header_int(meta: dict[str, str], name: str, default: int, top: int) -> int:
    try:
        number = int(meta.get(name, default))
    except ValueError:
        return default
    return number if 0 <= number <= top else default
