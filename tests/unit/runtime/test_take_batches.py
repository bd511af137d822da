"""``take_batches``: what is queued when a batch ends is the next batch, at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.runtime.faust_patches import take_batches


class _Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _Sensors:
    def __init__(self) -> None:
        self.in_: list[int] = []

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.in_.append(offset)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None


class _Channel:
    def __init__(self) -> None:
        flow = FlowControlEvent(initially_suspended=False)
        self.queue: ThrowableQueue[Any] = ThrowableQueue(flow_control=flow)

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> Any:  # never called: the batches read the queue
        raise AssertionError("read through the queue")


def _stream() -> Any:
    app = SimpleNamespace(
        flow_control=_Flow(),
        topics=SimpleNamespace(acking_topics={"t"}),
        consumer=SimpleNamespace(unacked=set()),
        sensors=_Sensors(),
        consumer_generation_id=1,
    )
    return SimpleNamespace(app=app, channel=_Channel(), should_stop=False)


class _Message:  # hashable, as Faust's messages are (the consumer keeps a set of them)
    def __init__(self, offset: int, generation: int) -> None:
        self.topic, self.tp, self.offset = "t", ("t", 0), offset
        self.generation_id, self.tracked = generation, False


def _event(offset: int, generation: int = 1) -> Any:
    return SimpleNamespace(message=_Message(offset, generation))


def _offsets(batch: list[Any]) -> list[int]:
    return [e.message.offset for e in batch]


def test_a_batch_is_everything_queued_up_to_the_size() -> None:
    async def scenario() -> list[list[int]]:
        stream = _stream()
        for offset in range(5):
            stream.channel.queue.put_nowait(_event(offset))
        batches = take_batches(stream, 3, linger=0.0)
        first = _offsets(await anext(batches))
        second = _offsets(await anext(batches))
        assert stream.app.consumer.unacked and stream.app.sensors.in_ == [0, 1, 2, 3, 4]
        return [first, second]

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4]]


def test_an_idle_stage_waits_the_linger_for_more_a_busy_one_does_not() -> None:
    async def scenario() -> list[list[int]]:
        stream = _stream()
        queue = stream.channel.queue
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, queue.put_nowait, _event(0))  # into an empty queue: idle
        loop.call_later(0.03, queue.put_nowait, _event(1))
        batches = take_batches(stream, 10, linger=0.5)
        idle = _offsets(await anext(batches))
        queue.put_nowait(_event(2))  # queued while the batch ran: busy
        loop.call_later(0.03, queue.put_nowait, _event(3))
        busy = _offsets(await anext(batches))
        return [idle, busy]

    assert asyncio.run(scenario()) == [[0, 1], [2]]


def test_messages_of_an_earlier_generation_or_while_flow_is_off_are_skipped() -> None:
    async def scenario() -> list[int]:
        stream = _stream()
        queue = stream.channel.queue
        queue.put_nowait(_event(0, generation=0))  # fetched before the rebalance
        queue.put_nowait(_event(1))
        queue.put_nowait(_event(2))
        batches = take_batches(stream, 2, linger=0.0)
        taken = _offsets(await anext(batches))
        stream.app.flow_control.active = False  # a rebalance: read while suspended
        queue.put_nowait(_event(3))
        following = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.01)
        stream.app.flow_control.active = True
        queue.put_nowait(_event(4))
        return taken + _offsets(await following)

    assert asyncio.run(scenario()) == [1, 2, 4]


def test_the_stream_ending_ends_the_batches() -> None:
    async def scenario() -> list[list[int]]:
        stream = _stream()
        queue = stream.channel.queue
        got = []
        batches = take_batches(stream, 10, linger=5.0)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, queue.put_nowait, _event(0))  # idle: the batch lingers
        loop.call_later(0.03, queue._throw, StopAsyncIteration())
        async for batch in batches:
            got.append(_offsets(batch))
        return got

    assert asyncio.run(scenario()) == []


def test_a_rebalance_while_a_batch_lingers_drops_what_it_had_taken() -> None:
    async def scenario() -> list[int]:
        stream = _stream()
        queue = stream.channel.queue
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, queue.put_nowait, _event(0))  # idle: the batch lingers

        def rebalance() -> None:
            stream.app.consumer_generation_id = 2
            queue.put_nowait(_event(0, generation=2))  # read again after the seek

        loop.call_later(0.03, rebalance)
        return _offsets(await anext(take_batches(stream, 10, linger=0.1)))

    assert asyncio.run(scenario()) == [0]
