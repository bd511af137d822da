"""The pipeline's topology, declared once: topics, tables, stages, consumer groups, sink routes.

Everything else reads this module: topic names (``Settings.topics``), topic creation
(``streams.adapters.kafka.topic_specs``), the Faust tables (``streams.runtime.app``), the
ClickHouse sink's routes (``streams.adapters.sink.default_routes``), lag probes (eval, bench,
tests), the README's topology section and ``touchpoints topology``. Pure data: no Faust, no
settings import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "SINK",
    "SINK_ROUTES",
    "STAGES",
    "TABLES",
    "TOPICS",
    "Retention",
    "SinkRoute",
    "Stage",
    "Table",
    "Topic",
    "TopicNames",
    "consumer_groups",
    "render",
    "topic",
]


class Retention(StrEnum):
    """Which retention policy a topic gets when we create it (``streams.adapters.kafka``)."""

    RAW = "raw"  # RAW_RETENTION_MS
    DEAD_LETTER = "dead_letter"  # DEAD_LETTER_RETENTION_MS
    COMPACTED = "compacted"  # cleanup.policy=compact


@dataclass(frozen=True, slots=True)
class Topic:
    attr: str  # attribute on TopicNames (code refers to topics by it)
    name: str  # Kafka name, without TOPIC_PREFIX
    key: str
    value: str
    retention: Retention
    outside: str = ""  # who outside the pipeline writes or reads it (empty: internal)

    @property
    def public(self) -> bool:
        return bool(self.outside)


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # Faust table name; changelog ``<APP_ID>-<name>-changelog``
    stage: str
    holds: str


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    group: str  # "worker" = the Faust app's group (APP_ID); "sink" = the sink's own group
    inputs: tuple[str, ...]  # Topic.attr
    outputs: tuple[str, ...]  # Topic.attr
    tables: tuple[str, ...]  # Table.name
    does: str


@dataclass(frozen=True, slots=True)
class SinkRoute:
    topic: str  # Topic.attr
    tables: tuple[str, ...]  # ClickHouse tables its rows land in


TOPICS: tuple[Topic, ...] = (
    Topic(
        "raw",
        "touchpoints.raw",
        "producer's choice",
        "Avro Touchpoint (Confluent framing)",
        Retention.RAW,
        outside="producers (web/app SDKs, contact centre, social listening, payments)",
    ),
    Topic(
        "dead_letter",
        "touchpoints.dlq",
        "original key",
        "original bytes, reason in headers",
        Retention.DEAD_LETTER,
        outside="operators: touchpoints dlq show / replay",
    ),
    Topic(
        "checked",
        "touchpoints.checked",
        "- (explicit partition: event id)",
        "frames of {valid item, its partition, raw position + bytes}",
        Retention.RAW,
    ),
    Topic(
        "valid",
        "touchpoints.valid",
        "- (explicit partition)",
        "items of {anchor, event id, time, identifier keys} + the record's JSON",
        Retention.RAW,
    ),
    Topic(
        "identity_ops",
        "identity.ops",
        "- (explicit partition)",
        "envelope of identity protocol ops",
        Retention.RAW,
    ),
    Topic(
        "resolved",
        "touchpoints.resolved",
        "- (explicit partition)",
        "envelope of events + customer, merge notices, hand-overs",
        Retention.RAW,
    ),
    Topic(
        "identity_changes",
        "identity.changes",
        "-",
        "envelope of identity updates, merges, refusals, erasures",
        Retention.RAW,
    ),
    Topic(
        "merges",
        "identity.merges",
        "absorbed customer id",
        "JSON merge record",
        Retention.COMPACTED,
        outside="anyone following old customer ids to survivors",
    ),
    Topic(
        "review",
        "identity.review",
        "identifier",
        "JSON refusal (merge cap hit)",
        Retention.RAW,
        outside="people reviewing shared identifiers",
    ),
    Topic(
        "aggregates",
        "aggregates.rows",
        "-",
        "envelope of aggregate / 360 rows",
        Retention.RAW,
    ),
    Topic(
        "alerts",
        "alerts",
        "customer id",
        "Avro Alert (subject alerts-value)",
        Retention.RAW,
        outside="alert subscribers, touchpoints alerts tail",
    ),
    Topic(
        "webhook_dead_letter",
        "alerts.webhook-dlq",
        "alert id",
        "JSON: a webhook delivery that failed for good",
        Retention.RAW,
        outside="operators",
    ),
)

TABLES: tuple[Table, ...] = (
    Table("event-dedupe", "dedupe", "event ids taken (+ raw position) per partition, per batch"),
    Table("identity", "identity", "identifier -> customer label; customer -> members"),
    Table("customers", "customers", "aggregate partials, profiles, moved ids, windows, 360"),
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "worker",
        inputs=("raw",),
        outputs=("checked", "dead_letter"),
        tables=(),
        does="decode, validate, normalise (stateless)",
    ),
    Stage(
        "dedupe",
        "worker",
        inputs=("checked",),
        outputs=("valid", "dead_letter"),
        tables=("event-dedupe",),
        does="first copy of an event id wins; replays dropped, later copies dead-lettered",
    ),
    Stage(
        "identity",
        "worker",
        inputs=("valid", "identity_ops"),
        outputs=("identity_ops", "resolved", "identity_changes", "merges", "review"),
        tables=("identity",),
        does="partitioned identity graph: stamp each event with its customer",
    ),
    Stage(
        "customers",
        "worker",
        inputs=("resolved",),
        outputs=("resolved", "alerts", "aggregates", "webhook_dead_letter"),
        tables=("customers",),
        does="rolling aggregates, customer 360, detectors -> alerts (+ webhooks)",
    ),
    Stage(
        "sink",
        "sink",
        inputs=("resolved", "dead_letter", "identity_changes", "aggregates", "alerts"),
        outputs=(),
        tables=(),
        does="batched ClickHouse inserts; commits only what ClickHouse accepted",
    ),
)

SINK = next(s for s in STAGES if s.name == "sink")

SINK_ROUTES: tuple[SinkRoute, ...] = (
    SinkRoute("resolved", ("touchpoints",)),
    SinkRoute("dead_letter", ("dead_letters",)),
    SinkRoute(
        "identity_changes",
        ("identity_map", "customer_merges", "identity_refusals", "(erasure deletes)"),
    ),
    SinkRoute("aggregates", ("cx_partials", "alert_partials", "customer_360")),
    SinkRoute("alerts", ("alerts",)),
)

_BY_ATTR = {t.attr: t for t in TOPICS}


def topic(attr: str) -> Topic:
    """The declared topic ``attr`` (KeyError for a topic the topology does not have)."""
    return _BY_ATTR[attr]


class TopicNames:
    """Topic names derived from one prefix, so a test or tenant gets its own set.

    One attribute per declared topic (``raw``, ``valid``, ``dead_letter`` ...)."""

    raw: str
    checked: str
    valid: str
    dead_letter: str
    identity_ops: str
    resolved: str
    identity_changes: str
    merges: str
    review: str
    aggregates: str
    alerts: str
    webhook_dead_letter: str

    def __init__(self, prefix: str) -> None:
        for t in TOPICS:
            setattr(self, t.attr, f"{prefix}{t.name}")

    def of(self, attr: str) -> str:
        return str(getattr(self, attr))


def consumer_groups(
    prefix: str, app_id: str, sink_group_id: str, *, with_sink: bool = True
) -> dict[str, list[str]]:
    """Every consumer group of a deployment and the (prefixed) topics it consumes."""
    names = TopicNames(prefix)
    group_ids = {"worker": app_id, "sink": sink_group_id}
    out: dict[str, list[str]] = {}
    for stage in STAGES:
        if stage.group == "sink" and not with_sink:
            continue
        topics = out.setdefault(group_ids[stage.group], [])
        for attr in stage.inputs:
            if names.of(attr) not in topics:
                topics.append(names.of(attr))
    return out


def render() -> str:
    """The topology as text: what ``touchpoints topology`` prints and the README shows."""
    width = max(len(t.name) for t in TOPICS)
    lines = ["stages (consumer group: worker = APP_ID, sink = APP_ID-clickhouse-sink)"]
    for s in STAGES:
        ins = ", ".join(topic(a).name for a in s.inputs)
        outs = ", ".join(topic(a).name for a in s.outputs) or "ClickHouse"
        lines.append(f"  [{s.name}] ({s.group}) {s.does}")
        lines.append(f"      in:  {ins}")
        lines.append(f"      out: {outs}")
        if s.tables:
            lines.append(f"      tables: {', '.join(s.tables)}")
    lines.append("tables (Faust, changelog <APP_ID>-<table>-changelog, compacted)")
    for tb in TABLES:
        lines.append(f"  {tb.name:<14} [{tb.stage}] {tb.holds}")
    lines.append("topics (prefixed by TOPIC_PREFIX; every topic has TOPIC_PARTITIONS partitions)")
    for t in TOPICS:
        writers = "+".join(s.name for s in STAGES if t.attr in s.outputs)
        readers = "+".join(s.name for s in STAGES if t.attr in s.inputs)
        flow = f"{writers or '(outside)'} -> {readers or '(outside)'}"
        lines.append(
            f"  {t.name:<{width}}  {t.retention.value:<11} {flow:<28} {t.outside}".rstrip()
        )
    lines.append("sink routes (topic -> ClickHouse tables)")
    for r in SINK_ROUTES:
        lines.append(f"  {topic(r.topic).name:<{width}}  -> {', '.join(r.tables)}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    if "--readme" in sys.argv:
        from streams.readme import write_section

        readme = Path(__file__).resolve().parent.parent / "README.md"
        write_section(readme, "topology", f"```\n{render()}\n```")
    else:
        print(render())
