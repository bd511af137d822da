"""``touchpoints sink``: the process that owns ClickHouse.

The default topology is N workers (``SINK_ENABLED=false``: they never open ClickHouse)
and one sink process: it consumes the pipeline's output topics into ClickHouse
(``SinkService``) and, being the owner of the database (the embedded engine can be open
in one process only), serves what reads it over HTTP on ``WEB_PORT``:
``/customers/{id}/timeline``, ``/timeline?email=...``, plus ``/metrics``, ``/healthz``
and ``/readyz``. The demo (``make run``) runs it inside its own process to query it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from aiohttp import web as aioweb
from mode import Service

from streams import metrics
from streams.adapters.clickhouse import ClickHouse, connect
from streams.adapters.sink import SinkService
from streams.ops.operator import timeline
from streams.runtime import gc_tuning
from streams.runtime.views import customer_of_query
from streams.settings import Settings

__all__ = ["SinkProcess"]


class SinkProcess(Service):
    """The sink and the HTTP views of the ClickHouse it owns."""

    def __init__(
        self,
        settings: Settings,
        clickhouse_factory: Callable[[], ClickHouse] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        # One thread owns every ClickHouse call (the embedded engine is not for sharing).
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self.sink = SinkService(
            settings, clickhouse_factory or (lambda: connect(settings)), self.executor
        )
        self._runner: aioweb.AppRunner | None = None
        self.port: int | None = None

    def on_init_dependencies(self) -> list[Any]:
        return [self.sink]

    async def on_started(self) -> None:
        gc_tuning.tune(self.settings)
        gc_tuning.freeze(self.settings)
        if self.settings.web_port <= 0:
            return
        web = aioweb.Application()
        web.router.add_get("/healthz", self._healthz)
        web.router.add_get("/readyz", self._readyz)
        web.router.add_get("/metrics", self._metrics)
        web.router.add_get("/customers/{customer_id}/timeline", self._timeline)
        web.router.add_get("/timeline", self._timeline_by_identifier)
        self._runner = aioweb.AppRunner(web, access_log=None)
        await self._runner.setup()
        site = aioweb.TCPSite(self._runner, self.settings.web_host, self.settings.web_port)
        await site.start()
        self.port = self.settings.web_port

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def on_shutdown(self) -> None:
        self.executor.shutdown(wait=True)

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query on the sink's client, in its thread."""
        rows: list[tuple[Any, ...]] = await self.call(lambda c: c.query(sql).result_rows)
        return rows

    async def call(self, fn: Callable[[ClickHouse], Any]) -> Any:
        sink = self.sink.sink
        if sink is None:
            raise RuntimeError("the sink has not connected to ClickHouse yet")
        client = sink.client
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, client)

    async def _healthz(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.json_response({"status": "ok"})

    async def _readyz(self, request: aioweb.Request) -> aioweb.Response:
        ok = self.sink.sink is not None and self.sink.healthy
        return aioweb.json_response(
            {"ready": ok, "sink_healthy": self.sink.healthy}, status=200 if ok else 503
        )

    async def _metrics(self, request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def _timeline(self, request: aioweb.Request) -> aioweb.Response:
        customer_id = request.match_info["customer_id"]
        return await self._timeline_of(customer_id)

    async def _timeline_of(self, customer_id: str) -> aioweb.Response:
        db = self.settings.clickhouse_database
        rows = await self.call(lambda c: timeline(c, db, customer_id))
        return aioweb.json_response(
            {"customer_id": customer_id, "touchpoints": rows}, dumps=_json_dumps
        )

    async def _timeline_by_identifier(self, request: aioweb.Request) -> aioweb.Response:
        """``GET /timeline?email=...`` (or phone, device_id, customer_id, login_id, ...)."""
        found = await customer_of_query(request, self.settings.clickhouse_database, self.call)
        if isinstance(found, aioweb.Response):
            return found
        return await self._timeline_of(found)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
