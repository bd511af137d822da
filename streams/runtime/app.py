"""The composition root: builds the Faust app, its topics, tables, agents and services.

The topology (which topic feeds which agent, which table it keeps, what it writes) is
declared in ``streams.topology`` and printed by ``touchpoints topology``; this module wires
it: the ingest, identity and customers agents, their tables, the ClickHouse sink service
(when ``SINK_ENABLED``), the webhook dispatcher and the HTTP views.

Agents are thin batch loops; the logic lives in pure steps (``streams.ingest.stage``,
``streams.identity.graph``, ``streams.customers.stage``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, cast

import faust
import orjson
import yaml
from aiohttp import web as aioweb
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.types import TP
from mode import Service

from streams import metrics, topology
from streams.adapters.clickhouse import ClickHouse, connect
from streams.adapters.kafka import consumer_security
from streams.adapters.schema_registry import RemoteSchemas
from streams.adapters.sink import SinkService
from streams.adapters.webhooks import WebhookDispatcher, load_subscribers
from streams.customers.detect import Detector, Rules
from streams.customers.items import ItemKind, erased_item, event_item, merge_item
from streams.customers.stage import (
    POSITION_SCALE,
    CustomerStage,
    encode_rows,
)
from streams.identity.graph import (
    Erased,
    IdentityNode,
    IdentityRules,
    Merge,
    Refusal,
    ResolutionMemory,
    Resolved,
    is_household,
    op_from_json,
    op_to_json,
    ops_for_event,
    output_to_json,
    state_from_json,
    state_to_json,
)
from streams.ingest.stage import IngestPolicy, IngestStage, from_json
from streams.ops.operator import find_customer, identifier_key, timeline
from streams.runtime import gc_tuning
from streams.runtime.faust_patches import keep_buffers_on_resume
from streams.runtime.state import StoredView, TableShard
from streams.settings import Settings
from streams.wire import keys
from streams.wire.codec import (
    ALERT_SUBJECT,
    TOUCHPOINT_SUBJECT,
    AvroCodec,
    SchemaRegistry,
    SchemaUnavailableError,
)
from streams.wire.dlq import RawMessage, shrink
from streams.wire.envelope import group_by_partition, pack_chunks, partition_for, unpack

__all__ = ["Pipeline", "create_app"]

log = logging.getLogger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)


def _credentials(settings: Settings) -> Any:
    sec = consumer_security(settings)
    if settings.kafka_security_protocol.value.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec["sasl_plain_username"],
            password=sec["sasl_plain_password"],
            mechanism=sec["sasl_mechanism"],
            ssl_context=sec.get("ssl_context"),
        )
    if "ssl_context" in sec:
        return faust.SSLCredentials(sec["ssl_context"])
    return None


class Pipeline:
    """Everything the worker runs, built from one ``Settings``; ``app`` is the Faust app."""

    def __init__(
        self,
        settings: Settings,
        *,
        clickhouse_factory: Callable[[], ClickHouse] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        gc_tuning.tune(settings)
        self.registry = SchemaRegistry.from_dir(settings.schemas_dir)
        # With SCHEMA_REGISTRY_URL, writer ids are resolved there and alerts carry its id;
        # without, schemas/registry.json is the registry.
        self.remote_schemas: RemoteSchemas | None = (
            RemoteSchemas.from_settings(settings, self.registry)
            if settings.schema_registry_url
            else None
        )
        self.codec = (
            self.remote_schemas.input_codec(TOUCHPOINT_SUBJECT)
            if self.remote_schemas is not None
            else AvroCodec(self.registry, TOUCHPOINT_SUBJECT)
        )
        self.identity_rules = (
            IdentityRules.from_mapping(yaml.safe_load(settings.identity_rules.read_text()) or {})
            if settings.identity_rules
            else IdentityRules()
        )
        self.identity = IdentityNode(self.identity_rules)
        self.stage = IngestStage(
            self.codec,
            IngestPolicy.from_settings(settings),
            dedupe_horizon_ms=settings.dedupe_horizon_seconds * 1000,
            is_blocked=self.identity_rules.is_blocked,
        )
        self.rules = (
            Rules.from_yaml(settings.rules_file) if settings.rules_file else Rules.default()
        )
        self.customer_stage = CustomerStage(
            settings.topic_partitions,
            lateness_ms=settings.aggregate_lateness_seconds * 1000,
            pane_events=settings.aggregate_pane_events,
            detector=Detector(self.rules),
            dedupe_horizon_ms=settings.dedupe_horizon_seconds * 1000,
        )
        self.alert_codec: AvroCodec | None = (
            None if self.remote_schemas is not None else AvroCodec(self.registry, ALERT_SUBJECT)
        )  # with a registry: once ALERT_SUBJECT is registered there (``_output_codec``)
        self._register_lock = asyncio.Lock()
        subscribers = (
            load_subscribers(settings.rules_file, environ or {}) if settings.rules_file else []
        )
        self.webhooks: WebhookDispatcher | None = (
            WebhookDispatcher(subscribers, self._webhook_dead_letter) if subscribers else None
        )
        self._customer_lock = asyncio.Lock()
        self._query_client: ClickHouse | None = None
        self.failing: set[str] = set()
        self._resolutions: dict[int, ResolutionMemory] = {}  # per identity partition
        self._inflight = 0  # batches being processed (``_guarded``); revoke waits for them
        self._idle = asyncio.Event()
        self._idle.set()
        # One thread owns every ClickHouse call (the embedded engine is not for sharing).
        self.clickhouse_executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self.ready = False
        self.first_batch_at: float | None = None  # perf_counter of the first ingest batch

        app = faust.App(
            settings.app_id,
            env={},  # Faust would read WEB_PORT etc. itself; Settings is the only source
            env_prefix="",
            # tpkafka:// = aiokafka with a batching consumer loop (streams.runtime.faust_patches)
            broker=f"tpkafka://{settings.kafka_bootstrap_servers}",
            broker_credentials=_credentials(settings),
            store=settings.table_store,
            datadir=str(settings.data_dir),
            key_serializer="json",  # tables; our topics carry raw bytes (below)
            value_serializer="json",
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication_factor,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger_ms=5,
            producer_max_batch_size=512 * 1024,
            producer_max_request_size=4 * 1024 * 1024,
            stream_buffer_maxsize=max(4096, settings.ingest_batch_size * 2),
            stream_recovery_delay=0.0,
            # Faust's own wait on revoke/stop commits first, and that commit can wait on the
            # consumer thread that is itself inside the rebalance: measured here, a worker
            # then hangs for the whole session timeout and ignores SIGTERM. Every stage is
            # idempotent, so we wait for in-flight batches ourselves (``_on_revoked``) and
            # leave the last acked offsets to be re-read by the next owner.
            stream_wait_empty=False,
            # No leader election is used (timers run on every worker, per partition), and
            # Faust declares its leader topic concurrently with the first group join, the
            # race that once left the changelogs out of an assignment ("Ignoring missing
            # topic: <app>-__assignor-__leader" was seen in a stalled make run).
            topic_disable_leader=True,
            broker_commit_interval=1.0,
            broker_session_timeout=settings.kafka_session_timeout_seconds,
            broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_seconds / 3),
            web_host=settings.web_host,
            web_port=settings.web_port or 6066,
            web_enabled=settings.web_port > 0,
            web_in_thread=False,
        )
        keep_buffers_on_resume(app)  # Faust empties them on every resume (a lost tail)
        self.app = app
        t = settings.topics
        stages = {s.name: s for s in topology.STAGES}
        tables = {tb.stage: tb for tb in topology.TABLES}
        self.raw_topic = self._bytes_topic(*map(t.of, stages["ingest"].inputs))
        self.dlq_topic = self._bytes_topic(t.dead_letter)
        # identity: LINK ops come from ingest (valid), the others from identity itself (ops)
        self.identity_in = self._bytes_topic(*map(t.of, stages["identity"].inputs))
        self.resolved_topic = self._bytes_topic(*map(t.of, stages["customers"].inputs))
        self.dedupe_table = app.Table(
            tables["ingest"].name,
            partitions=settings.topic_partitions,
            key_type=bytes,
            value_type=bytes,
            help="Event ids seen per raw partition, one entry per ingest batch.",
        )
        self.identity_table = app.Table(
            tables["identity"].name,
            partitions=settings.topic_partitions,
            key_type=bytes,
            value_type=bytes,
            help="Identity graph: identifier -> customer label; customer -> members.",
        )
        self.customer_table = app.Table(
            tables["customers"].name,
            partitions=settings.topic_partitions,
            key_type=bytes,
            value_type=bytes,
            help="Per customer partition: aggregate partials, customer memory, customer 360.",
        )
        app.agent(self.raw_topic, name="ingest")(self._ingest_agent)
        app.agent(self.identity_in, name="identity")(self._identity_agent)
        app.agent(self.resolved_topic, name="customers")(self._customer_agent)
        app.timer(60.0, on_leader=False)(self._tick_customers)
        if self.remote_schemas is not None:
            app.task(self._register_output_schemas)
        if self.webhooks is not None:
            app.service(cast(Any, _DispatcherService(self.webhooks)))
        if settings.sink_enabled:
            factory = clickhouse_factory or (lambda: connect(settings))
            self.sink: SinkService | None = SinkService(settings, factory, self.clickhouse_executor)
            app.service(cast(Any, self.sink))  # an instance is fine: Faust starts it as is
        else:
            self.sink = None
        app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        app.on_rebalance_complete.connect(cast(Any, self._on_rebalanced))
        app.page("/healthz")(cast(Any, self._healthz))
        app.page("/readyz")(cast(Any, self._readyz))
        app.page("/metrics")(cast(Any, self._metrics))
        app.page("/debug/consumer")(cast(Any, self._debug_consumer))
        app.page("/customers/{customer_id}/timeline")(cast(Any, self._timeline))
        app.page("/timeline")(cast(Any, self._timeline_by_identifier))

    def _bytes_topic(self, *names: str) -> Any:
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    # --- agents -------------------------------------------------------------------------

    async def _ingest_agent(self, stream: Any) -> None:
        settings = self.settings
        async for events in stream.noack_take(
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        ):
            await self._guarded("ingest", self._ingest_batch, events, stream)

    async def _ingest_batch(self, events: list[Any]) -> None:
        settings = self.settings
        producer = self.app.producer
        valid_topic, dlq_topic = settings.topics.valid, settings.topics.dead_letter
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = started
        messages = [
            RawMessage(
                e.message.topic,
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                int(e.message.timestamp * 1000) if e.message.timestamp else None,
            )
            for e in events
        ]
        for partition in {m.partition for m in messages}:
            if not self.stage.has_partition(partition):
                self.stage.restore(partition, self._dedupe_entries(partition))
        if self.remote_schemas is not None:
            # Writer schemas fetched off the loop; raises SchemaUnavailableError while the registry
            # does not answer: ``_guarded`` retries the batch, nothing is acked or dead-lettered.
            await asyncio.get_running_loop().run_in_executor(
                None, self.codec.prefetch, [m.value for m in messages]
            )
        now_ms = int(time.time() * 1000)
        result = self.stage.process(messages, now_ms)
        pending = []
        # Valid records travel in envelopes, one per destination partition (by anchor).
        grouped = group_by_partition(
            ((out.anchor, {"a": out.anchor, "r": out.record}) for out in result.valid),
            settings.topic_partitions,
        )
        for partition, records in grouped.items():
            pending.extend(await self._send_envelopes(valid_topic, partition, records))
        for channel, count in Counter(out.record["channel"] for out in result.valid).items():
            metrics.VALID_EVENTS.labels(channel).inc(count)
        dead_sent = [
            (dead, await producer.send(dlq_topic, dead.key, dead.value, None, None, dead.headers))
            for dead in result.dead
        ]
        for dead in result.dead:
            metrics.DEAD_LETTERS.labels(dead.reason).inc()
        if result.replayed:
            metrics.INGEST_REPLAYED.inc(result.replayed)
        # Output delivered BEFORE the de-duplication state that vouches for it: a crash in
        # between replays the batch as new events (downstream is idempotent) instead of
        # refusing them as duplicates of events that never left. Both before the ack.
        await asyncio.gather(*pending)
        await self._deliver_dead_letters(dlq_topic, dead_sent)
        shard = TableShard(self.dedupe_table, self.app.producer)
        for partition, key, value in result.state_puts:
            shard.put(partition, key, value)
        for partition, key in result.state_deletes:
            shard.delete(partition, key)
        await asyncio.gather(*(await shard.flush_async()))
        metrics.EVENTS_CONSUMED.labels(settings.topics.raw).inc(len(messages))
        self._export_lag("ingest", messages)
        metrics.INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _deliver_dead_letters(self, topic: str, sent: list[tuple[Any, Any]]) -> None:
        """Wait for the dead letters; one the broker refuses as too large (its limit is below
        ``DEAD_LETTER_MAX_BYTES``) goes again cut to a few KiB, so no message can hold its
        batch — and every partition of this worker — back for good."""
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        again = []
        for (dead, _), outcome in zip(sent, results, strict=True):
            if isinstance(outcome, _TOO_LARGE):
                log.warning(
                    "dead letter of %d bytes refused by the broker (%s); sending it truncated",
                    dead.size,
                    type(outcome).__name__,
                )
                small = shrink(dead, 4096)
                again.append(
                    await self.app.producer.send(
                        topic, small.key, small.value, None, None, small.headers
                    )
                )
            elif isinstance(outcome, BaseException):
                raise outcome
        await asyncio.gather(*again)

    async def _identity_agent(self, stream: Any) -> None:
        settings = self.settings
        async for events in stream.noack_take(
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        ):
            await self._guarded("identity", self._identity_batch, events, stream)

    async def _identity_batch(self, events: list[Any]) -> None:
        """LINK ops from ingest + protocol ops from itself -> state, new ops, outputs."""
        settings, t = self.settings, self.settings.topics
        n = settings.topic_partitions
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        by_partition: dict[int, list[Any]] = defaultdict(list)
        refusals: list[Refusal] = []
        for e in events:
            msg = e.message
            ops = by_partition[msg.partition]
            if msg.topic == t.valid:
                for item in unpack(msg.value):  # {"a": anchor, "r": record}
                    link, refused = ops_for_event(
                        from_json(item["r"]), self.identity_rules, carry_event=False
                    )
                    ops.extend(replace(op, event=item) for op in link)
                    refusals.extend(refused)
            else:
                ops.extend(op_from_json(item) for item in unpack(msg.value))
        shard = TableShard(self.identity_table, self.app.producer)
        stamps = TableShard(self.identity_table, self.app.producer)
        out_ops: list[tuple[str, Any]] = []
        outputs: list[Any] = list(refusals)
        for partition, ops in by_partition.items():
            view = _IdentityView(shard, n, partition)
            fx = self.identity.handle_batch(ops, view, now_ms)
            out_ops.extend((op.routing_key, op_to_json(op)) for op in fx.ops)
            memory = self._resolution_memory(partition)
            resolved = [memory.stamp(o) for o in fx.outputs if isinstance(o, Resolved)]
            outputs.extend(resolved)
            outputs.extend(o for o in fx.outputs if not isinstance(o, Resolved))
            first = min(e.message.offset for e in events if e.message.partition == partition)
            key = keys.resolution(partition, first)
            entry = memory.remember(key, resolved, now_ms)
            if entry is not None:
                stamps.put(partition, key, entry)
            for old in memory.expire(now_ms):
                stamps.delete(partition, old)
        # The events' customers land first: whatever replays this batch later (a crash
        # here, or ingest re-sending the events) stamps them with the same customers
        # (ResolutionMemory), even against state that has moved on.
        await asyncio.gather(*(await stamps.flush_async()))
        pending = []
        for p, items in group_by_partition(out_ops, n).items():
            pending.extend(await self._send_envelopes(t.identity_ops, p, items))
        pending += await self._send_identity_outputs(outputs)
        # Ops and outputs delivered BEFORE the state that assumes them: a crash in
        # between replays the batch (idempotent) instead of stranding a locked customer.
        await asyncio.gather(*pending)
        await asyncio.gather(*(await shard.flush_async()))
        metrics.IDENTITY_BATCH_SECONDS.observe(time.perf_counter() - started)

    def _resolution_memory(self, partition: int) -> ResolutionMemory:
        memory = self._resolutions.get(partition)
        if memory is None:
            memory = ResolutionMemory(self.settings.dedupe_horizon_seconds * 1000)
            view = StoredView(self.identity_table)
            memory.restore(view.items_with_prefix(keys.resolution_prefix(partition)))
            self._resolutions[partition] = memory
        return memory

    async def _send_identity_outputs(self, outputs: list[Any]) -> list[Any]:
        t, n = self.settings.topics, self.settings.topic_partitions
        producer = self.app.producer
        resolved: list[tuple[str, Any]] = []
        changes: list[tuple[str, Any]] = []
        pending = []
        kinds: Counter[str] = Counter()  # counted once per batch: labels() is not free
        for out in outputs:
            if isinstance(out, Resolved):
                customer = out.customer or ""
                item = out.event  # {"a": anchor, "r": record} from the valid topic
                # The identifier it resolved at: the anchor, or the next one when the
                # anchor is quarantined (a household): timelines follow that one's label.
                key = out.via or item["a"]
                resolved.append((customer or out.event_id, event_item(customer, item["r"], key)))
                kinds["resolved"] += 1
                continue
            changes.append((out.id, output_to_json(out)))
            kinds[type(out).__name__.lower()] += 1
            if isinstance(out, Erased):  # the customer stage forgets them too
                for customer in {out.customer, *out.customers}:
                    resolved.append((customer, erased_item(customer)))
            if isinstance(out, Merge):
                notice = merge_item(out.survivor, out.absorbed, out.ts)
                resolved.append((out.absorbed, notice))
                if partition_for(out.survivor, n) != partition_for(out.absorbed, n):
                    resolved.append((out.survivor, notice))
                pending.append(
                    await producer.send(
                        t.merges,
                        out.absorbed.encode(),
                        orjson.dumps(output_to_json(out)),
                        None,
                        None,
                        None,
                    )
                )
            elif isinstance(out, Refusal):
                metrics.IDENTITY_REFUSALS.labels(out.reason.split(":")[0]).inc()
                if out.for_review:
                    pending.append(
                        await producer.send(
                            t.review,
                            (out.identifier or "").encode(),
                            orjson.dumps(output_to_json(out)),
                            None,
                            None,
                            None,
                        )
                    )
        for kind, count in kinds.items():
            metrics.IDENTITY_OUTPUTS.labels(kind).inc(count)
        for p, items in group_by_partition(resolved, n).items():
            pending.extend(await self._send_envelopes(t.resolved, p, items))
        for p, items in group_by_partition(changes, n).items():
            pending.extend(await self._send_envelopes(t.identity_changes, p, items))
        return pending

    async def _customer_agent(self, stream: Any) -> None:
        settings = self.settings
        async for events in stream.noack_take(
            settings.ingest_batch_size, within=settings.ingest_batch_seconds
        ):
            await self._guarded("customers", self._customer_batch, events, stream)

    async def _customer_batch(self, events: list[Any]) -> None:
        """Resolved events and merge notices -> rolling aggregates and the customer 360."""
        stage = self.customer_stage
        data = StoredView(self.customer_table)  # str keys, decoded values
        now_ms = int(time.time() * 1000)
        items: dict[int, list[tuple[int, Any]]] = defaultdict(list)
        for e in events:
            msg = e.message
            entries = items[msg.partition]
            base = msg.offset * POSITION_SCALE
            entries.extend(
                (base + i, item)
                for i, item in enumerate(unpack(msg.value))
                if item["t"] != ItemKind.EVENT or item["c"]
            )
        for partition in items:
            if not stage.has_partition(partition):
                stage.restore(partition, data)
        async with self._customer_lock:
            out = stage.process(items, data, now_ms)
            await self._emit_customer_outputs(out)

    async def _emit_customer_outputs(self, out: Any) -> None:
        """Alerts first (delivered), then rows and state: a crash in between replays the
        batch and re-raises the same alert ids rather than losing an alert to a cooldown."""
        settings, t = self.settings, self.settings.topics
        metrics.CUSTOMER_EVENTS.inc(out.events)
        metrics.CUSTOMER_DUPLICATES.inc(out.duplicates)
        if out.alerts:
            producer = self.app.producer
            sent = []
            alert_codec = await self._output_codec()
            for alert in out.alerts:
                value = alert_codec.encode(dict(alert))
                key = alert["customer_id"].encode()
                sent.append(await producer.send(t.alerts, key, value, None, None, None))
                metrics.ALERTS.labels(alert["rule"], alert["severity"]).inc()
            await asyncio.gather(*sent)
            if self.webhooks is not None:
                for alert in out.alerts:
                    self.webhooks.enqueue(alert)
        metrics.LATE_EVENTS.inc(out.late_events)
        n = settings.topic_partitions
        pending = []
        for p, handovers in group_by_partition(out.handovers, n).items():
            pending.extend(await self._send_envelopes(t.resolved, p, handovers))
        rows = encode_rows([*out.aggregate_rows, *out.alert_rows, *out.c360_rows])
        if rows:
            pending.extend(await self._send_envelopes(t.aggregates, 0, rows))
        # Rows and hand-overs delivered BEFORE the state that records them as written: a
        # crash in between replays the batch into the same row keys and versions.
        await asyncio.gather(*pending)
        shard = TableShard(self.customer_table, self.app.producer)
        for partition, key, value in out.state_puts:
            if value is None:
                shard.delete(partition, key)
            else:
                shard.put(partition, key, value)
        await asyncio.gather(*(await shard.flush_async()))

    async def _output_codec(self) -> AvroCodec:
        """The alerts codec; with a registry, registers ALERT_SUBJECT first (once, off the
        loop). Raises ``SchemaUnavailableError`` while the registry does not answer."""
        if self.alert_codec is None:
            async with self._register_lock:
                if self.alert_codec is None:
                    remote = self.remote_schemas
                    assert remote is not None  # noqa: S101 - alert_codec is None only then
                    loop = asyncio.get_running_loop()
                    codec = await loop.run_in_executor(None, remote.output_codec, ALERT_SUBJECT)
                    log.info(
                        "registered %s as schema id %d",
                        remote.subject(ALERT_SUBJECT),
                        codec.schema_id,
                    )
                    self.alert_codec = codec
        return self.alert_codec

    async def _register_output_schemas(self) -> None:
        """At start-up: our output schemas into the registry, so consumers can read alerts
        before the first one is raised. Retries while the registry does not answer; a
        refusal (an incompatible change) is logged and raised again at the first alert."""
        delay = 0.5
        while True:
            try:
                await self._output_codec()
                return
            except SchemaUnavailableError as exc:
                log.warning("schema registry: %s; retrying in %.1fs", exc, delay)
            except Exception:
                log.exception("schema registry refused our output schema")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _tick_customers(self) -> None:
        """The 60 s timer (no parameters: Faust passes the app to a timer that takes one)."""
        await self.tick_customers(idle_ms=60_000)

    async def tick_customers(self, idle_ms: int) -> None:
        """Deadline rules (an unresolved complaint) fire even when a customer goes quiet:
        by the event time a partition has reached while events flow, by the clock once it
        has had nothing for ``idle_ms`` (``CustomerStage.deadline_clock``)."""
        for table in (self.dedupe_table, self.identity_table, self.customer_table):
            metrics.TABLE_KEYS.labels(table.name).set(len(table.data))
        data = StoredView(self.customer_table)
        now_ms = int(time.time() * 1000)
        resolved = self.settings.topics.resolved
        partitions = sorted(
            tp.partition for tp in self.app.consumer.assignment() if tp.topic == resolved
        )
        if partitions:
            async with self._customer_lock:
                out = self.customer_stage.tick(partitions, data, now_ms, idle_ms)
                if out.state_puts or out.alerts:
                    await self._emit_customer_outputs(out)

    async def _webhook_dead_letter(self, dead: Any) -> None:
        await self.app.producer.send(
            self.settings.topics.webhook_dead_letter,
            dead.alert_id.encode(),
            orjson.dumps(dead.to_json()),
            None,
            None,
            None,
        )
        metrics.WEBHOOK_DELIVERIES.labels("dead").inc()

    async def _guarded(
        self, stage: str, process: Callable[[list[Any]], Any], events: list[Any], stream: Any
    ) -> None:
        """Process a batch until it succeeds; only then ack it (so offsets can commit).

        A failure (ClickHouse-independent: Kafka errors, a bug) is retried with back-off;
        the stage's in-memory state is dropped so the retry starts from the table state.
        The partition stalls rather than losing or skipping the batch; ``/readyz`` says so.
        """
        self._inflight += 1
        self._idle.clear()
        try:
            delay = 0.5
            while True:
                try:
                    await process(events)
                    break
                except asyncio.CancelledError:
                    raise
                except SchemaUnavailableError as exc:  # waits for the registry, says so briefly
                    log.warning(
                        "%s batch waits for the schema registry (%s); retrying in %.1fs",
                        stage,
                        exc,
                        delay,
                    )
                    metrics.STAGE_FAILURES.labels(stage).inc()
                    self.failing.add(stage)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                except Exception:
                    log.exception("%s batch failed; retrying in %.1fs", stage, delay)
                    metrics.STAGE_FAILURES.labels(stage).inc()
                    self.failing.add(stage)
                    for partition in {e.message.partition for e in events}:
                        self.stage.forget(partition)
                        self.customer_stage.forget(partition)
                        self._resolutions.pop(partition, None)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            self.failing.discard(stage)
            for event in events:
                await stream.ack(event)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _send_envelopes(self, topic: str, partition: int, items: list[Any]) -> list[Any]:
        """Send ``items`` to one partition as envelopes under the size limit."""
        producer = self.app.producer
        return [
            await producer.send(topic, None, chunk, partition, None, None)
            for chunk in pack_chunks(items)
        ]

    def _export_lag(self, stage: str, messages: list[RawMessage]) -> None:
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            last[(m.topic, m.partition)] = m.offset
        consumer = self.app.consumer
        for (topic, partition), offset in last.items():
            highwater = consumer.highwater(TP(topic, partition))
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(stage, topic, str(partition)).set(
                    max(0, highwater - offset - 1)
                )

    def _dedupe_entries(self, partition: int) -> list[tuple[str, dict[str, Any]]]:
        prefix = f"{partition}:"
        return list(StoredView(self.dedupe_table).items_with_prefix(prefix))

    # --- lifecycle and HTTP ------------------------------------------------------------

    async def _on_revoked(self, app: Any, revoked: Any, **kwargs: Any) -> None:
        """Let batches in flight finish (their state and outputs land before the partitions'
        next owner recovers them), bounded so a stuck stage cannot stall the group."""
        self.ready = False
        timeout = self.settings.revoke_wait_seconds
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            log.warning(
                "%d batch(es) still in flight after %.0fs of a rebalance", self._inflight, timeout
            )
        for tp in revoked:
            if tp.topic == self.settings.topics.raw:
                self.stage.forget(tp.partition)
            elif tp.topic == self.settings.topics.resolved:
                self.customer_stage.forget(tp.partition)
            elif tp.topic == self.settings.topics.valid:
                self._resolutions.pop(tp.partition, None)

    async def _on_rebalanced(self, app: Any, **kwargs: Any) -> None:
        """Recovery is over: what is alive now is long-lived (``streams.runtime.gc_tuning``)."""
        gc_tuning.freeze(self.settings)
        self.ready = True

    async def _healthz(self, request: Any) -> aioweb.Response:
        return aioweb.json_response({"status": "ok"})

    async def _debug_consumer(self, request: Any) -> aioweb.Response:
        """What the Faust consumer believes about its partitions (for a stalled partition:
        assigned but not active, paused, buffered, flow stopped). Read-only, best effort."""
        consumer: Any = self.app.consumer

        def tps(value: Any) -> list[str]:
            return sorted(f"{tp.topic}:{tp.partition}" for tp in (value or ()))

        try:
            inner = consumer._thread._ensure_consumer()  # aiokafka, in the consumer thread
            aiokafka_paused = tps(inner.paused())
        except Exception as exc:  # noqa: BLE001 - a debug view never fails the request
            aiokafka_paused = [f"unavailable: {exc!r}"]
        body = {
            "generation": self.app.consumer_generation_id,
            "rebalancing": bool(self.app.rebalancing),
            "in_recovery": bool(self.app.in_recovery),
            "flow_control_active": self.app.flow_control.is_active(),
            "consumer_flow_active": bool(consumer.flow_active),
            "assigned": tps(consumer.assignment()),
            "active": tps(consumer._active_partitions),
            "paused": tps(consumer._paused_partitions),
            "buffered": tps(consumer._buffered_partitions),
            "aiokafka_paused": aiokafka_paused,
            "read_offsets": {
                f"{tp.topic}:{tp.partition}": off for tp, off in consumer._read_offset.items()
            },
            "committed": {
                f"{tp.topic}:{tp.partition}": off for tp, off in consumer._committed_offset.items()
            },
            "acked": {
                f"{tp.topic}:{tp.partition}": [min(offs), max(offs), len(offs)]
                for tp, offs in consumer._acked.items()
                if offs
            },
            "unacked_messages": len(consumer._unacked_messages),
            "inflight_batches": self._inflight,
        }
        return aioweb.json_response(body, dumps=_json_dumps)

    async def _readyz(self, request: Any) -> aioweb.Response:
        sink_ok = self.sink is None or self.sink.healthy
        ok = self.ready and sink_ok and not self.failing
        return aioweb.json_response(
            {
                "ready": ok,
                "assigned": self.ready,
                "sink_healthy": sink_ok,
                "failing_stages": sorted(self.failing),
            },
            status=200 if ok else 503,
        )

    async def _clickhouse_call(self, fn: Callable[[ClickHouse], Any]) -> Any:
        """Run ``fn`` with a ClickHouse client: this process's sink client (the embedded
        engine lives here) or, with a ClickHouse server, a client of our own."""
        loop = asyncio.get_running_loop()
        sink = self.sink.sink if self.sink is not None else None
        if sink is not None:
            client = sink.client
        elif self.settings.clickhouse_url:
            if self._query_client is None:
                self._query_client = await loop.run_in_executor(
                    self.clickhouse_executor, connect, self.settings
                )
            client = self._query_client
        else:
            return None
        return await loop.run_in_executor(self.clickhouse_executor, fn, client)

    async def _timeline(self, request: Any, customer_id: str) -> aioweb.Response:
        db = self.settings.clickhouse_database
        rows = await self._clickhouse_call(lambda c: timeline(c, db, customer_id))
        if rows is None:
            return _no_clickhouse()
        return aioweb.json_response(
            # household: a shared device or email's own customer, standing for no one person
            {
                "customer_id": customer_id,
                "household": is_household(customer_id),
                "touchpoints": rows,
            },
            dumps=_json_dumps,
        )

    async def _timeline_by_identifier(self, request: Any) -> aioweb.Response:
        """``GET /timeline?email=...`` (or phone, device_id, customer_id, login_id, ...)."""
        db = self.settings.clickhouse_database
        if self.sink is None and not self.settings.clickhouse_url:
            return _no_clickhouse()
        given = list(request.query.items())
        if len(given) != 1:
            return aioweb.json_response({"error": "give one identifier, e.g. ?email="}, status=400)
        kind, value = given[0]
        try:
            key = identifier_key(kind, value)
        except ValueError as exc:
            return aioweb.json_response({"error": str(exc)}, status=400)
        customer = await self._clickhouse_call(lambda c: find_customer(c, db, key))
        if customer is None:
            return aioweb.json_response({"error": f"no customer has {key}"}, status=404)
        return await self._timeline(request, customer)

    async def _metrics(self, request: Any) -> aioweb.Response:
        return aioweb.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


def create_app(settings: Settings) -> faust.App:
    return Pipeline(settings).app


class _IdentityView:
    """The identity node's ``StateView`` over the identity table, for one batch.

    Keys are stored hashed (BLAKE2b of ``kind:value``): the table and its changelog hold
    no identifier in clear, so an erased identifier's tombstone holds no personal data.
    The partition still follows the clear key (the op's routing key).
    """

    def __init__(self, shard: TableShard, partitions: int, partition: int) -> None:
        self.shard = shard
        self.partitions = partitions
        self.partition = partition

    def get(self, key: str) -> Any:
        saved = self.shard.get(_hashed(key))
        return None if saved is None else state_from_json(saved)

    def put(self, key: str, value: Any) -> None:
        partition = partition_for(key, self.partitions)
        if partition != self.partition:  # handlers write only their op's routing key
            raise RuntimeError(f"identity state for a key of partition {partition}")
        self.shard.put(partition, _hashed(key), state_to_json(value))


def _hashed(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


class _DispatcherService(Service):
    """Runs the webhook dispatcher for the worker's lifetime; drains it on shutdown."""

    def __init__(self, dispatcher: WebhookDispatcher, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dispatcher = dispatcher

    async def on_start(self) -> None:
        await self.dispatcher.start()

    async def on_stop(self) -> None:
        await self.dispatcher.stop(drain_timeout_s=5.0)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _no_clickhouse() -> aioweb.Response:
    return aioweb.json_response(
        {"error": "ClickHouse is embedded in another process here; ask the sink's worker"},
        status=503,
    )
