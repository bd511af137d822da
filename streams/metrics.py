"""Every Prometheus metric of the pipeline, in one place.

Labels are bounded: channel, event type, reason, table, topic. Never a
customer id or any other unbounded value.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "CLICKHOUSE_INSERT_FAILURES",
    "CLICKHOUSE_INSERT_SECONDS",
    "CLICKHOUSE_ROWS",
    "ALERTS",
    "CONSUMER_LAG",
    "CUSTOMER_EVENTS",
    "WEBHOOK_DELIVERIES",
    "IDENTITY_BATCH_SECONDS",
    "STAGE_BATCH_SECONDS",
    "STAGE_INPUT_WAIT_SECONDS",
    "IDENTITY_OUTPUTS",
    "IDENTITY_REFUSALS",
    "LATE_EVENTS",
    "LOG_LINES_SUPPRESSED",
    "DEAD_LETTERS",
    "DEDUPE_BATCH_SECONDS",
    "EVENTS_CONSUMED",
    "EVENT_LAG_SECONDS",
    "INGEST_BATCH_SECONDS",
    "INGEST_REPLAYED",
    "REGISTRY",
    "SCHEMA_REGISTRY_LOOKUPS",
    "SINK_COMMITTED_OFFSET",
    "SINK_COMMITS_REFUSED",
    "STAGE_FAILURES",
    "TABLE_KEYS",
    "TABLE_BYTES",
    "C_HEAP_BYTES",
    "CUSTOMER_DUPLICATES",
    "VALID_EVENTS",
    "render",
]

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "touchpoints_events_consumed_total",
    "Messages read from an input topic.",
    ["topic"],
    registry=REGISTRY,
)
VALID_EVENTS = Counter(
    "touchpoints_valid_events_total",
    "Touchpoints that passed validation, by channel.",
    ["channel"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "touchpoints_dead_letters_total",
    "Messages sent to the dead-letter topic, by reason.",
    ["reason"],
    registry=REGISTRY,
)
INGEST_REPLAYED = Counter(
    "touchpoints_ingest_replayed_events_total",
    "Copies of an event read again from the raw position (partition, offset) its first copy"
    " was taken from (a batch replayed after a crash, a rebalance or a retry; its output was"
    " already delivered): dropped by the dedupe stage, not dead-lettered.",
    registry=REGISTRY,
)
INGEST_BATCH_SECONDS = Histogram(
    "touchpoints_ingest_batch_seconds",
    "Time to process one ingest batch, delivery of its output included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
DEDUPE_BATCH_SECONDS = Histogram(
    "touchpoints_dedupe_batch_seconds",
    "Time to process one batch of the dedupe stage (first copy of an event id wins),"
    " delivery of its output and state included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
EVENT_LAG_SECONDS = Histogram(
    "touchpoints_event_processing_lag_seconds",
    "Event time (occurred_at) to processed by the ingest agent.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
CLICKHOUSE_ROWS = Counter(
    "touchpoints_clickhouse_rows_written_total",
    "Rows inserted into ClickHouse, by table.",
    ["table"],
    registry=REGISTRY,
)
CLICKHOUSE_INSERT_SECONDS = Histogram(
    "touchpoints_clickhouse_insert_seconds",
    "Duration of one batched ClickHouse insert.",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
CLICKHOUSE_INSERT_FAILURES = Counter(
    "touchpoints_clickhouse_insert_failures_total",
    "Failed ClickHouse batch inserts (retried; offsets wait until they succeed).",
    registry=REGISTRY,
)
SINK_COMMITS_REFUSED = Counter(
    "touchpoints_sink_commits_refused_total",
    "Sink commits the consumer group refused after a rebalance (rows read again, idempotent).",
    registry=REGISTRY,
)
SINK_COMMITTED_OFFSET = Gauge(
    "touchpoints_sink_committed_offset",
    "Last offset the ClickHouse sink committed, per topic partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)


CONSUMER_LAG = Gauge(
    "touchpoints_consumer_lag_messages",
    "High watermark minus next offset to read, per consumer (stage), topic and partition.",
    ["stage", "topic", "partition"],
    registry=REGISTRY,
)


STAGE_INPUT_WAIT_SECONDS = Histogram(
    "touchpoints_stage_input_wait_seconds",
    "Per batch and stage: its start minus the Kafka timestamp of its oldest input message"
    " (the time that input spent in the topic, the consumer and the batch wait).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
STAGE_BATCH_SECONDS = Histogram(
    "touchpoints_stage_batch_seconds",
    "Per batch and stage: from its start until it is processed and its output and state"
    " delivered (retries included).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


IDENTITY_BATCH_SECONDS = Histogram(
    "touchpoints_identity_batch_seconds",
    "Time to process one identity batch (ops + outputs delivered).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
IDENTITY_OUTPUTS = Counter(
    "touchpoints_identity_outputs_total",
    "Identity stage outputs by kind (resolved, merge, refusal, identityupdate, erased, split).",
    ["kind"],
    registry=REGISTRY,
)
IDENTITY_REFUSALS = Counter(
    "touchpoints_identity_refusals_total",
    "Links the identity guards refused, by reason (blocked_value, merge_cap, limit).",
    ["reason"],
    registry=REGISTRY,
)
LATE_EVENTS = Counter(
    "touchpoints_late_events_total",
    "Events later than the allowed lateness: kept in touchpoints, not in the windows.",
    registry=REGISTRY,
)


ALERTS = Counter(
    "touchpoints_alerts_total",
    "Alerts raised, by rule and severity.",
    ["rule", "severity"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "touchpoints_webhook_deliveries_total",
    "Webhook deliveries by outcome (ok, retry, dead).",
    ["outcome"],
    registry=REGISTRY,
)


CUSTOMER_EVENTS = Counter(
    "touchpoints_customer_stage_events_total",
    "Resolved events processed by the customer stage (aggregates, 360, detectors).",
    registry=REGISTRY,
)
CUSTOMER_DUPLICATES = Counter(
    "touchpoints_customer_stage_duplicates_total",
    "Resolved events skipped by the customer stage: already applied (an upstream replay).",
    registry=REGISTRY,
)


SCHEMA_REGISTRY_LOOKUPS = Counter(
    "touchpoints_schema_registry_lookups_total",
    "Writer schema ids asked of the Schema Registry (each id once, then cached), by outcome:"
    " found, unknown_schema_id, wrong_subject, incompatible_schema, unavailable.",
    ["outcome"],
    registry=REGISTRY,
)
LOG_LINES_SUPPRESSED = Counter(
    "touchpoints_log_lines_suppressed_total",
    "Log lines held back by the repeat limit (LOG_REPEAT_LIMIT), by top-level logger"
    " (aiokafka, faust, streams, ...); each window's are summarised in one line.",
    ["logger"],
    registry=REGISTRY,
)
STAGE_FAILURES = Counter(
    "touchpoints_stage_failures_total",
    "Batches that failed and are being retried (the partition waits), by stage.",
    ["stage"],
    registry=REGISTRY,
)


TABLE_KEYS = Gauge(
    "touchpoints_table_keys",
    "Keys held locally in each Faust table (this worker's partitions; updated every minute).",
    ["table"],
    registry=REGISTRY,
)


TABLE_BYTES = Gauge(
    "touchpoints_table_bytes",
    "Bytes of the keys and values held locally in each Faust table, in-memory store only"
    " (updated every minute).",
    ["table"],
    registry=REGISTRY,
)
C_HEAP_BYTES = Gauge(
    "touchpoints_c_heap_bytes",
    "The C allocator's heap (glibc mallinfo2): in_use, or free (kept by the allocator; its"
    " whole pages handed back every MALLOC_TRIM_SECONDS); updated at each hand-back.",
    ["state"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)


def metrics_table() -> str:
    """The README's metrics table (``python -m streams.metrics``)."""
    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for collector in REGISTRY._collector_to_names:  # noqa: SLF001 - the registry's own index
        name = getattr(collector, "_name", "")
        kind = getattr(collector, "_type", "")
        shown = f"{name}_total" if kind == "counter" else name
        labels = ", ".join(getattr(collector, "_labelnames", ()))
        doc = getattr(collector, "_documentation", "")
        lines.append(f"| `{shown}` | {kind} | {labels} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from streams.readme import write_section

    write_section(
        Path(__file__).resolve().parents[1] / "README.md", "metrics-table", metrics_table()
    )
