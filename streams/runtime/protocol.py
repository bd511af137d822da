"""The one batch protocol every agent runs: a batch is retried with back-off until its
output is delivered, then its state, and only then acked (``_guarded``); output envelopes
(``_send_envelopes``); dead letters that always fit; lag export; and the rebalance hooks
(in-flight batches may finish, up to ``REVOKE_WAIT_SECONDS``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from faust.types import TP

from streams import metrics
from streams.runtime import gc_tuning
from streams.runtime.parts import TOO_LARGE, PipelineParts, log
from streams.wire.codec import (
    SchemaUnavailableError,
)
from streams.wire.dlq import RawMessage, shrink
from streams.wire.envelope import pack_chunks


class PipelineProtocol(PipelineParts):
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
        started = time.time()
        stamps = [e.message.timestamp for e in events if e.message.timestamp]
        if stamps:
            metrics.STAGE_INPUT_WAIT_SECONDS.labels(stage).observe(max(0.0, started - min(stamps)))
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
                        self.dedupe_stage.forget(partition)
                        self.customer_stage.forget(partition)
                        self._resolutions.pop(partition, None)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            self.failing.discard(stage)
            metrics.STAGE_BATCH_SECONDS.labels(stage).observe(time.time() - started)
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
            if tp.topic == self.settings.topics.checked:
                self.dedupe_stage.forget(tp.partition)
            elif tp.topic == self.settings.topics.resolved:
                self.customer_stage.forget(tp.partition)
            elif tp.topic == self.settings.topics.valid:
                self._resolutions.pop(tp.partition, None)

    async def _on_rebalanced(self, app: Any, **kwargs: Any) -> None:
        """Recovery is over: what is alive now is long-lived (``streams.runtime.gc_tuning``)."""
        gc_tuning.freeze(self.settings)
        self.ready = True

    async def _deliver_dead_letters(self, topic: str, sent: list[tuple[Any, Any]]) -> None:
        """Wait for the dead letters; one the broker refuses as too large (its limit is below
        ``DEAD_LETTER_MAX_BYTES``) goes again cut to a few KiB, so no message can hold its
        batch — and every partition of this worker — back for good."""
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        again = []
        for (dead, _), outcome in zip(sent, results, strict=True):
            if isinstance(outcome, TOO_LARGE):
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
