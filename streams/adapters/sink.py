"""The ClickHouse sink: a Kafka consumer group that batches rows and commits after insert.

Shape (after quix-streams' sinks): ``ClickHouseSink`` collects rows per table
(``add``), and ``flush`` writes each table's rows in one insert. The
``SinkService`` consumes the pipeline's output topics with its own consumer
group, flushes by size or time, and commits a partition's offsets only after
the rows they cover are in ClickHouse. A failed insert is retried with backoff,
never skipped: the partition simply does not advance. On rebalance it flushes
before giving partitions up. Writes are idempotent (ReplacingMergeTree keys +
insert de-duplication tokens), so the at-least-once replay after a crash
creates no duplicates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from mode import Service

from streams import metrics
from streams.adapters.clickhouse import (
    DEAD_LETTER_COLUMNS,
    TOUCHPOINT_COLUMNS,
    ClickHouse,
    dead_letter_row,
    migrate,
    touchpoint_row,
)
from streams.adapters.kafka import consumer_security
from streams.adapters.schema_registry import reader_codec
from streams.customers.detect import ALERT_COLUMNS as DETECT_ALERT_COLUMNS
from streams.customers.detect import Alert, alert_row
from streams.customers.items import ItemKind
from streams.customers.rows import AGGREGATE_COLUMNS, ALERT_COLUMNS, CUSTOMER_360_COLUMNS
from streams.customers.stage import decode_row
from streams.identity.graph import (
    Erased,
    IdentityUpdate,
    Merge,
    Refusal,
    output_from_json,
    output_to_json,
)
from streams.ingest.stage import from_json
from streams.settings import Settings
from streams.topology import SINK_ROUTES
from streams.wire.codec import ALERT_SUBJECT, AvroCodec, SchemaUnavailableError
from streams.wire.dlq import DEFAULT_MAX_DEAD_LETTER_BYTES, DeadLetter, RawMessage, dead_letter
from streams.wire.envelope import unpack

__all__ = [
    "TABLE_COLUMNS",
    "ClickHouseSink",
    "RowMapper",
    "SinkService",
    "SourceMessage",
    "TableBatch",
    "default_routes",
]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TableBatch:
    table: str
    columns: tuple[str, ...]
    rows: list[list[Any]] = field(default_factory=list)
    spans: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def add(self, row: list[Any], topic: str, partition: int, offset: int) -> None:
        self.extend([row], topic, partition, offset)

    def extend(self, rows: list[list[Any]], topic: str, partition: int, offset: int) -> None:
        """The rows of one source message (its span is noted once, not per row)."""
        self.rows += rows
        first, _ = self.spans.get((topic, partition), (offset, offset))
        self.spans[(topic, partition)] = (first, offset)

    def token(self) -> str:
        """Same source span -> same token: an identical replay is dropped by ClickHouse."""
        span = ",".join(f"{t}/{p}:{a}-{b}" for (t, p), (a, b) in sorted(self.spans.items()))
        return hashlib.sha256(f"{self.table}|{span}".encode()).hexdigest()

    def clear(self) -> None:
        self.rows.clear()
        self.spans.clear()


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """One consumed message, as a row mapper reads it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    partition: int
    offset: int
    now_ms: int


RowMapper = Callable[[SourceMessage], Iterable[tuple[str, list[Any]]]]
"""A consumed message -> its (table, row) pairs."""


def _resolved_rows(message: SourceMessage) -> Iterable[tuple[str, list[Any]]]:
    """Touchpoints, stamped with the customer they resolved to (merge notices skipped)."""
    assert message.value is not None
    partition, offset, now_ms = message.partition, message.offset, message.now_ms
    for item in unpack(message.value):
        if item["t"] != ItemKind.EVENT:
            continue
        record = from_json(item["r"])
        row = touchpoint_row(record, item["a"], partition, offset, now_ms, item["c"])
        yield "touchpoints", row


def _identity_rows(message: SourceMessage) -> Iterable[tuple[str, list[Any]]]:
    assert message.value is not None
    for item in unpack(message.value):
        out = output_from_json(item)
        if isinstance(out, IdentityUpdate):
            if out.customer is not None:  # erased identifiers are deleted, not rewritten
                kind = out.identifier.split(":", 1)[0]
                yield "identity_map", [out.identifier, kind, out.customer, out.ts, out.version, 0]
        elif isinstance(out, Merge):
            yield (
                "customer_merges",
                [
                    out.id,
                    out.survivor,
                    out.absorbed,
                    out.via,
                    out.event_id,
                    list(out.identifiers),
                    out.ts,
                ],
            )
        elif isinstance(out, Refusal):
            evidence = orjson.dumps(output_to_json(out)).decode()
            customers = [c for c in (*out.customers, out.survivor, out.absorbed) if c]
            yield (
                "identity_refusals",
                [
                    out.id,
                    out.reason,
                    out.identifier or "",
                    sorted(set(customers)),
                    out.event_id,
                    evidence,
                    out.ts,
                ],
            )
        elif isinstance(out, Erased):
            yield ERASE, [sorted({out.customer, *out.customers})]


def _aggregate_rows(message: SourceMessage) -> Iterable[tuple[str, list[Any]]]:
    assert message.value is not None
    for item in unpack(message.value):
        yield decode_row(item)


def _dead_letter_rows(message: SourceMessage) -> Iterable[tuple[str, list[Any]]]:
    yield "dead_letters", dead_letter_row(message.value, message.headers, message.now_ms)


ERASE = "__erase__"
"""Pseudo-table: rows are lists of customer ids whose data is deleted after the inserts."""

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "touchpoints": TOUCHPOINT_COLUMNS,
    "dead_letters": DEAD_LETTER_COLUMNS,
    "identity_map": ("identifier", "kind", "customer_id", "updated_at", "version", "erased"),
    "customer_merges": (
        "merge_id",
        "survivor",
        "absorbed",
        "via_identifier",
        "event_id",
        "identifiers",
        "merged_at",
    ),
    "identity_refusals": (
        "refusal_id",
        "reason",
        "identifier",
        "customers",
        "event_id",
        "evidence",
        "refused_at",
    ),
    "cx_partials": AGGREGATE_COLUMNS,
    "alert_partials": ALERT_COLUMNS,
    "customer_360": CUSTOMER_360_COLUMNS,
    "alerts": DETECT_ALERT_COLUMNS,
}


def _alert_rows(codec: AvroCodec) -> RowMapper:
    def rows(message: SourceMessage) -> Iterable[tuple[str, list[Any]]]:
        assert message.value is not None
        yield "alerts", alert_row(cast(Alert, codec.decode(message.value)))

    return rows


def default_routes(settings: Settings, alerts: AvroCodec | None = None) -> dict[str, RowMapper]:
    """Which topic feeds which ClickHouse table(s): the topology's sink routes."""
    alerts = alerts or reader_codec(settings, ALERT_SUBJECT)
    mappers: dict[str, RowMapper] = {
        "resolved": _resolved_rows,
        "dead_letter": _dead_letter_rows,
        "identity_changes": _identity_rows,
        "aggregates": _aggregate_rows,
        "alerts": _alert_rows(alerts),
    }
    return {settings.topics.of(route.topic): mappers[route.topic] for route in SINK_ROUTES}


def erase_statements(database: str, customers: list[str]) -> list[str]:
    """Delete everything of these customers (GDPR erasure), table by table."""
    ids = ", ".join("'" + c.replace("\\", "\\\\").replace("'", "\\'") + "'" for c in customers)
    db = database
    identifiers = f"SELECT identifier FROM {db}.identity_map WHERE customer_id IN ({ids})"
    return [
        f"DELETE FROM {db}.touchpoints WHERE customer_id_at_ingest IN ({ids})"
        f" OR identity_key IN ({identifiers})",
        f"DELETE FROM {db}.identity_refusals WHERE hasAny(customers, [{ids}])",
        f"DELETE FROM {db}.customer_merges WHERE survivor IN ({ids}) OR absorbed IN ({ids})",
        f"DELETE FROM {db}.customer_360 WHERE customer_id IN ({ids})",
        f"DELETE FROM {db}.alerts WHERE customer_id IN ({ids})",
        f"DELETE FROM {db}.identity_map WHERE customer_id IN ({ids})",
    ]


UNREADABLE_OUTPUT = "unreadable_output"
"""Dead-letter reason: a message on a topic the sink reads that its route cannot turn into rows
(a foreign writer, a corrupt or truncated record). The sink goes on; the bytes go to the DLQ."""
UNREADABLE_DEAD_LETTER = "unreadable_dead_letter"
"""A message on the dead-letter topic itself whose headers cannot be read: stored in
``dead_letters`` as it is (sending it to the DLQ again would loop)."""


class ClickHouseSink:
    """Rows per table; ``flush`` runs in the ClickHouse thread (blocking client).

    A message its route cannot read never stops the sink: it becomes a dead letter
    (``rejected``, sent to ``dead_letter_topic`` before the offsets covering it are committed),
    or, read from the dead-letter topic itself, a ``dead_letters`` row as it is."""

    def __init__(
        self,
        client: ClickHouse,
        database: str,
        routes: dict[str, RowMapper],
        columns: dict[str, tuple[str, ...]] | None = None,
        dead_letter_topic: str = "",
        max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES,
    ) -> None:
        self.client = client
        self.database = database
        self.routes = routes
        self.batches = {
            table: TableBatch(table, cols) for table, cols in (columns or TABLE_COLUMNS).items()
        }
        self.erasures: list[list[str]] = []
        self.dead_letter_topic = dead_letter_topic
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self.rejected: list[DeadLetter] = []
        self._column_types: dict[str, Any] = {}

    def _types(self, table: str, columns: tuple[str, ...]) -> Any:
        """The table's column types, read from ClickHouse once (``DESCRIBE TABLE``): without
        them clickhouse-connect describes the table again before every insert."""
        types = self._column_types.get(table)
        if types is None:
            context = self.client.create_insert_context(table, column_names=list(columns))
            types = self._column_types[table] = context.column_types
        return types

    @property
    def pending_rows(self) -> int:
        return sum(len(b.rows) for b in self.batches.values()) + len(self.erasures)

    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        now_ms: int,
    ) -> None:
        batches = self.batches
        message = SourceMessage(key, value, headers, partition, offset, now_ms)
        by_table: dict[str, list[list[Any]]] = {}
        try:
            for table, row in self.routes[topic](message):
                by_table.setdefault(table, []).append(row)
            for table, rows in by_table.items():  # a row ClickHouse would refuse would stall
                if table == ERASE:  # every retry
                    if not all(isinstance(c, str) for row in rows for c in row[0]):
                        raise ValueError("erasure of a non-string customer id")
                    continue
                batch = batches.get(table)
                width = len(batch.columns) if batch is not None else -1
                for row in rows:
                    if len(row) != width:
                        raise ValueError(f"a row of {len(row)} values for table {table!r}")
        except Exception as exc:  # noqa: BLE001 - whatever the bytes, the sink keeps going
            by_table = {}
            for table, row in self._reject(topic, message, exc):
                by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            if table == ERASE:
                self.erasures += [row[0] for row in rows]
            else:
                batches[table].extend(rows, topic, partition, offset)

    def _reject(
        self, topic: str, message: SourceMessage, exc: Exception
    ) -> list[tuple[str, list[Any]]]:
        partition, offset, value, now_ms = (
            message.partition, message.offset, message.value, message.now_ms
        )  # fmt: skip
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("sink cannot read %s[%d]@%d (%s)", topic, partition, offset, detail)
        msg = RawMessage(topic, partition, offset, message.key, value)
        if topic == self.dead_letter_topic:  # stored as it is: sent back, it would loop
            metrics.DEAD_LETTERS.labels(UNREADABLE_DEAD_LETTER).inc()
            dead = dead_letter(msg, UNREADABLE_DEAD_LETTER, detail, now_ms)
            return [("dead_letters", dead_letter_row(dead.value, dead.headers, now_ms))]
        dead = dead_letter(msg, UNREADABLE_OUTPUT, detail, now_ms, self.max_dead_letter_bytes)
        self.rejected.append(dead)
        metrics.DEAD_LETTERS.labels(UNREADABLE_OUTPUT).inc()
        return []

    def flush(self) -> int:
        written = 0
        for batch in self.batches.values():
            if not batch.rows:
                continue
            started = time.perf_counter()
            table = f"{self.database}.{batch.table}"
            self.client.insert(
                table,
                batch.rows,
                column_names=list(batch.columns),
                column_types=self._types(table, batch.columns),
                settings={"insert_deduplication_token": batch.token()},
            )
            metrics.CLICKHOUSE_INSERT_SECONDS.labels(batch.table).observe(
                time.perf_counter() - started
            )
            metrics.CLICKHOUSE_ROWS.labels(batch.table).inc(len(batch.rows))
            written += len(batch.rows)
            batch.clear()
        for customers in self.erasures:  # after the inserts: nothing inserted survives them
            for statement in erase_statements(self.database, customers):
                self.client.command(statement)
        self.erasures.clear()
        return written


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: SinkService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.flush_and_commit()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("sink assigned %d partitions", len(assigned))


class SinkService(Service):
    """Consumes the output topics into ClickHouse. Start it in exactly one process
    per embedded database, or in every worker when ClickHouse is a server."""

    def __init__(
        self,
        settings: Settings,
        client_factory: Callable[[], ClickHouse],
        executor: ThreadPoolExecutor,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.client_factory = client_factory
        self.executor = executor
        self.alert_codec = reader_codec(settings, ALERT_SUBJECT)
        self.routes = default_routes(settings, self.alert_codec)
        self.topics = sorted(self.routes)
        self.sink: ClickHouseSink | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._last_flush = time.monotonic()
        self._flush_lock = asyncio.Lock()
        self.healthy = True

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(self.executor, self.client_factory)
        await loop.run_in_executor(
            self.executor, migrate, client, self.settings.clickhouse_database
        )
        self.sink = ClickHouseSink(
            client,
            self.settings.clickhouse_database,
            self.routes,
            dead_letter_topic=self.settings.topics.dead_letter,
            max_dead_letter_bytes=self.settings.dead_letter_max_bytes,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            **consumer_security(self.settings),
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.settings.sink_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.sink_batch_rows,
            **consumer_security(self.settings),
        )
        self.consumer.subscribe(self.topics, listener=_FlushOnRevoke(self))
        await self.consumer.start()
        self.add_future(self._consume())

    async def on_stop(self) -> None:
        if self.consumer is not None:
            try:
                await self.flush_and_commit()
            finally:
                await self.consumer.stop()
                if self.producer is not None:
                    await self.producer.stop()

    async def _consume(self) -> None:
        assert self.consumer is not None and self.sink is not None
        consumer, sink = self.consumer, self.sink
        settings = self.settings
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.sink_batch_rows)
            if settings.schema_registry_url and not await self._fetch_alert_schemas(batches):
                return  # stopping while the registry is away: nothing of this batch committed
            now_ms = int(time.time() * 1000)
            for tp, messages in batches.items():
                for m in messages:
                    sink.add(tp.topic, tp.partition, m.offset, m.key, m.value, m.headers, now_ms)
                self._positions[tp] = next_offset = messages[-1].offset + 1
                metrics.EVENTS_CONSUMED.labels(tp.topic).inc(len(messages))
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    metrics.CONSUMER_LAG.labels("sink", tp.topic, str(tp.partition)).set(
                        max(0, highwater - next_offset)
                    )
            due = time.monotonic() - self._last_flush >= settings.sink_flush_seconds
            if sink.pending_rows >= settings.sink_batch_rows or (due and self._positions):
                await self.flush_and_commit()

    async def _fetch_alert_schemas(self, batches: dict[TopicPartition, list[Any]]) -> bool:
        """The alerts' writer schemas, fetched off the loop before decoding; waits (retrying)
        while the registry does not answer. False if the service stops meanwhile."""
        alerts = self.settings.topics.alerts
        values = [m.value for tp, ms in batches.items() if tp.topic == alerts for m in ms]
        delay = 0.5
        loop = asyncio.get_running_loop()
        while values:
            try:
                await loop.run_in_executor(None, self.alert_codec.prefetch, values)
                return True
            except SchemaUnavailableError as exc:
                if self.should_stop:
                    return False
                log.warning(
                    "sink waits for the schema registry (%s); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        return True

    async def _send_rejected(self, sink: ClickHouseSink) -> None:
        """Dead letters of messages the sink could not read, delivered (acked) before the
        offsets that cover them are committed."""
        if not sink.rejected:
            return
        assert self.producer is not None
        topic = self.settings.topics.dead_letter
        futures = [
            await self.producer.send(topic, d.value, key=d.key, headers=d.headers)
            for d in sink.rejected
        ]
        for future in futures:
            await future
        sink.rejected.clear()

    async def flush_and_commit(self) -> None:
        """Insert what is pending, then commit exactly the offsets it covers."""
        async with self._flush_lock:
            sink, consumer = self.sink, self.consumer
            if sink is None or consumer is None:
                return
            self._last_flush = time.monotonic()
            if not self._positions:
                return
            positions = dict(self._positions)
            delay = 0.5
            loop = asyncio.get_running_loop()
            while True:
                try:
                    await self._send_rejected(sink)
                    await loop.run_in_executor(self.executor, sink.flush)
                    self.healthy = True
                    break
                except Exception as exc:  # retry; the offsets do not move meanwhile
                    self.healthy = False
                    metrics.CLICKHOUSE_INSERT_FAILURES.inc()
                    if self.should_stop and delay > 4:
                        # Shutting down with ClickHouse away: keep the offsets where they
                        # are; the next owner of these partitions replays the batch.
                        log.error("ClickHouse still failing at shutdown (%s); not committing", exc)
                        return
                    log.warning("ClickHouse insert failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            try:
                await consumer.commit(positions)
            except CommitFailedError as exc:
                # The group moved on without this member (a heartbeat missed under load, a
                # session timeout): the partitions may be another member's now, and the
                # commit is refused. Their rows are in ClickHouse; whoever owns them next
                # reads them again from the last committed offsets, and the idempotent
                # writes absorb the replay. Crashing here instead stopped the sink (and, in
                # one process with the worker, the whole pipeline) for good.
                log.warning(
                    "sink commit refused by the group (%s); %d partition(s) will be read again "
                    "from their committed offsets",
                    type(exc).__name__,
                    len(positions),
                )
                metrics.SINK_COMMITS_REFUSED.inc()
            else:
                for tp, offset in positions.items():
                    metrics.SINK_COMMITTED_OFFSET.labels(tp.topic, str(tp.partition)).set(offset)
            for tp, offset in positions.items():  # committed, or to be read again
                if self._positions.get(tp) == offset:
                    del self._positions[tp]
