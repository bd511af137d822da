"""Lanes: a batch agent's messages, handed over by the consumer without Faust's per-message path.

Faust delivers a consumed message through its conductor: per message a flow-control
acquire, a producer-buffer check, a channel decode into an ``Event``, a queue put with
pressure callbacks, and on the agent's side the stream's sensors and the ``Stream.ack`` →
``Event.ack`` → ``Message.ack`` chain. Measured with py-spy in a worker at a steady 1,000
events/s, that path was ~12 % of the worker's CPU, and on ``touchpoints.raw`` (one event
per message) it is paid per event. Our agents are batch loops over raw bytes: they need
none of it.

A ``Lane`` is registered for a batch agent's topics (``BatchingConsumer.lanes``); the
consumer's delivery loop (``streams.runtime.faust_patches``) appends each fetched message
of those topics to it directly. ``lane_batches`` takes what is queued, as ``take_batches``
takes from a stream's queue, and what Faust's stream does per message is kept:

* a message of an earlier consumer generation, or one taken while flow is suspended (a
  rebalance), is skipped: the seek after the rebalance reads it again;
* a message of an acking topic is tracked as unacked when it is taken, and acked with
  Faust's own ``Message.ack`` (``ack``) -- the offsets, gaps and commits are Faust's code;
* back-pressure is Faust's: a partition whose lane is ¾ full is paused in the fetcher
  (``Consumer.on_buffer_full``) and resumed when the lane drains to ¼ (``on_buffer_drop``);
  a full lane makes the delivery loop wait. Full is ``stream_buffer_maxsize`` messages or
  ``LANE_MAX_MB`` of message bytes, whichever comes first.

Only Faust's per-message sensors (its in-memory ``Monitor``, shown on its own web pages,
which this project does not serve) no longer count these messages -- except the time a
partition's stream last took one, which Faust's livelock check reads; the Prometheus
metrics (``streams.metrics``) never came from them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from time import monotonic
from typing import Any

from faust.types import TP

__all__ = ["Lane", "LaneEvent", "ack", "lane_batches"]

WAKE_SECONDS = 0.5
"""How often an idle agent looks whether its stream was stopped."""

HIGH, LOW = 0.75, 0.25
"""A partition is paused in the fetcher when its lane is this full, resumed at ``LOW``."""

LINGER_POLL_SECONDS = 0.002
"""How often a lingering batch looks for more messages."""


class LaneEvent:
    """What the agents read of an event: its message (Faust's ``ConsumerMessage``)."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class Lane:
    """The fetched, not yet taken messages of one batch agent's topics, bounded in count
    (``maxsize``) and in bytes (``max_bytes``): envelopes on the internal topics are up to
    512 KiB each, so a bound in messages alone let a lagging stage's lane hold gigabytes."""

    def __init__(self, app: Any, topics: Iterable[str], maxsize: int, max_bytes: int) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.maxsize = max(2, maxsize)
        self.max_bytes = max(1, max_bytes)
        self.queue: deque[Any] = deque()
        self.bytes = 0
        self.paused: set[Any] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Event = asyncio.Event()
        self._space.set()

    def fill(self) -> float:
        """How full the lane is: the larger of its count and bytes over their bounds."""
        return max(len(self.queue) / self.maxsize, self.bytes / self.max_bytes)

    def put(self, message: Any) -> bool:
        """Queue a fetched message; False when the lane is full (``await space()``)."""
        self.queue.append(message)
        self.bytes += len(message.value or b"")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        fill = self.fill()
        if fill >= HIGH:
            # Faust's own TP: the fetcher asserts its active partitions are (a message's
            # ``tp`` can be aiokafka's TopicPartition, an equal tuple of another type).
            tp = TP(message.topic, message.partition)
            if tp not in self.paused:
                self.paused.add(tp)
                self.app.consumer.on_buffer_full(tp)
        if fill >= 1.0:
            self._space.clear()
            return False
        return True

    async def space(self) -> None:
        await self._space.wait()

    def take(self, max_: int, max_bytes: int | None = None) -> list[Any]:
        """Up to ``max_`` queued messages, oldest first: at most ``max_bytes`` (by
        default what the lane holds), but at least one."""
        queue = self.queue
        taken: list[Any] = []
        size = 0
        budget = self.max_bytes if max_bytes is None else max_bytes
        while queue and len(taken) < max_:
            value = len(queue[0].value or b"")
            if taken and size + value > budget:
                break
            taken.append(queue.popleft())
            size += value
        self.bytes -= size
        fill = self.fill()
        if fill < 1.0:
            self._space.set()
        if self.paused and fill <= LOW:
            consumer = self.app.consumer
            for tp in self.paused:
                consumer.on_buffer_drop(tp)
            self.paused.clear()
        return taken

    async def wait(self, timeout: float) -> None:
        """Until a message is queued, at most ``timeout`` seconds."""
        if self.queue:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(timeout, _finish, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _finish(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _admit(app: Any, messages: list[Any], batch: list[LaneEvent]) -> None:
    """What Faust's stream does per message as it comes in (see the module docstring)."""
    if not messages or not app.flow_control.is_active():
        return
    generation = app.consumer_generation_id
    acking = app.topics.acking_topics
    add_unacked = app.consumer.unacked.add
    # Faust's livelock check reads when a stream last took an event of a partition (its
    # Monitor's ``on_stream_event_in``); without it, it logs "Stream has not started
    # processing" for partitions the lanes serve.
    monitor = getattr(app, "monitor", None)
    inbound = monitor.stream_inbound_time if monitor is not None else {}
    now = monotonic()
    for message in messages:
        if message.generation_id != generation:
            continue
        inbound[message.tp] = now
        if message.topic in acking and not message.tracked:
            message.tracked = True
            add_unacked(message)
        batch.append(LaneEvent(message))


class lane_batches:  # noqa: N801 - used like the generator it replaces
    """The lane's messages in batches of what is queued (up to ``max_``), as
    ``take_batches`` does for a stream: a busy stage takes what arrived during its batch
    before; one that was idle waits up to ``linger`` seconds after its first message for
    more. The caller acks each event with ``ack`` once it is done.

    An iterator object, not an async generator: a worker that stops cancels its agents
    while they wait here, and an async generator suspended in that wait made the event
    loop's shutdown log "aclose(): asynchronous generator is already running" per agent."""

    def __init__(self, lane: Lane, stream: Any, max_: int, linger: float) -> None:
        self.lane, self.stream, self.max_, self.linger = lane, stream, max_, linger

    def __aiter__(self) -> lane_batches:
        return self

    async def __anext__(self) -> list[LaneEvent]:
        lane, stream, max_ = self.lane, self.stream, self.max_
        app = stream.app
        loop = asyncio.get_running_loop()
        while not stream.should_stop:
            idle = not lane.queue
            if idle:
                await lane.wait(WAKE_SECONDS)
                if not lane.queue:
                    continue
            batch: list[LaneEvent] = []
            held = lane.bytes
            _admit(app, lane.take(max_), batch)
            size = held - lane.bytes  # the bytes taken (the lane counts them)
            deadline = loop.time() + (self.linger if idle else 0.0)
            while len(batch) < max_ and size < lane.max_bytes:
                if lane.queue:
                    # more, within the lane's bytes: a take of envelopes stays that size
                    if size + len(lane.queue[0].value or b"") > lane.max_bytes:
                        break
                    held = lane.bytes
                    _admit(app, lane.take(max_ - len(batch), lane.max_bytes - size), batch)
                    size += held - lane.bytes
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, LINGER_POLL_SECONDS))
            generation = app.consumer_generation_id  # a rebalance while the batch lingered
            batch = [e for e in batch if e.message.generation_id == generation]
            if batch:
                return batch
        raise StopAsyncIteration


def ack(app: Any, events: Iterable[Any]) -> None:
    """Ack the events' messages with Faust's ``Message.ack`` (the consumer's bookkeeping of
    acked offsets, gaps and commits)."""
    consumer = app.consumer
    for event in events:
        event.message.ack(consumer)
