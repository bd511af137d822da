"""The composition root: builds the Faust app, its topics, tables, agents and services.

The topology (which topic feeds which agent, which table it keeps, what it writes) is
declared in ``streams.topology`` and printed by ``touchpoints topology``; this module wires
it: the ingest, dedupe, identity and customers agents, their tables, the ClickHouse sink
service (when ``SINK_ENABLED``), the webhook dispatcher and the HTTP views.

Agents are thin batch loops; the logic lives in pure steps (``streams.ingest.stage``,
``streams.ingest.dedupe``, ``streams.identity.graph``, ``streams.customers.stage``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
import yaml
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from mode import Service

from streams import metrics, topology
from streams.adapters.clickhouse import ClickHouse, connect
from streams.adapters.kafka import consumer_security
from streams.adapters.schema_registry import RemoteSchemas
from streams.adapters.sink import SinkService
from streams.adapters.webhooks import WebhookDispatcher, load_subscribers
from streams.customers.detect import Detector, Rules
from streams.customers.stage import (
    CustomerStage,
)
from streams.identity.cache import DecodedStates
from streams.identity.graph import (
    IdentityNode,
    IdentityRules,
    ResolutionMemory,
)
from streams.ingest.stage import IngestPolicy, IngestStage
from streams.runtime import gc_tuning
from streams.runtime.agents import PipelineAgents
from streams.runtime.diagnostics import install_stack_dump
from streams.runtime.faust_patches import keep_buffers_on_resume, set_fetch_max_wait
from streams.runtime.memory import c_heap, release_free_memory
from streams.runtime.views import PipelineViews
from streams.settings import Settings
from streams.wire.codec import (
    ALERT_SUBJECT,
    TOUCHPOINT_SUBJECT,
    AvroCodec,
    SchemaRegistry,
)

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


class Pipeline(PipelineAgents, PipelineViews):
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
        self._build_steps(settings, environ or {})
        self._customer_lock = asyncio.Lock()
        self._query_client: ClickHouse | None = None
        self.failing: set[str] = set()
        self._resolutions: dict[int, ResolutionMemory] = {}  # per identity partition
        self._identity_states = DecodedStates(settings.identity_cache_keys)
        self._inflight = 0  # batches being processed (``_guarded``); revoke waits for them
        self._idle = asyncio.Event()
        self._idle.set()
        # One thread owns every ClickHouse call (the embedded engine is not for sharing).
        self.clickhouse_executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self.ready = False
        self.first_batch_at: float | None = None  # perf_counter of the first ingest batch

        app = _faust_app(settings)
        self.app = app
        t = settings.topics
        stages = {s.name: s for s in topology.STAGES}
        self.raw_topic = self._bytes_topic(*map(t.of, stages["ingest"].inputs))
        self.checked_topic = self._bytes_topic(*map(t.of, stages["dedupe"].inputs))
        self.dlq_topic = self._bytes_topic(t.dead_letter)
        # identity: LINK ops come from ingest (valid), the others from identity itself (ops)
        self.identity_in = self._bytes_topic(*map(t.of, stages["identity"].inputs))
        self.resolved_topic = self._bytes_topic(*map(t.of, stages["customers"].inputs))
        declared = {
            table.stage: app.Table(
                table.name,
                partitions=settings.topic_partitions,
                key_type=bytes,
                value_type=bytes,
                help=table.holds,
            )
            for table in topology.TABLES
        }
        self.dedupe_table = declared["dedupe"]
        self.identity_table = declared["identity"]
        self.customer_table = declared["customers"]
        for stage, topic, process in (
            ("ingest", self.raw_topic, self._ingest_batch),
            ("dedupe", self.checked_topic, self._dedupe_batch),
            ("identity", self.identity_in, self._identity_batch),
            ("customers", self.resolved_topic, self._customer_batch),
        ):
            app.agent(topic, name=stage)(self.batch_agent(stage, process))
        app.timer(60.0, on_leader=False)(self._tick_customers)
        if settings.malloc_trim_seconds > 0:
            app.timer(settings.malloc_trim_seconds, on_leader=False)(_release_free_memory)
        app.task(self._install_stack_dump)
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

    async def _install_stack_dump(self) -> None:
        """``kill -USR1`` logs every task's stack, the consumer thread's loop included."""

        def loops() -> list[tuple[str, asyncio.AbstractEventLoop]]:
            thread = getattr(self.app.consumer, "_thread", None)
            loop = getattr(thread, "thread_loop", None)
            return [("consumer thread loop", loop)] if loop is not None else []

        install_stack_dump(loops)

    def _build_steps(self, settings: Settings, environ: Mapping[str, str]) -> None:
        """The pure steps and their codecs, rules and subscribers."""
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
        self.identity = IdentityNode(
            self.identity_rules, undo_through=settings.identity_undo_through
        )
        self.stage = IngestStage(
            self.codec,
            IngestPolicy.from_settings(settings),
            dedupe_horizon_ms=settings.dedupe_horizon_seconds * 1000,
            is_blocked=self.identity_rules.is_blocked,
            partitions=settings.topic_partitions,
        )
        self.dedupe_stage = self.stage.dedupe  # the dedupe agent's step (first copy wins)
        self.rules = (
            Rules.from_yaml(settings.rules_file) if settings.rules_file else Rules.default()
        )
        self.customer_stage = CustomerStage(
            settings.topic_partitions,
            lateness_ms=settings.aggregate_lateness_seconds * 1000,
            pane_events=settings.aggregate_pane_events,
            detector=Detector(self.rules),
            dedupe_horizon_ms=settings.dedupe_horizon_seconds * 1000,
            cache_entries=settings.customer_cache_entries,
        )
        self.alert_codec: AvroCodec | None = (
            None if self.remote_schemas is not None else AvroCodec(self.registry, ALERT_SUBJECT)
        )  # with a registry: once ALERT_SUBJECT is registered there (``_output_codec``)
        self._register_lock = asyncio.Lock()
        subscribers = load_subscribers(settings.rules_file, environ) if settings.rules_file else []
        self.webhooks: WebhookDispatcher | None = (
            WebhookDispatcher(subscribers, self._webhook_dead_letter) if subscribers else None
        )

    def _bytes_topic(self, *names: str) -> Any:
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )


def _faust_app(settings: Settings) -> faust.App:
    """The Faust app with every setting from ``Settings`` (Faust reads no environment)."""
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
        producer_linger_ms=settings.producer_linger_ms,
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
    set_fetch_max_wait(app, settings.consumer_fetch_max_wait_ms)
    return app


async def _release_free_memory() -> None:
    """The ``MALLOC_TRIM_SECONDS`` timer (``streams.runtime.memory``): in a thread (ctypes
    lets the GIL go), since a trim of a fragmented heap takes tens of ms (35-90 measured on
    250 MB) that the event loop should not wait for."""
    await asyncio.to_thread(release_free_memory)
    heap = c_heap()
    if heap is not None:
        metrics.C_HEAP_BYTES.labels("in_use").set(heap[0])
        metrics.C_HEAP_BYTES.labels("free").set(heap[1])


def create_app(settings: Settings) -> faust.App:
    return cast(faust.App, Pipeline(settings).app)


class _DispatcherService(Service):
    """Runs the webhook dispatcher for the worker's lifetime; drains it on shutdown."""

    def __init__(self, dispatcher: WebhookDispatcher, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dispatcher = dispatcher

    async def on_start(self) -> None:
        await self.dispatcher.start()

    async def on_stop(self) -> None:
        await self.dispatcher.stop(drain_timeout_s=5.0)
