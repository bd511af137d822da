"""Running the whole pipeline in one process: for the tests and ``make eval``.

``running(settings)`` starts the Faust app (agents, tables, sink, web) in the current
event loop, yields the ``Pipeline`` and stops it cleanly. ``touchpoints worker`` runs
the same app under Faust's Worker; the default topology (``make run``, ``make bench``)
runs workers and the sink as separate processes (``streams.runtime.processes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from streams.adapters.clickhouse import ClickHouse
from streams.adapters.kafka import check_message_limits, create_topics
from streams.runtime.app import Pipeline
from streams.settings import Settings

__all__ = ["prepare", "query", "running", "wait_for"]

log = logging.getLogger(__name__)


def prepare(settings: Settings) -> list[str]:
    """Create the pipeline's topics (idempotent) and check that ``MAX_MESSAGE_BYTES`` fits
    their ``max.message.bytes`` (``ValueError`` if not). The sink migrates ClickHouse at
    start."""
    created = create_topics(settings)
    check_message_limits(settings)
    return created


@asynccontextmanager
async def running(
    settings: Settings,
    *,
    start_timeout: float = 60.0,
    clickhouse_factory: Callable[[], ClickHouse] | None = None,
    sink: bool = True,
) -> AsyncIterator[Pipeline]:
    """The whole pipeline in this process; with ``sink`` (the default here, whatever
    ``SINK_ENABLED`` says) the ClickHouse sink too, so the caller can query it."""
    if sink and not settings.sink_enabled:
        settings = settings.model_copy(update={"sink_enabled": True})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(settings, clickhouse_factory=clickhouse_factory)
    app = pipeline.app
    await asyncio.wait_for(app.start(), timeout=start_timeout)
    try:
        yield pipeline
    finally:
        await app.stop()
        pipeline.clickhouse_executor.shutdown(wait=True)


async def query(pipeline: Pipeline, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on the sink's ClickHouse client, in its thread (the owner process)."""
    sink = pipeline.sink
    if sink is None or sink.sink is None:
        raise RuntimeError("this process does not run the ClickHouse sink")
    client = sink.sink.client
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(pipeline.clickhouse_executor, client.query, sql)
    rows: list[tuple[Any, ...]] = result.result_rows
    return rows


async def wait_for(
    pipeline: Pipeline, sql: str, expected: int, *, timeout: float = 120.0, interval: float = 0.5
) -> int:
    """Poll a ``SELECT count()`` query until it reaches ``expected``; return the last value."""
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        sink = pipeline.sink
        if sink is not None and sink.sink is not None:
            value = int((await query(pipeline, sql))[0][0])
            if value >= expected:
                return value
        await asyncio.sleep(interval)
    return value


def run_bounded(coro: Any, cleanup_seconds: float = 10.0) -> Any:
    """``asyncio.run`` whose clean-up gives up on tasks that ignore cancellation.

    After a Faust app has stopped, a task of its consumer machinery can ignore the final
    cancel, and ``asyncio.run`` then waits for it forever (seen with ``make eval``).
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=cleanup_seconds))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
