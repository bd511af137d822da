"""A fetch the consumer thread cancelled is an empty fetch, not the fetch loop's end
(``BatchingConsumer._fetch``); the loop's own cancellation still ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from streams.runtime.faust_patches import AckEpochs, BatchingConsumer


def _consumer(getmany: Any) -> SimpleNamespace:
    return SimpleNamespace(
        _epochs=AckEpochs(),
        _fetch_lock=asyncio.Lock(),
        _fetch_owner=None,
        flow_active=True,
        getmany=getmany,
        log=logging.getLogger("test"),
    )


def test_a_cancellation_that_comes_back_from_the_consumer_thread_is_an_empty_fetch() -> None:
    async def getmany(timeout: float) -> AsyncIterator[Any]:
        promise: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        promise.set_exception(asyncio.CancelledError())  # what mode's thread call delivers
        yield await promise

    async def scenario() -> tuple[list[Any], int]:
        consumer = _consumer(getmany)
        result = await BatchingConsumer._fetch(consumer)  # type: ignore[arg-type]
        assert consumer._fetch_owner is None
        return result

    assert asyncio.run(scenario()) == ([], 0)


def test_the_fetch_loop_being_cancelled_still_ends_it() -> None:
    started = asyncio.Event()

    async def getmany(timeout: float) -> AsyncIterator[Any]:
        started.set()
        await asyncio.sleep(60)
        yield None

    async def scenario() -> None:
        task = asyncio.create_task(BatchingConsumer._fetch(_consumer(getmany)))  # type: ignore[arg-type]
        await started.wait()
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())
