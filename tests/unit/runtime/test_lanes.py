"""Lanes: a batch agent's messages without Faust's per-message delivery path."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.runtime.lanes import Lane, ack, lane_batches


class _Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _Consumer:
    def __init__(self) -> None:
        self.unacked: set[Any] = set()
        self.acked: list[int] = []
        self.full: list[Any] = []
        self.dropped: list[Any] = []

    def on_buffer_full(self, tp: Any) -> None:
        self.full.append(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self.dropped.append(tp)


class _Message:  # hashable, as Faust's messages are (the consumer keeps a set of them)
    def __init__(self, offset: int, generation: int = 1, topic: str = "t", size: int = 10) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.tp = (topic, 0)  # aiokafka's TopicPartition: a tuple, not Faust's TP
        self.value = b"x" * size
        self.generation_id, self.tracked = generation, False

    def ack(self, consumer: _Consumer) -> bool:  # Faust's Message.ack ends in consumer.ack
        consumer.acked.append(self.offset)
        consumer.unacked.discard(self)
        return True


def _app() -> Any:
    return SimpleNamespace(
        flow_control=_Flow(),
        topics=SimpleNamespace(acking_topics={"t"}),
        consumer=_Consumer(),
        consumer_generation_id=1,
        monitor=SimpleNamespace(stream_inbound_time={}),
    )


def _stream(app: Any) -> Any:
    return SimpleNamespace(app=app, should_stop=False)


def _offsets(batch: list[Any]) -> list[int]:
    return [e.message.offset for e in batch]


def test_a_batch_is_everything_queued_up_to_the_size_and_is_tracked() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=100, max_bytes=1 << 20)
        for offset in range(5):
            assert lane.put(_Message(offset))
        batches = lane_batches(lane, _stream(app), 3, linger=0.0)
        first = await anext(batches)
        assert _offsets(first) == [0, 1, 2]
        assert {m.offset for m in app.consumer.unacked} == {0, 1, 2}
        assert _offsets(await anext(batches)) == [3, 4]
        # Faust's livelock check sees the partition's stream taking events
        assert set(app.monitor.stream_inbound_time) == {("t", 0)}
        ack(app, first)
        assert app.consumer.acked == [0, 1, 2]
        assert {m.offset for m in app.consumer.unacked} == {3, 4}

    asyncio.run(scenario())


def test_messages_of_a_non_acking_topic_are_not_tracked() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["u"], maxsize=100, max_bytes=1 << 20)
        lane.put(_Message(0, topic="u"))
        batch = await anext(lane_batches(lane, _stream(app), 10, linger=0.0))
        assert _offsets(batch) == [0] and not app.consumer.unacked

    asyncio.run(scenario())


def test_earlier_generations_and_messages_taken_while_flow_is_suspended_are_skipped() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=100, max_bytes=1 << 20)
        lane.put(_Message(0, generation=0))
        lane.put(_Message(1))
        batches = lane_batches(lane, _stream(app), 10, linger=0.0)
        assert _offsets(await anext(batches)) == [1]
        app.flow_control.active = False  # a rebalance: what is taken now is read again later
        lane.put(_Message(2))
        app.consumer_generation_id = 2
        app.flow_control.active = True
        lane.put(_Message(3, generation=2))
        assert _offsets(await anext(batches)) == [3]
        assert {m.offset for m in app.consumer.unacked} == {1, 3}

    asyncio.run(scenario())


def test_an_idle_stage_lingers_for_more_and_a_waiting_agent_wakes_on_a_put() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=100, max_bytes=1 << 20)
        batches = lane_batches(lane, _stream(app), 10, linger=0.2)
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing queued yet
        lane.put(_Message(0))
        await asyncio.sleep(0.02)
        lane.put(_Message(1))  # within the linger: same batch
        assert _offsets(await waiting) == [0, 1]

    asyncio.run(scenario())


def test_a_full_lane_pauses_the_partition_and_makes_delivery_wait() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=8, max_bytes=1 << 20)  # pauses at 6, resumes at 2 or fewer
        results = [lane.put(_Message(offset)) for offset in range(8)]
        assert results == [True] * 7 + [False]
        assert app.consumer.full == [TP("t", 0)]  # once, at the high mark, Faust's TP
        assert all(isinstance(tp, TP) for tp in app.consumer.full)
        space = asyncio.ensure_future(lane.space())
        await asyncio.sleep(0.01)
        assert not space.done()
        lane.take(1)
        await asyncio.wait_for(space, 1.0)
        assert not app.consumer.dropped  # 7 left: still above the low mark
        lane.take(5)
        assert app.consumer.dropped == [TP("t", 0)]
        assert all(isinstance(tp, TP) for tp in app.consumer.dropped)
        assert not lane.paused

    asyncio.run(scenario())


def test_a_stopped_stream_ends_the_batches() -> None:
    async def scenario() -> list[Any]:
        app = _app()
        stream = _stream(app)
        lane = Lane(app, ["t"], maxsize=10, max_bytes=1 << 20)
        stream.should_stop = True
        return [batch async for batch in lane_batches(lane, stream, 10, linger=0.0)]

    assert asyncio.run(scenario()) == []


def test_a_worker_stopping_while_an_agent_waits_logs_no_shutdown_error() -> None:
    """A stopping worker shuts the loop's async generators down while its agents still wait
    for messages (Faust's shutdown): an async generator suspended in that wait was reported
    ("aclose(): asynchronous generator is already running"), once per agent."""
    errors: list[dict[str, Any]] = []

    async def agent(lane: Lane, stream: Any) -> None:
        async for _ in lane_batches(lane, stream, 10, linger=0.0):
            pass

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    try:
        app = _app()
        task = loop.create_task(
            agent(Lane(app, ["t"], maxsize=10, max_bytes=1 << 20), _stream(app))
        )
        loop.run_until_complete(asyncio.sleep(0.05))  # the agent waits in the lane
        loop.run_until_complete(loop.shutdown_asyncgens())
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    finally:
        loop.close()
    assert errors == []


def test_a_lane_is_bounded_in_bytes_as_well_as_in_messages() -> None:
    """Envelopes are up to 512 KiB: a lane of big messages pauses and fills by bytes, and one
    take holds at most the lane's bytes (at least one message)."""

    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=1000, max_bytes=1000)  # pauses at 750 bytes
        assert [lane.put(_Message(offset, size=300)) for offset in range(4)] == [
            True,
            True,
            True,
            False,  # 1,200 bytes: full, delivery waits
        ]
        assert app.consumer.full == [TP("t", 0)]  # at the third message (900 >= 750)
        assert lane.bytes == 1200
        taken = lane.take(10)
        assert [m.offset for m in taken] == [0, 1, 2]  # 900 bytes; the fourth would pass 1,000
        assert lane.bytes == 300 and not app.consumer.dropped  # 300 > 250: still paused
        await asyncio.wait_for(lane.space(), 1.0)  # no longer full
        assert [m.offset for m in lane.take(10)] == [3]
        assert lane.bytes == 0 and app.consumer.dropped == [TP("t", 0)]
        lane.put(_Message(4, size=5000))  # bigger than the lane: still taken, alone
        assert [m.offset for m in lane.take(10)] == [4]

    asyncio.run(scenario())


def test_a_take_that_lingers_stays_within_the_lanes_bytes() -> None:
    async def scenario() -> None:
        app = _app()
        lane = Lane(app, ["t"], maxsize=1000, max_bytes=1000)
        batches = lane_batches(lane, _stream(app), 100, linger=0.3)
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.01)  # idle: the first message starts a linger
        lane.put(_Message(0, size=300))
        await asyncio.sleep(0.02)
        for offset in (1, 2, 3):  # during the linger: 1,200 bytes would pass the bound
            lane.put(_Message(offset, size=300))
        first = await waiting
        assert _offsets(first) == [0, 1, 2]  # 900 bytes; the next does not fit
        assert _offsets(await anext(batches)) == [3]

    asyncio.run(scenario())
