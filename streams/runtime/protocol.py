"""The one batch protocol every agent runs: a batch is retried with back-off until its
output is delivered, then its state, and only then acked (``_guarded``); output envelopes
(``_send_envelopes``); dead letters that always fit; lag export; and the rebalance hooks
(in-flight batches may finish, up to ``REVOKE_WAIT_SECONDS``)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP

from streams import metrics
from streams.runtime import gc_tuning
from streams.runtime.parts import TOO_LARGE, PipelineParts, log
from streams.wire.codec import (
    SchemaUnavailableError,
)
from streams.wire.dlq import RawMessage, dead_letter, shrink
from streams.wire.envelope import pack_chunks

POISON_ATTEMPTS = 3
"""Deterministic failures in a row before a batch is taken apart message by message."""
INTERNAL_ERROR = "internal_error"


def is_deterministic(exc: BaseException) -> bool:
    """An error the same input raises again (bad data, a bug), not the broker's or the network's
    (aiokafka/Faust errors, OSError, timeouts) nor the registry's: only those isolate a batch."""
    if isinstance(exc, OSError | TimeoutError | SchemaUnavailableError):
        return False
    module = type(exc).__module__
    if module.startswith(("aiokafka", "kafka", "faust", "mode")):
        return False
    return isinstance(
        exc, ValueError | TypeError | LookupError | AttributeError | ArithmeticError | struct.error
    )


class PipelineProtocol(PipelineParts):
    async def _guarded(
        self,
        stage: str,
        process: Callable[[list[Any]], Any],
        events: list[Any],
        ack: Callable[[list[Any]], Awaitable[None]],
    ) -> None:
        """Process a batch until it succeeds; only then ack it (so offsets can commit).

        A failure (Kafka errors, a bug) is retried with back-off; the stage's in-memory state
        is dropped so the retry starts from the table state. The partition stalls rather than
        losing or skipping the batch; ``/readyz`` says so. A batch that fails
        ``POISON_ATTEMPTS`` times in a row with an error that is not the broker's or the
        registry's (``is_deterministic``: a message the stage cannot process, e.g. a foreign
        writer's bytes on an internal topic) is taken apart: its messages are processed one by
        one, each under the same protocol, and one that still fails so is dead-lettered
        (``internal_error``, its original bytes, the stage in the detail). One poisoned
        message can then no longer stop its stage for good.
        """
        self._inflight += 1
        self._idle.clear()
        started = time.time()
        stamps = [e.message.timestamp for e in events if e.message.timestamp]
        if stamps:
            metrics.STAGE_INPUT_WAIT_SECONDS.labels(stage).observe(max(0.0, started - min(stamps)))
        try:
            if await self._until_done(stage, process, events, isolate=True):
                await self._isolate(stage, process, events)
            self.failing.discard(stage)
            metrics.STAGE_BATCH_SECONDS.labels(stage).observe(time.time() - started)
            await ack(events)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _until_done(
        self, stage: str, process: Callable[[list[Any]], Any], events: list[Any], *, isolate: bool
    ) -> BaseException | None:
        """Retry ``process(events)`` until it succeeds (None), or, with ``isolate``, until it
        failed deterministically ``POISON_ATTEMPTS`` times in a row (that error)."""
        delay, deterministic = 0.5, 0
        while True:
            try:
                await process(events)
                return None
            except asyncio.CancelledError:
                raise
            except SchemaUnavailableError as exc:  # waits for the registry, says so briefly
                log.warning(
                    "%s batch waits for the schema registry (%s); retrying in %.1fs",
                    stage,
                    exc,
                    delay,
                )
                deterministic = 0
            except Exception as exc:
                self._forget(events)
                deterministic = deterministic + 1 if is_deterministic(exc) else 0
                if deterministic >= POISON_ATTEMPTS or (deterministic and not isolate):
                    return exc
                log.exception("%s batch failed; retrying in %.1fs", stage, delay)
            metrics.STAGE_FAILURES.labels(stage).inc()
            self.failing.add(stage)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _isolate(
        self, stage: str, process: Callable[[list[Any]], Any], events: list[Any]
    ) -> None:
        """The batch's messages one by one; a message that fails deterministically on its own
        is dead-lettered; transient failures are retried as for a whole batch."""
        log.error(
            "%s batch keeps failing: processing its %d messages one by one", stage, len(events)
        )
        dlq = self.settings.topics.dead_letter
        for event in events:
            exc = await self._until_done(stage, process, [event], isolate=False)
            if exc is None:
                continue
            m = event.message
            msg = RawMessage(m.topic, m.partition, m.offset, m.key, m.value)
            detail = f"{stage} stage: {type(exc).__name__}: {exc}"
            log.error("dead-lettering %s[%d]@%d: %s", m.topic, m.partition, m.offset, detail)
            dead = dead_letter(
                msg,
                INTERNAL_ERROR,
                detail,
                int(time.time() * 1000),
                self.settings.dead_letter_max_bytes,
            )
            producer = self.app.producer
            future = await producer.send(dlq, dead.key, dead.value, None, None, dead.headers)
            await self._deliver_dead_letters(dlq, [(dead, future)])
            metrics.DEAD_LETTERS.labels(INTERNAL_ERROR).inc()

    def _forget(self, events: list[Any]) -> None:
        """Drop the in-memory state of the events' partitions: the next try reads the tables."""
        for partition in {e.message.partition for e in events}:
            self.dedupe_stage.forget(partition)
            self.customer_stage.forget(partition)
            self._resolutions.pop(partition, None)
            self._identity_states.forget(partition)

    async def _send_envelopes(self, topic: str, partition: int, items: list[Any]) -> list[Any]:
        """Send ``items`` to one partition as envelopes under the size limit."""
        producer = self.app.producer
        return [
            await producer.send(topic, None, chunk, partition, None, None)
            for chunk in pack_chunks(items)
        ]

    def _export_lag(self, stage: str, messages: list[RawMessage]) -> None:
        """The stage's lag per partition of the batch. Best effort: a batch fetched before a
        rebalance can finish after its partition moved to another worker, and aiokafka's
        ``highwater`` *asserts* the partition is assigned; that AssertionError (not
        deterministic, so retried) once failed such a batch forever after its output was
        delivered, stalling the whole stage (measured in the two-worker kill test)."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            last[(m.topic, m.partition)] = m.offset
        consumer = self.app.consumer
        for (topic, partition), offset in last.items():
            try:
                highwater = consumer.highwater(TP(topic, partition))
            except Exception:  # noqa: BLE001, S112 - a gauge never fails the batch it describes
                continue
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
                self._identity_states.forget(tp.partition)
            elif tp.topic == self.settings.topics.identity_ops:
                self._identity_states.forget(tp.partition)

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
