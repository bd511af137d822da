"""`touchpoints worker` as a real process: it ingests, serves HTTP, and stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams.adapters.clickhouse import connect
from streams.adapters.sink import SinkService
from streams.runtime.runner import prepare
from streams.settings import Settings
from streams.sim.samples import valid_template
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from tests.integration.harness import free_port, worker_env

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def test_worker_process_ingests_serves_http_and_stops_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(
        settings, SINK_ENABLED="false", WEB_PORT=str(port), WEB_HOST="127.0.0.1", LOG_FORMAT="json"
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    codec = AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)
    now = int(time.time() * 1000)
    records = [valid_template(now, f"w{i}") for i in range(40)]
    db = settings.clickhouse_database

    async def scenario() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
            if status == 200:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            await asyncio.sleep(0.5)
        else:
            pytest.fail("worker HTTP never came up")
        prepare(settings)  # idempotent; the worker created the topics already
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            for i, record in enumerate(records):
                await producer.send(settings.topics.raw, codec.encode(record), key=f"k{i}".encode())
            await producer.send(settings.topics.raw, b"not avro at all", key=b"bad")
        finally:
            await producer.stop()
        executor = ThreadPoolExecutor(1)
        sink = SinkService(settings, lambda: connect(settings), executor)
        await sink.start()
        try:
            assert sink.sink is not None
            client = sink.sink.client
            total = -1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = await asyncio.get_running_loop().run_in_executor(
                    executor,
                    lambda: (
                        client.query(
                            f"SELECT (SELECT count() FROM {db}.touchpoints), (SELECT count() FROM {db}.dead_letters)"
                        ).result_rows
                    ),
                )
                total = rows[0]
                if total == (40, 1):
                    break
                await asyncio.sleep(0.5)
            assert total == (40, 1)
        finally:
            await sink.stop()
            executor.shutdown()
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'touchpoints_valid_events_total{channel="web"} 40.0' in body
        assert 'touchpoints_dead_letters_total{reason="bad_magic_byte"} 1.0' in body
        lag = [
            line
            for line in body.splitlines()
            if line.startswith("touchpoints_consumer_lag_messages{")
        ]
        stages = {line.split('stage="', 1)[1].split('"', 1)[0] for line in lag}
        assert stages == {"ingest", "dedupe"}, lag  # the stages that export their lag
        assert all(line.endswith(" 0.0") for line in lag), lag  # everything was consumed
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and '"ready":true' in body.replace(" ", "")

    try:
        asyncio.run(scenario())
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert '"level": "INFO"' in text or '"level":"INFO"' in text, "worker logs are JSON lines"
