"""What the pipeline's parts share: the attributes ``Pipeline.__init__`` (the composition root)
sets, declared once so the agents, the batch protocol and the HTTP views are typed against
them. Nothing is built here."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from streams.adapters.clickhouse import ClickHouse
from streams.adapters.schema_registry import RemoteSchemas
from streams.adapters.sink import SinkService
from streams.adapters.webhooks import WebhookDispatcher
from streams.customers.detect import Rules
from streams.customers.stage import CustomerStage
from streams.identity.cache import DecodedStates
from streams.identity.graph import IdentityNode, IdentityRules, ResolutionMemory
from streams.ingest.dedupe import DedupeStage
from streams.ingest.stage import IngestStage
from streams.settings import Settings
from streams.wire.codec import AvroCodec, SchemaRegistry

__all__ = ["TOO_LARGE", "PipelineParts", "log"]

log = logging.getLogger("streams.runtime.app")
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)


class PipelineParts:
    """Attributes of a built pipeline (see ``streams.runtime.app.Pipeline``)."""

    settings: Settings
    app: Any  # faust.App
    registry: SchemaRegistry
    remote_schemas: RemoteSchemas | None
    codec: AvroCodec
    alert_codec: AvroCodec | None
    identity_rules: IdentityRules
    identity: IdentityNode
    stage: IngestStage
    dedupe_stage: DedupeStage
    rules: Rules
    customer_stage: CustomerStage
    webhooks: WebhookDispatcher | None
    sink: SinkService | None
    clickhouse_executor: ThreadPoolExecutor
    raw_topic: Any
    checked_topic: Any
    dlq_topic: Any
    identity_in: Any
    resolved_topic: Any
    dedupe_table: Any
    identity_table: Any
    customer_table: Any
    failing: set[str]
    ready: bool
    first_batch_at: float | None  # perf_counter of the first ingest batch
    _register_lock: asyncio.Lock
    _customer_lock: asyncio.Lock
    _query_client: ClickHouse | None
    _resolutions: dict[int, ResolutionMemory]  # per identity partition
    _identity_states: DecodedStates  # decoded identity state, per identity partition
    _inflight: int  # batches being processed (``_guarded``); revoke waits for them
    _idle: asyncio.Event
