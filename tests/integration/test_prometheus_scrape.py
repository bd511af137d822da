"""A real Prometheus scrapes a running worker, evaluates deploy/prometheus/rules.yml and
answers the Grafana dashboard's queries; the dashboard's ClickHouse query runs on the real
engine. Needs /usr/bin/prometheus (Debian package ``prometheus``)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from streams import metrics
from streams.runtime.runner import prepare, query, running, wait_for
from streams.settings import Settings
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "touchpoints-dashboard.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
EVENTS = 25
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry_total(name: str, **labels: str) -> float:
    """Sum of a counter's samples in this process (metrics are process-global)."""
    total = 0.0
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@contextmanager
def _prometheus(workdir: Path, target: str) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping ``target`` every second."""
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "touchpoints",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


async def _eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float, interval: float = 0.5
) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = await probe()
        except (TimeoutError, aiohttp.ClientError) as exc:
            last_error, result = exc, None
        if result is not None:
            return result
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")


async def _instant(http: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{promql}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _dashboard_promql() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                exprs.append(
                    target["expr"]
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "5s")
                    .replace("$consumergroup", "touchpoints")
                )
    assert exprs, "the dashboard has no Prometheus queries"
    return exprs


def _dashboard_clickhouse_sql(database: str, start: int, end: int) -> str:
    dashboard = json.loads(DASHBOARD.read_text())
    sqls = [
        t["rawSql"]
        for p in dashboard["panels"]
        for t in p.get("targets", [])
        if "rawSql" in t and "touchpoints_v" in t["rawSql"]
    ]
    assert len(sqls) == 1, "expected one ClickHouse panel over touchpoints_v"
    # Expand the grafana-clickhouse-datasource macro the query uses, as the plugin does.
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 >= toDateTime({start}) AND \1 <= toDateTime({end})",
        sqls[0],
    )
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql.replace("touchpoints.touchpoints_v", f"{database}.touchpoints_v")


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="needs prometheus (apt-get install prometheus)"
)
def test_prometheus_scrapes_the_worker_and_evaluates_the_rules(
    settings: Settings, tmp_path: Path
) -> None:
    web_port = _free_port()
    s = settings.model_copy(update={"web_port": web_port})
    codec = AvroCodec(SchemaRegistry.from_dir(s.schemas_dir), TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    records = [valid_template(now, f"prom-{i}") for i in range(EVENTS)]
    db = s.clickhouse_database
    worker = f"http://127.0.0.1:{web_port}"

    async def scenario() -> None:
        prepare(s)
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            sent = [
                await producer.send(s.topics.raw, codec.encode(r), key=f"k{i}".encode())
                for i, r in enumerate(records)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        valid_before = _registry_total("touchpoints_valid_events_total")

        timeout = aiohttp.ClientTimeout(total=5)
        async with running(s) as pipeline, aiohttp.ClientSession(timeout=timeout) as http:
            landed = await wait_for(
                pipeline, f"SELECT count() FROM {db}.touchpoints", EVENTS, timeout=90
            )
            assert landed == EVENTS

            # The worker's own HTTP endpoints, as the Kubernetes probes and Prometheus use them.
            try:
                async with http.get(f"{worker}/metrics") as resp:
                    exposition = await resp.text()
                    assert resp.status == 200, f"GET /metrics -> {resp.status}: {exposition}"
            except aiohttp.ClientConnectionError as exc:
                pytest.fail(f"the worker's web server does not answer on {worker}/metrics: {exc!r}")
            assert "touchpoints_valid_events_total" in exposition
            async with http.get(f"{worker}/healthz") as resp:
                assert resp.status == 200, f"GET /healthz -> {resp.status}: {await resp.text()}"

            async def ready() -> bool | None:
                async with http.get(f"{worker}/readyz") as resp:
                    return True if resp.status == 200 else None

            await _eventually(ready, "/readyz to answer 200", timeout=30)

            valid_expected = valid_before + EVENTS
            assert _registry_total("touchpoints_valid_events_total") == valid_expected
            rows_expected = _registry_total(
                "touchpoints_clickhouse_rows_written_total", table="touchpoints"
            )
            assert rows_expected >= EVENTS

            with _prometheus(tmp_path / "prometheus", f"127.0.0.1:{web_port}") as prom:

                async def prom_ready() -> bool | None:
                    async with http.get(f"{prom}/-/ready") as resp:
                        return True if resp.status == 200 else None

                await _eventually(prom_ready, "Prometheus to become ready", timeout=30)

                async def scraped() -> list[dict[str, Any]] | None:
                    up = await _instant(http, prom, 'up{job="touchpoints"}')
                    valid = await _instant(http, prom, "sum(touchpoints_valid_events_total)")
                    rows = await _instant(
                        http,
                        prom,
                        'sum(touchpoints_clickhouse_rows_written_total{table="touchpoints"})',
                    )
                    if up and valid and rows and float(valid[0]["value"][1]) >= valid_expected:
                        return [up[0], valid[0], rows[0]]
                    return None

                up, valid, rows = await _eventually(scraped, "Prometheus to scrape the worker", 60)
                assert up["value"][1] == "1"
                assert float(valid["value"][1]) == valid_expected
                assert float(rows["value"][1]) == rows_expected
                by_channel = await _instant(http, prom, "touchpoints_valid_events_total")
                assert {r["metric"]["channel"] for r in by_channel} >= {"web"}
                assert all(r["metric"]["job"] == "touchpoints" for r in by_channel)

                # rules.yml loads, every rule evaluates without error, recording rules see data.
                async def evaluated() -> list[dict[str, Any]] | None:
                    async with http.get(f"{prom}/api/v1/rules") as resp:
                        groups = (await resp.json())["data"]["groups"]
                    rules = [r for g in groups for r in g["rules"]]
                    if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules):
                        return rules
                    return None

                rules = await _eventually(evaluated, "every rule to be evaluated once", 30)
                names = {r.get("name") for r in rules}
                assert {"TouchpointsWorkerDown", "TouchpointsClickHouseInsertFailures"} <= names
                assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []

                async def recorded() -> list[dict[str, Any]] | None:
                    result = await _instant(http, prom, "touchpoints:valid_events:rate5m")
                    return result or None

                series = await _eventually(recorded, "touchpoints:valid_events:rate5m", 30)
                assert {r["metric"].get("channel") for r in series} >= {"web"}
                firing = await _instant(http, prom, 'ALERTS{alertname="TouchpointsWorkerDown"}')
                assert firing == []

                # Every Prometheus query of the Grafana dashboard parses and runs here.
                for expr in _dashboard_promql():
                    await _instant(http, prom, expr)
                ingest = await _instant(
                    http,
                    prom,
                    next(e for e in _dashboard_promql() if "touchpoints_valid_events_total" in e),
                )
                assert ingest, "the dashboard's ingest-rate query returned no series"

            # The dashboard's ClickHouse panel, with Grafana's time macro expanded.
            end = int(time.time()) + 60
            sql = _dashboard_clickhouse_sql(db, start=end - 3600, end=end)
            rows_by_channel = await query(pipeline, sql)
            assert sum(int(r[-1]) for r in rows_by_channel) == EVENTS
            assert {r[1] for r in rows_by_channel} == {"web"}

    asyncio.run(scenario())
