"""The agents: thin batch loops around the pure steps (ingest, identity, customers) that
deliver each batch's output before its state (through ``PipelineProtocol``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from streams import metrics
from streams.customers.items import ItemKind, erased_item, event_item, merge_item
from streams.customers.stage import (
    POSITION_SCALE,
    encode_rows,
)
from streams.identity.cache import TableStates
from streams.identity.graph import (
    Erased,
    Merge,
    Refusal,
    ResolutionMemory,
    Resolved,
    link_ops,
    op_from_json,
    op_to_json,
    output_to_json,
)
from streams.ingest.dedupe import DUPLICATE_REASON
from streams.runtime.faust_patches import take_batches
from streams.runtime.lanes import Lane, ack, lane_batches
from streams.runtime.memory import message_bytes, slices
from streams.runtime.parts import log
from streams.runtime.protocol import PipelineProtocol
from streams.runtime.state import StoredView, TableShard
from streams.wire import keys
from streams.wire.checked import pack_frames
from streams.wire.codec import (
    ALERT_SUBJECT,
    AvroCodec,
    SchemaUnavailableError,
)
from streams.wire.dlq import RawMessage
from streams.wire.envelope import (
    MAX_ENVELOPE_BYTES,
    group_by_partition,
    partition_for,
    unpack,
)
from streams.wire.valid import pack_valid, read_valid


class PipelineAgents(PipelineProtocol):
    def batch_agent(
        self, stage: str, process: Callable[[list[Any]], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        """A stage's agent: batches of up to ``INGEST_BATCH_SIZE`` messages, cut into slices
        of at most ``BATCH_MAX_BYTES`` if set, each processed and acked through ``_guarded``,
        one at a time. A batch is what is queued when the one before it ends; a stage that
        was idle waits up to ``INGEST_BATCH_SECONDS`` after the first message for more. With
        this project's consumer the messages come through a lane (``streams.runtime.lanes``:
        none of Faust's per-message delivery path), otherwise from the stream's queue
        (``take_batches``)."""

        async def agent(stream: Any) -> None:
            batches, acker = self._batches(stream)
            async for events in batches:
                await self._process_take(stage, process, events, acker)
                # Nothing of the take stays referenced while the agent waits for the next
                # one: a local ``events`` kept the last take of envelopes (tens of MiB,
                # measured at the end of a memory run) alive until more input came.
                del events

        agent.__name__ = agent.__qualname__ = f"{stage}_agent"
        return agent

    async def _process_take(
        self,
        stage: str,
        process: Callable[[list[Any]], Awaitable[None]],
        events: list[Any],
        acker: Callable[[list[Any]], Awaitable[None]],
    ) -> None:
        """One take: processed and acked through ``_guarded`` whole, or in slices of at
        most ``BATCH_MAX_BYTES`` (``streams.runtime.memory``), each a whole batch; a
        rebalance waits for the take as it would for one batch."""
        parts = slices(events, self.settings.batch_max_bytes, message_bytes)
        if len(parts) == 1:
            await self._guarded(stage, process, events, acker)
            return
        self._inflight += 1
        self._idle.clear()
        try:
            for part in parts:
                await self._guarded(stage, process, list(part), acker)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _batches(
        self, stream: Any
    ) -> tuple[AsyncIterator[list[Any]], Callable[[list[Any]], Awaitable[None]]]:
        """The stream's batches and how to ack their events: through a lane registered for
        its topics when the consumer delivers to lanes, else from the stream's queue."""
        settings, app = self.settings, self.app
        size, linger = settings.ingest_batch_size, settings.ingest_batch_seconds
        lanes = getattr(app.consumer, "lanes", None) if settings.delivery_lanes else None
        if lanes is None:

            async def stream_ack(events: list[Any]) -> None:
                for event in events:
                    await stream.ack(event)

            return take_batches(stream, size, linger), stream_ack
        aiter(stream.channel)  # registers the topics with the conductor: the subscription
        topics = list(stream.channel.topics)
        lane = lanes.get(topics[0]) if topics else None
        if lane is None or lane.topics != frozenset(topics):
            lane = Lane(app, topics, app.conf.stream_buffer_maxsize, settings.lane_max_mb * 2**20)
            for topic in topics:
                lanes[topic] = lane

        async def lane_ack(events: list[Any]) -> None:
            ack(app, events)

        return lane_batches(lane, stream, size, linger), lane_ack

    async def _ingest_batch(self, events: list[Any]) -> None:
        """Raw messages -> frames on ``touchpoints.checked`` (by event id) + dead letters.
        Stateless: a replayed batch is recognised downstream by its raw positions."""
        settings = self.settings
        producer = self.app.producer
        checked_topic, dlq_topic = settings.topics.checked, settings.topics.dead_letter
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
        if self.remote_schemas is not None:
            # Writer schemas fetched off the loop; raises SchemaUnavailableError while the registry
            # does not answer: ``_guarded`` retries the batch, nothing is acked or dead-lettered.
            await asyncio.get_running_loop().run_in_executor(
                None, self.codec.prefetch, [m.value for m in messages]
            )
        now_ms = int(time.time() * 1000)
        result = self.stage.check(messages, now_ms)
        pending = [
            await producer.send(checked_topic, None, chunk, partition, None, None)
            for partition, frames in result.checked.items()
            for chunk in pack_frames(frames, MAX_ENVELOPE_BYTES)
        ]
        dead_sent = [
            (dead, await producer.send(dlq_topic, dead.key, dead.value, None, None, dead.headers))
            for dead in result.dead
        ]
        for dead in result.dead:
            metrics.DEAD_LETTERS.labels(dead.reason).inc()
        # Delivered before the ack: a crash before it re-sends the same raw positions, which
        # the dedupe stage drops as replays.
        await asyncio.gather(*pending)
        await self._deliver_dead_letters(dlq_topic, dead_sent)
        metrics.EVENTS_CONSUMED.labels(settings.topics.raw).inc(len(messages))
        self._export_lag("ingest", messages)
        metrics.INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _dedupe_batch(self, events: list[Any]) -> None:
        """Checked frames -> the first copy of each event id to ``touchpoints.valid`` (by
        anchor, bytes as ingest encoded them), later copies dead-lettered; then the state."""
        settings = self.settings
        valid_topic, dlq_topic = settings.topics.valid, settings.topics.dead_letter
        stage = self.dedupe_stage
        started = time.perf_counter()
        batch = [(e.message.partition, e.message.offset, e.message.value) for e in events]
        for partition in {p for p, _, _ in batch}:
            if not stage.has_partition(partition):
                stage.restore(partition, self._dedupe_entries(partition))
        result = stage.process(batch, int(time.time() * 1000))
        pending = []
        for partition, items in result.valid.items():
            for chunk in pack_valid(items, MAX_ENVELOPE_BYTES):
                pending.append(
                    await self.app.producer.send(valid_topic, None, chunk, partition, None, None)
                )
        dead_sent = [
            (d, await self.app.producer.send(dlq_topic, d.key, d.value, None, None, d.headers))
            for d in result.dead
        ]
        for channel, count in result.channels.items():
            metrics.VALID_EVENTS.labels(channel).inc(count)
        if result.dead:
            metrics.DEAD_LETTERS.labels(DUPLICATE_REASON).inc(len(result.dead))
        if result.replayed:
            metrics.INGEST_REPLAYED.inc(result.replayed)
        # Output delivered BEFORE the state that vouches for it: a crash in between replays
        # the batch as new events (downstream is idempotent) instead of refusing them as
        # duplicates of events that never left. Both before the ack.
        await asyncio.gather(*pending)
        await self._deliver_dead_letters(dlq_topic, dead_sent)
        shard = TableShard(self.dedupe_table, self.app.producer)
        for partition, key, value in result.state_puts:
            shard.put(partition, key, value)
        for partition, key in result.state_deletes:
            shard.delete(partition, key)
        await asyncio.gather(*(await shard.flush_async()))
        metrics.EVENTS_CONSUMED.labels(settings.topics.checked).inc(len(events))
        topic = settings.topics.checked
        self._export_lag("dedupe", [RawMessage(topic, p, o, None, None) for p, o, _ in batch])
        metrics.DEDUPE_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _identity_batch(self, events: list[Any]) -> None:
        """LINK ops from ingest + protocol ops from itself -> state, new ops, outputs."""
        try:
            await self._identity_step(events)
        except BaseException:
            # Handlers mutate the decoded states they read: a batch that does not finish
            # leaves none of them behind (``streams.identity.cache``).
            for partition in {e.message.partition for e in events}:
                self._identity_states.forget(partition)
            raise

    async def _identity_step(self, events: list[Any]) -> None:
        settings, t = self.settings, self.settings.topics
        n = settings.topic_partitions
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        by_partition: dict[int, list[Any]] = defaultdict(list)
        refusals: list[Refusal] = []
        rules = self.identity_rules
        for e in events:
            msg = e.message
            ops = by_partition[msg.partition]
            if msg.topic == t.valid:
                for v in read_valid(msg.value):
                    # the event travels as {"a": anchor, "r": record}, the record's bytes as
                    # ingest encoded them (``streams.wire.valid``): never parsed here
                    event = {"a": v.anchor, "r": v.record_json()}
                    link, refused = link_ops(v.keys, v.event_id, v.ts, event, rules)
                    ops.extend(link)
                    refusals.extend(refused)
            else:
                ops.extend(op_from_json(item) for item in unpack(msg.value))
        shard = TableShard(self.identity_table, self.app.producer)
        stored = self.identity_table.data
        stamps = TableShard(self.identity_table, self.app.producer)
        out_ops: list[tuple[str, Any]] = []
        outputs: list[Any] = list(refusals)
        views = []
        for partition, ops in by_partition.items():
            view = TableStates(shard, stored, n, partition, self._identity_states)
            views.append(view)
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
        for view in views:
            view.remember()
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
                item = out.event  # {"a": anchor, "r": record} (the record's JSON as it came)
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
            try:
                out = stage.process(items, data, now_ms)
                await self._emit_customer_outputs(out)
            except BaseException:
                # (``_guarded`` forgets on an error too; this also covers a cancellation)
                self._forget_customers(items)
                raise

    def _forget_customers(self, partitions: Any) -> None:
        """A customer batch or tick that did not store its state: what the stage holds in
        memory for them (its aggregates, its cache of decoded values, which the batch
        may have changed in place) goes; the next batch reads the table."""
        for partition in partitions:
            self.customer_stage.forget(partition)

    async def _emit_customer_outputs(self, out: Any) -> None:
        """Alerts, rows and hand-overs in one round trip (delivered), then the state: a crash
        in between replays the batch, which re-raises the same alert ids (rather than losing
        an alert to a cooldown the state already recorded) into the same row keys and
        versions. Alerts and rows need no order between them, only both before the state:
        a batch waits for two round trips to the broker instead of three."""
        settings, t = self.settings, self.settings.topics
        metrics.CUSTOMER_EVENTS.inc(out.events)
        metrics.CUSTOMER_DUPLICATES.inc(out.duplicates)
        pending = []
        if out.alerts:
            producer = self.app.producer
            alert_codec = await self._output_codec()
            for alert in out.alerts:
                value = alert_codec.encode(dict(alert))
                key = alert["customer_id"].encode()
                pending.append(await producer.send(t.alerts, key, value, None, None, None))
                metrics.ALERTS.labels(alert["rule"], alert["severity"]).inc()
        metrics.LATE_EVENTS.inc(out.late_events)
        n = settings.topic_partitions
        for p, handovers in group_by_partition(out.handovers, n).items():
            pending.extend(await self._send_envelopes(t.resolved, p, handovers))
        rows = encode_rows([*out.aggregate_rows, *out.alert_rows, *out.c360_rows])
        if rows:
            pending.extend(await self._send_envelopes(t.aggregates, 0, rows))
        # Alerts, rows and hand-overs delivered BEFORE the state that records them as written.
        await asyncio.gather(*pending)
        if out.alerts and self.webhooks is not None:
            for alert in out.alerts:
                self.webhooks.enqueue(alert)
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
        in_memory = self.settings.table_store.startswith("memory")
        for table in (self.dedupe_table, self.identity_table, self.customer_table):
            metrics.TABLE_KEYS.labels(table.name).set(len(table.data))
            if in_memory:  # (a RocksDB store would be read from disk)
                held = sum(len(k) + len(v or b"") for k, v in table.data.items())
                metrics.TABLE_BYTES.labels(table.name).set(held)
        data = StoredView(self.customer_table)
        now_ms = int(time.time() * 1000)
        resolved = self.settings.topics.resolved
        partitions = sorted(
            tp.partition for tp in self.app.consumer.assignment() if tp.topic == resolved
        )
        if partitions:
            async with self._customer_lock:
                try:
                    out = self.customer_stage.tick(partitions, data, now_ms, idle_ms)
                    if out.state_puts or out.alerts:
                        await self._emit_customer_outputs(out)
                except BaseException:
                    self._forget_customers(partitions)
                    raise

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

    def _dedupe_entries(self, partition: int) -> list[tuple[str, dict[str, Any]]]:
        prefix = f"{partition}:"
        return list(StoredView(self.dedupe_table).items_with_prefix(prefix))
