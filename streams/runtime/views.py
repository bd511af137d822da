"""The worker's HTTP views: ``/healthz``, ``/readyz``, ``/metrics``, ``/debug/consumer``, and
timelines where this process owns ClickHouse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web as aioweb

from streams import metrics
from streams.adapters.clickhouse import ClickHouse, connect
from streams.identity.graph import is_household
from streams.ops.operator import find_customer, identifier_key, timeline
from streams.runtime.parts import PipelineParts


class PipelineViews(PipelineParts):
    async def _healthz(self, request: Any) -> aioweb.Response:
        return aioweb.json_response({"status": "ok"})

    async def _debug_consumer(self, request: Any) -> aioweb.Response:
        """What the Faust consumer believes about its partitions (for a stalled partition:
        assigned but not active, paused, buffered, flow stopped). Read-only, best effort."""
        consumer: Any = self.app.consumer

        def tps(value: Any) -> list[str]:
            return sorted(f"{tp.topic}:{tp.partition}" for tp in (value or ()))

        try:
            inner = consumer._thread._ensure_consumer()  # aiokafka, in the consumer thread
            aiokafka_paused = tps(inner.paused())
        except Exception as exc:  # noqa: BLE001 - a debug view never fails the request
            aiokafka_paused = [f"unavailable: {exc!r}"]
        body = {
            "generation": self.app.consumer_generation_id,
            "rebalancing": bool(self.app.rebalancing),
            "in_recovery": bool(self.app.in_recovery),
            "flow_control_active": self.app.flow_control.is_active(),
            "consumer_flow_active": bool(consumer.flow_active),
            "assigned": tps(consumer.assignment()),
            "active": tps(consumer._active_partitions),
            "paused": tps(consumer._paused_partitions),
            "buffered": tps(consumer._buffered_partitions),
            "aiokafka_paused": aiokafka_paused,
            "read_offsets": {
                f"{tp.topic}:{tp.partition}": off for tp, off in consumer._read_offset.items()
            },
            "committed": {
                f"{tp.topic}:{tp.partition}": off for tp, off in consumer._committed_offset.items()
            },
            "acked": {
                f"{tp.topic}:{tp.partition}": [min(offs), max(offs), len(offs)]
                for tp, offs in consumer._acked.items()
                if offs
            },
            "unacked_messages": len(consumer._unacked_messages),
            "inflight_batches": self._inflight,
        }
        return aioweb.json_response(body, dumps=_json_dumps)

    async def _readyz(self, request: Any) -> aioweb.Response:
        sink_ok = self.sink is None or self.sink.healthy
        ok = self.ready and sink_ok and not self.failing
        return aioweb.json_response(
            {
                "ready": ok,
                "assigned": self.ready,
                "sink_healthy": sink_ok,
                "failing_stages": sorted(self.failing),
            },
            status=200 if ok else 503,
        )

    async def _clickhouse_call(self, fn: Callable[[ClickHouse], Any]) -> Any:
        """Run ``fn`` with a ClickHouse client: this process's sink client (the embedded
        engine lives here) or, with a ClickHouse server, a client of our own."""
        loop = asyncio.get_running_loop()
        sink = self.sink.sink if self.sink is not None else None
        if sink is not None:
            client = sink.client
        elif self.settings.clickhouse_url:
            if self._query_client is None:
                self._query_client = await loop.run_in_executor(
                    self.clickhouse_executor, connect, self.settings
                )
            client = self._query_client
        else:
            return None
        return await loop.run_in_executor(self.clickhouse_executor, fn, client)

    async def _timeline(self, request: Any, customer_id: str) -> aioweb.Response:
        db = self.settings.clickhouse_database
        rows = await self._clickhouse_call(lambda c: timeline(c, db, customer_id))
        if rows is None:
            return _no_clickhouse()
        return aioweb.json_response(
            # household: a shared device or email's own customer, standing for no one person
            {
                "customer_id": customer_id,
                "household": is_household(customer_id),
                "touchpoints": rows,
            },
            dumps=_json_dumps,
        )

    async def _timeline_by_identifier(self, request: Any) -> aioweb.Response:
        """``GET /timeline?email=...`` (or phone, device_id, customer_id, login_id, ...)."""
        db = self.settings.clickhouse_database
        if self.sink is None and not self.settings.clickhouse_url:
            return _no_clickhouse()
        found = await customer_of_query(request, db, self._clickhouse_call)
        if isinstance(found, aioweb.Response):
            return found
        return await self._timeline(request, found)

    async def _metrics(self, request: Any) -> aioweb.Response:
        return aioweb.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _no_clickhouse() -> aioweb.Response:
    return aioweb.json_response(
        {"error": "ClickHouse is embedded in another process here; ask the sink's worker"},
        status=503,
    )


async def customer_of_query(
    request: Any, db: str, call: Callable[[Callable[[ClickHouse], Any]], Awaitable[Any]]
) -> str | aioweb.Response:
    """The customer a ``?<kind>=<value>`` query names (found through ``call``), or the
    400/404 answer. Serves ``GET /timeline`` of the worker and of the sink process."""
    given = list(request.query.items())
    if len(given) != 1:
        return aioweb.json_response({"error": "give one identifier, e.g. ?email="}, status=400)
    kind, value = given[0]
    try:
        key = identifier_key(kind, value)
    except ValueError as exc:
        return aioweb.json_response({"error": str(exc)}, status=400)
    customer = await call(lambda c: find_customer(c, db, key))
    if customer is None:
        return aioweb.json_response({"error": f"no customer has {key}"}, status=404)
    return str(customer)
