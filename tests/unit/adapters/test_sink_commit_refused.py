from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from streams import metrics
from streams.adapters.sink import SinkService
from streams.settings import Settings


class _Sink:
    def __init__(self) -> None:
        self.rejected: list[Any] = []
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1


class _RefusingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        raise CommitFailedError("the group has already rebalanced")


def test_a_commit_refused_after_a_rebalance_does_not_stop_the_sink() -> None:
    executor = ThreadPoolExecutor(1)
    service = SinkService(Settings(), lambda: None, executor)  # type: ignore[arg-type,return-value]
    sink, consumer = _Sink(), _RefusingConsumer()
    service.sink, service.consumer = sink, consumer  # type: ignore[assignment]
    tp = TopicPartition("touchpoints.resolved", 3)
    service._positions[tp] = 42
    before = metrics.SINK_COMMITS_REFUSED._value.get()
    try:
        asyncio.run(service.flush_and_commit())  # raised CommitFailedError before
    finally:
        executor.shutdown()
    assert sink.flushed == 1 and consumer.commits == [{tp: 42}]
    # the rows are in ClickHouse; the partition is read again from its committed offset
    assert tp not in service._positions
    assert metrics.SINK_COMMITS_REFUSED._value.get() == before + 1
