"""Ingest step: bytes -> validated, normalised touchpoint, or a reason to dead-letter.

Pure and Faust-free: ``ingest_message`` returns an outcome value; the agent
routes it. Nothing here raises for bad input.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from streams.ingest.dedupe import BatchHorizon, DedupeStage, Seen
from streams.ingest.normalise import normalise_country, normalise_identifiers
from streams.wire.checked import frame, iter_frames
from streams.wire.codec import AvroCodec, DecodeError, SchemaUnavailableError
from streams.wire.dlq import DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetter, RawMessage, dead_letter
from streams.wire.envelope import MAX_ENVELOPE_BYTES, partition_for
from streams.wire.model import (
    CATALOGUE,
    COMMERCE,
    CONTACT,
    IDENTIFIER_KINDS,
    TouchpointRecord,
)
from streams.wire.valid import pack_valid, read_valid, valid_item

if TYPE_CHECKING:  # typing only: the pure step never reads settings itself
    from streams.settings import Settings

__all__ = [
    "Accepted",
    "BatchResult",
    "CheckResult",
    "DedupeBatch",
    "Deduplicator",
    "IngestPolicy",
    "IngestStage",
    "Reason",
    "Rejected",
    "Seen",
    "ingest_message",
    "anchor_key",
]


class Reason(StrEnum):
    """Machine-readable dead-letter reasons (the ``dlq.reason`` header)."""

    EMPTY_MESSAGE = "empty_message"
    OVERSIZE_MESSAGE = "oversize_message"
    JSON_NOT_AVRO = "json_not_avro"
    TRUNCATED_HEADER = "truncated_header"
    BAD_MAGIC_BYTE = "bad_magic_byte"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    WRONG_SUBJECT = "wrong_subject"
    INCOMPATIBLE_SCHEMA = "incompatible_schema"
    TRUNCATED_BODY = "truncated_body"
    CORRUPT_BODY = "corrupt_body"
    TRAILING_BYTES = "trailing_bytes"
    MISSING_EVENT_ID = "missing_event_id"
    INVALID_EVENT_ID = "invalid_event_id"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    PAYLOAD_MISMATCH = "payload_mismatch"
    INVALID_IDENTIFIER = "invalid_identifier"
    MISSING_IDENTIFIERS = "missing_identifiers"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TOO_MANY_PROPERTIES = "too_many_properties"
    PROPERTY_TOO_LONG = "property_too_long"
    INVALID_VALUE = "invalid_value"
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Accepted:
    record: TouchpointRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


Outcome = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    max_message_bytes: int = 64 * 1024
    max_properties: int = 64
    max_property_value_chars: int = 2048
    max_future_skew_ms: int = 300_000
    max_event_age_ms: int = 90 * 24 * 3600 * 1000
    default_phone_region: str = "GB"
    max_identifier_chars: int = 256
    max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestPolicy:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_properties=settings.max_properties,
            max_property_value_chars=settings.max_property_value_chars,
            max_future_skew_ms=settings.max_future_skew_seconds * 1000,
            max_event_age_ms=settings.max_event_age_seconds * 1000,
            default_phone_region=settings.default_phone_region,
            max_identifier_chars=settings.max_identifier_chars,
            max_dead_letter_bytes=settings.dead_letter_max_bytes,
        )


_JSON_START: Final = (b"{", b"[", b" {", b"\n{")


def ingest_message(
    value: bytes | None,
    codec: AvroCodec,
    policy: IngestPolicy,
    now_ms: int,
    is_blocked: Callable[[str], bool] | None = None,
) -> Outcome:
    """Decode, validate and normalise one message."""
    if not value:
        return Rejected(Reason.EMPTY_MESSAGE, "message value is empty or null")
    if len(value) > policy.max_message_bytes:
        return Rejected(
            Reason.OVERSIZE_MESSAGE,
            f"{len(value)} bytes > limit {policy.max_message_bytes}",
        )
    if value.startswith(_JSON_START):
        return Rejected(Reason.JSON_NOT_AVRO, "payload looks like JSON; expected Confluent Avro")
    try:
        raw: dict[str, Any] = codec.decode(value)
    except DecodeError as exc:
        return Rejected(Reason(exc.reason), exc.detail)
    return validate(raw, policy, now_ms, is_blocked)


_UNPRINTABLE: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Control characters (C0/C1, so terminal escapes), lone surrogates, line/paragraph
separators: never part of an id. Format characters (``Cf``: zero-width space and joiner,
BOM, bidi overrides) are invisible copy-paste debris and are stripped instead."""


def strip_invisible(value: str) -> str:
    """``value`` trimmed, without format (zero-width, bidi) characters."""
    value = value.strip()
    if value.isascii():
        return value
    return "".join(ch for ch in value if unicodedata.category(ch) != "Cf").strip()


def id_problem(name: str, value: str, max_chars: int) -> str | None:
    """Why ``value`` (already ``strip_invisible``-ed) cannot be an id, or None."""
    if len(value) > max_chars:
        return f"{name} has {len(value)} characters > limit {max_chars}"
    if value.isascii() and value.isprintable():
        return None
    for ch in value:
        if unicodedata.category(ch) in _UNPRINTABLE:
            return f"{name} contains the control character U+{ord(ch):04X}"
    return None


def _timestamp_problem(name: str, value: int, policy: IngestPolicy, now_ms: int) -> Rejected | None:
    if value > now_ms + policy.max_future_skew_ms:
        return Rejected(
            Reason.TIMESTAMP_IN_FUTURE,
            f"{name} {value} is {(value - now_ms) // 1000}s ahead of now",
        )
    if value < now_ms - policy.max_event_age_ms:
        return Rejected(
            Reason.TIMESTAMP_TOO_OLD,
            f"{name} {value} is {(now_ms - value) // 86_400_000} days old",
        )
    return None


def validate(
    raw: dict[str, Any],
    policy: IngestPolicy,
    now_ms: int,
    is_blocked: Callable[[str], bool] | None = None,
) -> Outcome:
    """Validate and normalise a decoded record. ``is_blocked`` (the identity stage's
    ``IdentityRules.is_blocked``): an event whose every identifier is blocked would be
    dropped by identity, so it is ``missing_identifiers`` here, with the values named."""
    record: TouchpointRecord = raw  # type: ignore[assignment]  # decoded by the schema
    event_id = record["event_id"].strip()
    if not event_id:
        return Rejected(Reason.MISSING_EVENT_ID, "event_id is empty")
    problem = id_problem("event_id", event_id, policy.max_identifier_chars)
    if problem is None and not event_id.isascii():
        if any(unicodedata.category(ch) == "Cf" for ch in event_id):
            problem = "event_id contains an invisible (format) character"
    if problem:
        return Rejected(Reason.INVALID_EVENT_ID, problem)
    record["event_id"] = event_id

    channel = record["channel"].strip().lower()
    types = CATALOGUE.get(channel)
    if types is None:
        return Rejected(Reason.UNKNOWN_CHANNEL, f"channel {record['channel']!r} is not known")
    record["channel"] = channel
    event_type = record["event_type"].strip().lower()
    if event_type not in types:
        return Rejected(
            Reason.UNKNOWN_EVENT_TYPE, f"event_type {event_type!r} is not known on {channel}"
        )
    record["event_type"] = event_type
    expected = types[event_type]
    payload = record["payload"]
    if expected is not None and (payload is None or payload[0] != expected):
        got = "none" if payload is None else payload[0].rsplit(".", 1)[-1]
        want = expected.rsplit(".", 1)[-1]
        return Rejected(
            Reason.PAYLOAD_MISMATCH, f"{channel}/{event_type} needs a {want} payload, got {got}"
        )

    for name in ("occurred_at", "received_at"):
        late_or_early = _timestamp_problem(name, record[name], policy, now_ms)
        if late_or_early is not None:
            return late_or_early

    props = record["properties"]
    if len(props) > policy.max_properties:
        return Rejected(
            Reason.TOO_MANY_PROPERTIES, f"{len(props)} properties > limit {policy.max_properties}"
        )
    for name, val in props.items():
        if len(val) > policy.max_property_value_chars or len(name) > 256:
            return Rejected(
                Reason.PROPERTY_TOO_LONG,
                f"property {name[:64]!r} has {len(val)} chars > {policy.max_property_value_chars}",
            )

    problem = _invalid_value(record)
    if problem:
        return Rejected(Reason.INVALID_VALUE, problem)

    context = record["context"]
    country = normalise_country(context["country"])
    geo = context["geo"]
    if isinstance(
        geo, tuple
    ):  # fastavro names record branches of unions: ("touchpoints.Geo", {...})
        context["geo"] = geo[1]
    context["country"] = country
    given: dict[str, Any] = record["identifiers"]  # type: ignore[assignment]
    for kind in IDENTIFIER_KINDS:
        value = given.get(kind)
        if value:
            value = given[kind] = strip_invisible(value)
            problem = id_problem(f"identifiers.{kind}", value, policy.max_identifier_chars)
            if problem:
                return Rejected(Reason.INVALID_IDENTIFIER, problem)
    ids = normalise_identifiers(record["identifiers"], country or policy.default_phone_region)
    if not any(ids.values()):
        return Rejected(
            Reason.MISSING_IDENTIFIERS, "no usable identifier (all empty or junk after cleaning)"
        )
    if is_blocked is not None:
        keys = [f"{k}:{v}" for k in IDENTIFIER_KINDS if (v := ids[k])]  # type: ignore[literal-required]
        if all(is_blocked(key) for key in keys):
            shown = ", ".join(key[:80] for key in keys)
            return Rejected(
                Reason.MISSING_IDENTIFIERS,
                f"only blocked identifiers ({shown}): identity would drop the event",
            )
    record["identifiers"] = ids
    return Accepted(record)


def _invalid_value(record: TouchpointRecord) -> str | None:
    geo: Any = record["context"]["geo"]
    if isinstance(geo, tuple):
        geo = geo[1]
    if geo is not None and not (-90.0 <= geo["lat"] <= 90.0 and -180.0 <= geo["lon"] <= 180.0):
        return f"geo ({geo['lat']}, {geo['lon']}) is not on Earth"
    payload = record["payload"]
    if payload is None:
        return None
    kind, body = payload
    if kind == COMMERCE:
        amount = body["amount"]  # type: ignore[typeddict-item]
        if not math.isfinite(amount) or abs(amount) > 1e12:
            return f"amount {amount!r} is not a sane number"
        currency = body["currency"]  # type: ignore[typeddict-item]
        if len(currency) != 3 or not currency.isalpha():
            return f"currency {currency!r} is not ISO 4217"
        body["currency"] = currency.upper()  # type: ignore[typeddict-unknown-key]
    elif kind == CONTACT:
        csat = body["csat"]  # type: ignore[typeddict-item]
        nps = body["nps"]  # type: ignore[typeddict-item]
        if csat is not None and not 1 <= csat <= 5:
            return f"csat {csat} outside 1..5"
        if nps is not None and not 0 <= nps <= 10:
            return f"nps {nps} outside 0..10"
        durations: dict[str, Any] = body  # type: ignore[assignment]
        for field in ("wait_seconds", "handle_seconds"):
            secs = durations[field]
            if secs is not None and not (math.isfinite(secs) and 0 <= secs < 7 * 86400):
                return f"{field} {secs!r} is not a sane duration"
    elif kind.endswith("SocialEvent"):
        sentiment = body["sentiment"]  # type: ignore[typeddict-item]
        if sentiment is not None and not (math.isfinite(sentiment) and -1 <= sentiment <= 1):
            return f"sentiment {sentiment!r} outside -1..1"
    return None


def anchor_key(record: TouchpointRecord, is_blocked: Callable[[str], bool] | None = None) -> str:
    """The strongest usable identifier on the event, ``kind:value``: where identity starts.

    Blocked values (``IdentityRules.is_blocked``) are skipped, exactly as the identity
    stage skips them, so the anchor here is the LINK op's routing key there.
    """
    ids = record["identifiers"]
    for kind in IDENTIFIER_KINDS:
        value = ids[kind]  # type: ignore[literal-required]
        if value:
            key = f"{kind}:{value}"
            if is_blocked is None or not is_blocked(key):
                return key
    return f"event:{record['event_id']}"


@dataclass(frozen=True, slots=True)
class DedupeBatch:
    """The ids first seen in one batch of one partition: one durable state entry.

    ``offsets[i]`` is the source offset ``event_ids[i]`` was read at (empty for entries
    written before offsets were kept): the same id read again at the *same* offset is the
    batch replayed after a crash or rebalance, not a producer sending it twice.
    """

    key: str
    seen_ms: int
    event_ids: tuple[str, ...]
    offsets: tuple[int, ...] = ()


class Deduplicator(BatchHorizon):
    """Event ids seen on one partition within a horizon, remembered per batch.

    State is written once per batch (key ``"<partition>:<first offset>"``), not
    once per event, and expires a batch at a time: two changelog records per
    batch instead of two per event. The caller persists what ``remember``
    returns and deletes what ``expire`` returns (a Faust table in the worker;
    a dict in tests) and rebuilds an instance from those entries with
    ``restore`` after a restart or rebalance.
    """

    # _ids: event id -> (batch key, offset or -1); _batches: key -> DedupeBatch

    def restore(self, batches: list[DedupeBatch]) -> None:
        for batch in sorted(batches, key=lambda b: b.seen_ms):
            self._index(batch)

    def _index(self, batch: DedupeBatch) -> None:
        self._batches[batch.key] = batch
        offsets = batch.offsets or (-1,) * len(batch.event_ids)
        for event_id, offset in zip(batch.event_ids, offsets, strict=True):
            self._ids[event_id] = (batch.key, offset)

    def is_duplicate(self, event_id: str, pending: set[str]) -> bool:
        """Seen within the horizon, or earlier in the batch being built (``pending``)."""
        return event_id in self._ids or event_id in pending

    def check(self, event_id: str, offset: int, pending: set[str]) -> Seen:
        """``pending``: ids taken earlier in the batch being built (always other offsets)."""
        if event_id in pending:
            return Seen.DUPLICATE
        seen = self._ids.get(event_id)
        if seen is None:
            return Seen.NEW
        return Seen.REPLAY if seen[1] == offset else Seen.DUPLICATE

    def remember(
        self, key: str, event_ids: list[str], now_ms: int, offsets: list[int] | None = None
    ) -> DedupeBatch | None:
        if not event_ids:
            return None
        batch = DedupeBatch(key, now_ms, tuple(event_ids), tuple(offsets or ()))
        self._index(batch)
        return batch


@dataclass(frozen=True, slots=True)
class ValidOut:
    """A normalised touchpoint for the valid topic, routed by its anchor identifier."""

    anchor: str
    record: TouchpointRecord


@dataclass(slots=True)
class CheckResult:
    """One raw batch through ingest: frames for ``touchpoints.checked`` (by the partition
    of their event id), dead letters, and the accepted events' count."""

    checked: dict[int, list[bytes]]
    dead: list[DeadLetter]
    accepted: int = 0


@dataclass(slots=True)
class BatchResult:
    valid: list[ValidOut]
    dead: list[DeadLetter]
    state_puts: list[tuple[int, str, dict[str, Any]]]  # (partition, key, value)
    state_deletes: list[tuple[int, str]]
    replayed: int = 0  # copies read again from the raw position they were first taken at


def from_json(record: TouchpointRecord) -> TouchpointRecord:
    """A record read back from JSON (envelopes): the payload union is a tuple again."""
    payload = record["payload"]
    if payload is not None:
        record["payload"] = (payload[0], payload[1])
    return record


class IngestStage:
    """Batch step of the ingest agent: decode, validate, normalise (``check``), stateless.

    ``check`` returns frames for ``touchpoints.checked``, partitioned by event id, that the
    de-duplication stage (``streams.ingest.dedupe``) forwards — first copy wins — to
    ``touchpoints.valid`` by anchor. ``process`` runs both in one process (tests, the
    chained simulation), with the de-duplication state of every event-id partition here.
    No Faust, no I/O.
    """

    def __init__(
        self,
        codec: AvroCodec,
        policy: IngestPolicy,
        dedupe_horizon_ms: int,
        is_blocked: Callable[[str], bool] | None = None,
        partitions: int = 1,
    ) -> None:
        self.codec = codec
        self.policy = policy
        self.is_blocked = is_blocked
        self.partitions = partitions
        self.dedupe = DedupeStage(dedupe_horizon_ms, policy.max_dead_letter_bytes)
        self._next_offset: dict[int, int] = {}  # ``process``: hand-offs numbered per partition

    def check(self, messages: list[RawMessage], now_ms: int) -> CheckResult:
        result = CheckResult({}, [])
        n = self.partitions
        for msg in messages:
            try:
                outcome = ingest_message(
                    msg.value, self.codec, self.policy, now_ms, self.is_blocked
                )
            except SchemaUnavailableError:
                raise  # not the message's fault: the batch waits and is retried whole
            except Exception as exc:  # noqa: BLE001 - never lose an event, never crash
                outcome = Rejected(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, Accepted):
                record = outcome.record
                event_id = record["event_id"]
                anchor = anchor_key(record, self.is_blocked)
                result.checked.setdefault(partition_for(event_id, n), []).append(
                    frame(
                        event_id,
                        record["channel"],
                        partition_for(anchor, n),
                        valid_item(anchor, record),
                        msg.topic,
                        msg.partition,
                        msg.offset,
                        msg.timestamp_ms,
                        msg.key,
                        msg.value or b"",
                    )
                )
                result.accepted += 1
            else:
                result.dead.append(
                    dead_letter(
                        msg,
                        outcome.reason,
                        outcome.detail,
                        now_ms,
                        self.policy.max_dead_letter_bytes,
                    )
                )
        return result

    def restore(self, partition: int, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """De-duplication state of event-id partition ``partition`` (``process`` only)."""
        self.dedupe.restore(partition, entries)
        offsets = [int(key.split(":", 1)[1]) for key, _ in entries]
        self._next_offset[partition] = max(offsets, default=-1) + 1

    def process(self, messages: list[RawMessage], now_ms: int) -> BatchResult:
        """``check`` then de-duplication, in one process: each partition's frames are one
        hand-off, numbered after the restored ones as the checked topic's offsets would be."""
        checked = self.check(messages, now_ms)
        handoffs = []
        for partition, frames in sorted(checked.checked.items()):
            offset = self._next_offset.get(partition, 0)
            self._next_offset[partition] = offset + 1
            handoffs.append((partition, offset, b"".join(frames)))
        deduped = self.dedupe.process(handoffs, now_ms)
        # in the order of ``messages``, as one ingest agent would have sent them
        index = {(m.partition, m.offset): i for i, m in enumerate(messages)}
        first: dict[str, int] = {}
        for _, _, value in handoffs:
            for f in iter_frames(value):
                first.setdefault(f.event_id, index[f.origin])
        valid = sorted(
            (
                ValidOut(item.anchor, from_json(item.decoded_record()))  # type: ignore[arg-type]
                for items in deduped.valid.values()
                for message in pack_valid(items, MAX_ENVELOPE_BYTES)
                for item in read_valid(message)
            ),
            key=lambda v: first[v.record["event_id"]],
        )
        dead = sorted([*checked.dead, *deduped.dead], key=lambda d: index[_position(d.headers)])
        return BatchResult(valid, dead, deduped.state_puts, deduped.state_deletes, deduped.replayed)


def _position(headers: list[tuple[str, bytes]]) -> tuple[int, int]:
    meta = dict(headers)
    return (int(meta["dlq.source.partition"]), int(meta["dlq.source.offset"]))
