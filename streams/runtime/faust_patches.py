"""FENCED: every override of Faust's and aiokafka's private internals lives here, and only here.

Patched upstream versions: faust-streaming 0.15.3, aiokafka 0.14.0 (``PATCHED_VERSIONS``;
pyproject pins ``<0.16`` / ``<0.15``). A test fails when the installed versions differ, so
an upgrade re-reads this module against the new upstream code before it ships.

A Faust transport whose consumer hands messages to streams a fetch batch at a time.

faust-streaming 0.15's consumer loop wraps *every* message in
``wait_first(callback(message), suspend_flow.wait())`` so that a rebalance can
interrupt a callback blocked on a full stream buffer. That is two task
creations and an ``asyncio.wait`` per message: measured here, it caps a no-op
agent at ~7,000 messages/s while aiokafka itself delivers 300,000+/s.

This consumer keeps the same semantics at batch granularity: one
``wait_first(deliver(batch), suspend_flow.wait())`` per ``getmany`` result. A
rebalance cancels the rest of the batch exactly as Faust cancels the one
message (the undelivered messages are not acked, so they are fetched again).
Offsets, gaps, acks and commits are Faust's own code paths.

The rebalance races closed here all lost messages in the two-worker kill test
(``tests/integration/test_identity_workers.py``):

* a message fetched before a rebalance never moves the read offset after it (the
  re-fetched copy would be dropped as already read);
* a partition without a committed offset is rewound after a rebalance
  (``seek_to_committed``);
* acks of an earlier generation are not recorded, and the ack bookkeeping restarts from
  the committed offsets after each seek;
* a seek is an epoch boundary (``AckEpochs``): it never overlaps a fetch (one lock), what was
  fetched or delivered before it is neither delivered after it nor acked (nor moves the read
  offset), and no ack is recorded for a partition between its revoke and its next seek. The
  stuck-offset fault of issue 12 was this race: recovery resumes the stream partitions, then
  awaits ``perform_seek`` (seconds under load) while the fetch loop runs; messages fetched from
  the old position were delivered and moved the read offset, their re-fetched copies were
  dropped as "already read", and the acks of the first copies were wiped by the seek's reset:
  the committed offset's message was never acked again while later ones were;
* resuming flow does not clear the stream buffers (``KeepBuffersOnResume``);
* an offset is committed only when the acked run starts exactly at the committed offset,
  and a commit that failed does not move the committed offset we keep in memory.

Registered as the ``tpkafka://`` transport (entry point ``faust.transports``);
``streams.runtime.app`` uses it (``broker=tpkafka://...``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.runtime.lanes import Lane

PATCHED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
"""The upstream releases whose private internals this module overrides (checked by a test)."""

__all__ = [
    "AckEpochs",
    "BatchingConsumer",
    "KeepBuffersOnResume",
    "Transport",
    "keep_buffers_on_resume",
    "set_fetch_max_wait",
    "take_batches",
]

EPOCH_ATTR = "_tp_ack_epoch"
"""The attribute a delivered message carries: the ``AckEpochs`` epoch it was delivered in."""


class AckEpochs:
    """Which deliveries and acks still count, around seeks and revokes (pure bookkeeping).

    The epoch moves on at every revoke and at the *start* of every seek. A fetched batch is
    delivered only if no seek started since its fetch began and none is running (the seek
    puts the partitions back at their committed offsets, so what it discards is fetched
    again); a message is tagged with the epoch it was delivered in, and its ack is recorded
    only in that same epoch, with no seek running, for a partition sought since its last
    revoke -- the ack bookkeeping then always describes messages delivered after the seek
    that reset it, from the committed offset on.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.seeking = 0
        self.sought: set[Any] = set()
        self.needs_seek = False  # the last seek failed or was cancelled: the fetch loop seeks

    def revoked(self, tps: Iterable[Any]) -> None:
        self.epoch += 1
        self.sought.difference_update(tps)

    def seek_started(self) -> None:
        self.epoch += 1
        self.seeking += 1

    def seek_ended(self, tps: Iterable[Any] | None) -> None:
        """``tps``: the partitions sought (None: the seek failed or was cancelled)."""
        self.seeking -= 1
        self.needs_seek = tps is None
        if tps is not None:
            self.sought.update(tps)

    def deliverable(self, fetched_in: int) -> bool:
        return not self.seeking and fetched_in == self.epoch

    def tag(self, message: Any, epoch: int) -> None:
        setattr(message, EPOCH_ATTR, epoch)

    def counts(self, message: Any, tp: Any) -> bool:
        return (
            not self.seeking
            and getattr(message, EPOCH_ATTR, None) == self.epoch
            and tp in self.sought
        )


class KeepBuffersOnResume(FlowControlEvent):
    """Faust's flow control, except that ``resume()`` does not empty the stream buffers.

    Faust empties every stream buffer on *each* resume. Recovery resumes the stream
    partitions, then seeks them to their committed offsets, then resumes flow: messages
    fetched from the sought position while the seek was being awaited are in the buffers
    with their read offsets recorded, and the resume throws them away. Nothing fetches
    them again (measured: the tail of a partition never processed, its lag stuck, while
    the consumer's fetch position is at the end). Keeping them is safe: they belong to
    the current generation, and a copy fetched again is only a duplicate for stages that
    are idempotent. The buffers are still emptied on revoke (``flow_control.clear()``),
    and the seek that follows every revoke fetches what they held again. (Since the seek
    became an epoch boundary -- ``AckEpochs``, ``BatchingConsumer.perform_seek`` -- nothing
    is fetched while it runs, and what the buffers hold from before it is processed but not
    acked, and fetched again: a replay, which every stage recognises.)
    """

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


def keep_buffers_on_resume(app: Any) -> None:
    """Install ``KeepBuffersOnResume`` as ``app.flow_control``; before any stream exists."""
    if "flow_control" in app.__dict__:
        raise RuntimeError("flow control is already in use: install it right after App()")
    app.flow_control = KeepBuffersOnResume(loop=app.loop)


def set_fetch_max_wait(app: Any, ms: int) -> None:
    """The worker consumer's ``fetch_max_wait_ms`` (Faust hard-codes 1,500)."""
    app._tp_fetch_max_wait_ms = ms


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with ``fetch_max_wait_ms`` from ``set_fetch_max_wait``.

    aiokafka keeps one fetch in flight per broker, and a partition whose records were
    still buffered when it was sent is left out of it: its next records wait for that
    fetch to return, which the broker holds up to ``fetch_max_wait_ms`` when the
    partitions in it have nothing new."""

    def _create_worker_consumer(self, transport: Any) -> Any:  # pragma: no cover - via Faust
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.consumer.app, "_tp_fetch_max_wait_ms", None)
        if wait is not None:  # read when the consumer starts its fetcher
            consumer._fetch_max_wait_ms = int(wait)
        return consumer


class BatchingConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs = AckEpochs()
        self._fetch_lock = asyncio.Lock()  # a fetch and a seek never overlap
        self._fetch_owner: asyncio.Task[Any] | None = None
        self._sought_now: set[TP] = set()
        self.lanes: dict[str, Lane] = {}  # topic -> the batch agent's lane (``lanes``)

    async def on_partitions_revoked(self, revoked: Any) -> None:  # pragma: no cover - via Faust
        """Faust's revoke; first, what was delivered so far stops counting (its acks would
        otherwise be recorded with no committed offset to guard them, until the next seek)."""
        self._epochs.revoked(revoked)
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:  # pragma: no cover - via Faust
        """Faust's seek to the committed offsets as one step for the fetch loop: no fetch runs
        while it does, and nothing fetched or delivered before it counts after it. An
        in-flight commit may land after it: that only replays (it moves the committed offset
        forward, and the acks below it are refused)."""
        epochs = self._epochs
        epochs.seek_started()
        sought = None
        try:
            if self._fetch_owner is asyncio.current_task():
                sought = await self._seek_committed()  # from getmany, inside the fetch lock
            else:
                async with self._fetch_lock:
                    sought = await self._seek_committed()
        finally:
            epochs.seek_ended(sought)

    async def _seek_committed(self) -> set[TP]:  # pragma: no cover - via Faust
        self._sought_now = set()
        await super().perform_seek()
        return self._sought_now

    def _new_consumer_thread(self) -> Any:  # pragma: no cover - via Faust
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:  # pragma: no cover - via Faust
        """Seek to the committed offsets, and rewind partitions that have none.

        aiokafka's ``seek_to_committed`` skips a partition whose committed offset is
        missing or 0, leaving its fetch position where it was. After a rebalance that keeps
        such a partition here, the messages fetched in the old generation and dropped with
        the stream buffers are then never read again, and later acks commit past them
        (Faust guards that only for a non-zero committed offset). Measured here: identity
        ops lost, customers left unmerged. No committed offset means nothing is durably
        processed, so such a partition starts again from the beginning (our
        ``auto_offset_reset``); changelogs are left to table recovery.
        """
        committed = await super().seek_to_committed()
        # Acks recorded before this point belong to an earlier assignment (batches that
        # finished during the revoke): forget them, so what is committed next is exactly
        # what is processed again from the committed offset. Faust consumes its ack list
        # *before* a commit succeeds, so a commit failed by the rebalance otherwise leaves
        # a hole at the head that blocks the partition for good (measured: lag that never
        # drains, read offsets at the end).
        for tp in committed:
            ftp = TP(tp.topic, tp.partition)
            self._sought_now.add(ftp)
            self._acked.pop(ftp, None)
            self._acked_index.pop(ftp, None)
            self._gap.pop(ftp, None)
        rewind = {
            tp
            for tp, offset in committed.items()
            if not offset and not tp.topic.endswith("-changelog")
        }
        if rewind:
            thread = self._thread
            consumer = thread._ensure_consumer()
            await thread.call_thread(
                consumer.seek_to_beginning, *faust_aiokafka.ensure_aiokafka_TPset(rewind)
            )
        return committed

    def _new_offset(self, tp: TP) -> int | None:  # pragma: no cover - via Faust
        """Faust's next offset to commit, without its off-by-one: Faust commits past the
        committed offset when the acked run starts one *after* it (``min(acked) -
        committed > 1``), i.e. with the message at the committed offset never acked."""
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed and not self._gap[tp] and min(acked) > committed:
            return None
        return super()._new_offset(tp)

    async def _commit_offsets(  # pragma: no cover - via Faust
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        """Faust's commit, except that a failed commit (a rebalance in between) leaves the
        committed offsets we keep in memory as they were: Faust records them anyway, and
        then refuses the acks of the messages it reads again as already committed."""
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        did_commit = bool(await super()._commit_offsets(offsets, start_new_transaction))
        if not did_commit:
            for tp, offset in before.items():
                if self._committed_offset.get(tp) == offsets[tp]:
                    self._committed_offset[tp] = offset
        return did_commit

    def ack(self, message: Any) -> bool:  # pragma: no cover - via Faust
        """Record an ack only for a message of the current assignment: a batch fetched
        before a rebalance may finish after it, and its offsets are read again from the
        committed offset (acking them now could commit past messages not yet re-read). The
        same holds within a generation across a seek, and between a revoke and the next
        seek (``AckEpochs.counts``)."""
        if message.generation_id != self.app.consumer_generation_id:
            return False
        if not self._epochs.counts(message, message.tp):
            return False
        accepted = bool(super().ack(message))
        return accepted

    async def _fetch(self) -> tuple[list[tuple[Any, Any]], int]:  # pragma: no cover - via Faust
        """One fetch under the fetch lock, and the epoch it began in (none while a seek
        waits: what it fetched would be thrown away)."""
        epochs = self._epochs
        async with self._fetch_lock:
            fetched_in = epochs.epoch
            if epochs.seeking or not self.flow_active:
                return [], fetched_in
            task = self._fetch_owner = asyncio.current_task()
            try:
                return [item async for item in self.getmany(timeout=1.0)], fetched_in
            except asyncio.CancelledError:
                if task is None or task.cancelling():
                    raise  # this loop is being cancelled
                # The consumer thread's fetch was cancelled (aiokafka, in a reassignment) and
                # the CancelledError came back as its result: nothing was fetched. Faust's
                # fetcher took it for its own cancellation during a rebalance and crashed the
                # worker (seen twice in 11 loaded runs of the two-worker kill test).
                self.log.info("fetch cancelled in the consumer thread; fetching again")
                return [], fetched_in
            finally:
                self._fetch_owner = None

    async def _deliver(  # pragma: no cover - via Faust
        self, batch: list[tuple[Any, Any]], fetched_in: int
    ) -> None:
        """Hand a fetched batch to the streams, as Faust's loop does message by message,
        until a rebalance or a seek makes the rest stale."""
        app, epochs, callback = self.app, self._epochs, self.callback
        read_offset, lanes = self._read_offset, self.lanes
        if lanes:
            # Once per fetch what Faust's conductor does per message for a lane's topics
            # (``streams.runtime.lanes``): wait while flow is suspended or the producer's
            # buffer is full.
            await app.flow_control.acquire()
            await app.producer.buffer.wait_until_ebb()
        for n, (tp, message) in enumerate(batch):
            if n and not n % 500:
                await asyncio.sleep(0)  # let health checks and timers run
            if message.generation_id != app.consumer_generation_id or not epochs.deliverable(
                fetched_in
            ):
                # A rebalance or a seek since the fetch: the partitions are (being) sought
                # back to their committed offsets, and the rest is fetched again. Moving
                # the read offset past it now would drop the re-fetched messages as
                # "already read" -- measured: lost events, and lag that never drains.
                return
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and app.topics.acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                commit_every = self._commit_every
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                if not epochs.deliverable(fetched_in):
                    return
                epochs.tag(message, fetched_in)
                lane = lanes.get(tp.topic)
                if lane is None:
                    await callback(message)
                elif not lane.put(message):
                    await lane.space()
                if message.generation_id != app.consumer_generation_id or not (
                    epochs.deliverable(fetched_in)
                ):
                    return  # a rebalance or a seek came while it was being handed over
                read_offset[tp] = offset

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - via Faust
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        epochs = self._epochs
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if not self.flow_active:
                    # Wait here, not inside getmany: there it would hold the fetch lock, and
                    # a seek that comes before flow resumes would wait for it for good.
                    # (mode types the waitable as its own Event; an asyncio.Event works.)
                    await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
                    continue
                if epochs.needs_seek:
                    # A seek was cancelled or failed (a timeout in recovery, the broker
                    # away): until one succeeds, no ack counts, so seek here.
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - retried; never ends the loop
                        self.log.warning("seek to the committed offsets failed: %r", exc)
                        await self.sleep(1.0)
                    continue
                set_flag(CONSUMER_FETCHING)
                batch, fetched_in = await self._fetch()
                await self.sleep(0)
                if batch and not self.should_stop:
                    await self.wait_first(
                        self._deliver(batch, fetched_in), self.suspend_flow.wait()
                    )
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise


class Transport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


LINGER_POLL_SECONDS = 0.002
"""How often a lingering batch looks for more messages."""


async def take_batches(stream: Any, max_: int, linger: float) -> AsyncIterator[list[Any]]:
    """A stream's events in batches of what is queued (up to ``max_``), for ``noack`` use:
    the caller acks each event with ``stream.ack`` once it is done.

    Faust's ``take`` moves messages into its buffer one event-loop turn each (the
    stream's ``sleep(0)`` and processors per message), stops filling while the agent
    holds a batch, and then waits its ``within`` window from the end of that batch: on a
    busy loop a batch of the raw topic was a few dozen messages, each paying the batch's
    delivery round trips. Here the stream's channel queue, which keeps filling while a
    batch is processed, is drained at once. Only a batch whose first message found the
    queue empty (the stage was idle) waits up to ``linger`` seconds after it for more
    while it holds fewer than ``max_``: a busy stage batches by itself (what arrived
    during the batch before), an idle one does not send a round trip per message.

    What Faust's stream does per message is kept: a message of an earlier consumer
    generation, or one read while flow is suspended (a rebalance), is skipped (the seek
    after the rebalance reads it again), and a message is tracked as unacked and
    reported to the sensors as it comes in; the stream's end (Faust throws
    ``StopAsyncIteration`` into the queue) ends the batches. A batch taken when the
    stream ends is yielded no more (its messages are not acked: read again).
    """
    app = stream.app
    channel = aiter(stream.channel)
    queue = channel.queue
    flow = app.flow_control
    acking_topics = app.topics.acking_topics
    add_unacked = app.consumer.unacked.add
    on_message_in = app.sensors.on_message_in
    on_stream_event_in = app.sensors.on_stream_event_in
    loop = asyncio.get_running_loop()

    def admit(event: Any, batch: list[Any]) -> None:
        message = event.message
        if not flow.is_active() or message.generation_id != app.consumer_generation_id:
            return
        if message.topic in acking_topics and not message.tracked:
            message.tracked = True
            add_unacked(message)
            on_message_in(message.tp, message.offset, message)
        on_stream_event_in(message.tp, message.offset, stream, event)
        batch.append(event)

    while not stream.should_stop:
        batch: list[Any] = []
        try:
            idle = queue.empty()  # nothing queued: the stage waits for its first message
            admit(await queue.get(), batch)
            deadline = loop.time() + (linger if idle else 0.0)
            while len(batch) < max_:
                if not queue.empty():
                    admit(queue.get_nowait(), batch)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                # Polled, not ``wait_for(queue.get())``: on Python 3.11 a cancellation that
                # meets the get's completion is swallowed by wait_for, and the agent would
                # then outlive its stop. Lingering happens only when the stage was idle.
                await asyncio.sleep(min(remaining, LINGER_POLL_SECONDS))
        except StopAsyncIteration:  # Faust throws it into the queue when the stream stops
            return
        generation = app.consumer_generation_id  # a rebalance while the batch lingered
        batch = [e for e in batch if e.message.generation_id == generation]
        if batch:
            yield batch
