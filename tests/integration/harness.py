"""The worker-process harness of the integration tests: ``touchpoints worker`` subprocesses,
the ClickHouse sink in the test process (the only owner of the chdb path), consumer-group lag
against the declared topology, and bounded waits. Used by the crash, two-worker and
worker-process tests."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.adapters.clickhouse import connect
from streams.adapters.sink import SinkService
from streams.ingest.stage import Accepted, IngestPolicy, ingest_message
from streams.runtime.processes import free_port
from streams.runtime.processes import settings_env as worker_env
from streams.runtime.runner import prepare, query, wait_for
from streams.settings import Settings
from streams.sim.generator import encode_events, generate
from streams.topology import consumer_groups
from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.wire.model import IDENTIFIER_KINDS, TouchpointRecord

if TYPE_CHECKING:
    from streams.runtime.app import Pipeline

REPO = Path(__file__).resolve().parents[2]

# Bounded waits (seconds). After a SIGKILL the group waits one session timeout (the test
# sets KAFKA_SESSION_TIMEOUT_SECONDS=10; the default is 30) before the dead member's
# partitions move, then rebalances again when the replacement joins: QUIESCE_TIMEOUT
# covers those plus the processing.
READY_TIMEOUT = 90.0
KILL_POINT_TIMEOUT = 60.0
QUIESCE_TIMEOUT = 150.0
STOP_TIMEOUT = 30.0


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


class WorkerProcess:
    """One ``python -m streams.cli worker`` subprocess, its own port and log file."""

    def __init__(self, name: str, settings: Settings, workdir: Path, data_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = worker_env(
            settings,
            SINK_ENABLED="false",
            WEB_HOST="127.0.0.1",
            WEB_PORT=str(self.port),
            DATA_DIR=str(data_dir),
            LOG_FORMAT="text",
            LOG_LEVEL="INFO",
        )
        self.log_path = workdir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def replacement(self, name: str) -> WorkerProcess:
        """A new process with exactly the same settings (port and data dir included)."""
        clone = WorkerProcess.__new__(WorkerProcess)
        clone.name, clone.port, clone.env = name, self.port, dict(self.env)
        clone.log_path = self.log_path.with_name(f"worker-{name}.log")
        clone.proc = None
        return clone

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.alive and _http_status(f"http://127.0.0.1:{self.port}/readyz") == 200

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; the exit code, or None if it hung (it is killed then)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def ensure_dead(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-chars:]


def log_tails(workers: Iterable[WorkerProcess], chars: int = 4000) -> str:
    parts = []
    for w in workers:
        code = None if w.proc is None else w.proc.poll()
        parts.append(f"===== worker {w.name} (exit {code}) {w.log_path} =====\n{w.tail(chars)}")
    return "\n".join(parts)


class InTestSink:
    """The ClickHouse sink running in this process: the only owner of the chdb path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse-test")
        self.service = SinkService(settings, lambda: connect(settings), self.executor)
        self.db = settings.clickhouse_database

    async def start(self) -> None:
        await asyncio.wait_for(self.service.start(), timeout=60)

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.service.stop(), timeout=STOP_TIMEOUT)
        finally:
            self.executor.shutdown(wait=True)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """``{db}`` in ``sql`` is the test database. Runs in the sink's ClickHouse thread."""
        sink = self.service.sink
        assert sink is not None, "the sink has not started"
        client = sink.client
        statement = sql.replace("{db}", self.db)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, lambda: client.query(statement))
        return list(result.result_rows)

    async def scalar(self, sql: str) -> Any:
        return (await self.rows(sql))[0][0]


class LagProbe:
    """Committed offsets of consumer groups against the topics' end offsets."""

    def __init__(self, settings: Settings) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.partitions = settings.topic_partitions
        bootstrap = settings.kafka_bootstrap_servers
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def lag(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """Unconsumed messages per (topic, partition) that has any; {} when caught up."""
        from aiokafka import TopicPartition

        committed = {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in (await self.admin.list_consumer_group_offsets(group)).items()
        }
        parts = [TopicPartition(t, p) for t in topics for p in range(self.partitions)]
        ends = await self.consumer.end_offsets(parts)
        out = {}
        for tp, end in ends.items():
            behind = end - max(committed.get((tp.topic, tp.partition), 0), 0)
            if behind > 0:
                out[(tp.topic, tp.partition)] = behind
        return out

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()


def pipeline_groups(settings: Settings) -> dict[str, list[str]]:
    """Every consumer group of the deployment and the topics it consumes (the topology's)."""
    return consumer_groups(settings.topic_prefix, settings.app_id, settings.sink_group_id)


@dataclass
class Quiescence:
    reached: bool
    waited_s: float
    last: dict[str, Any] = field(default_factory=dict)


async def wait_quiescent(
    sink: InTestSink,
    probe: LagProbe,
    settings: Settings,
    *,
    expected_events: int,
    fingerprints: dict[str, str],
    timeout: float,
    stable_polls: int = 3,
    interval: float = 1.0,
    workers: Sequence[WorkerProcess] = (),
) -> Quiescence:
    """Until every event is in ``touchpoints``, every consumer group has consumed every
    topic up to its end, and the ``fingerprints`` queries gave the same answers
    ``stable_polls`` times in a row."""
    groups = pipeline_groups(settings)
    started = time.monotonic()
    history: list[tuple[Any, ...]] = []
    last: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        dead = [w.name for w in workers if w.proc is not None and not w.alive]
        assert not dead, f"worker(s) {dead} exited while the test waited"
        events = int(await sink.scalar("SELECT count() FROM {db}.touchpoints_v"))
        prints = tuple([tuple(await sink.rows(sql)) for sql in fingerprints.values()])
        lag: dict[str, dict[tuple[str, int], int]] = {}
        for group, topics in groups.items():
            lag[group] = await probe.lag(group, topics)
        last = {
            "touchpoints": events,
            "lag": lag,
            "fingerprints": dict(zip(fingerprints, prints, strict=True)),
        }
        if events == expected_events and not any(lag.values()):
            history.append(prints)
            if len(history) >= stable_polls and len(set(history[-stable_polls:])) == 1:
                return Quiescence(True, time.monotonic() - started, last)
        else:
            history.clear()
        await asyncio.sleep(interval)
    return Quiescence(False, time.monotonic() - started, last)


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.25
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


@asynccontextmanager
async def observers(settings: Settings) -> AsyncIterator[tuple[InTestSink, LagProbe]]:
    """A worker-process scenario's topics and tables, its in-test sink and its lag probe."""
    prepare(settings)
    sink = InTestSink(settings)
    await sink.start()
    try:
        probe = LagProbe(settings)
        await probe.start()
        try:
            yield sink, probe
        finally:
            await probe.close()
    finally:
        await sink.stop()


async def wait_ready(workers: Sequence[WorkerProcess], timeout: float = READY_TIMEOUT) -> None:
    async def all_ready() -> bool:
        dead = [w.name for w in workers if not w.alive]
        assert not dead, f"worker(s) {dead} exited during start-up"
        states = await asyncio.gather(*(asyncio.to_thread(w.ready) for w in workers))
        return all(states)

    assert await wait_until(all_ready, timeout, 0.5), f"workers not ready within {timeout}s"


def codec_for(settings: Settings) -> AvroCodec:
    return AvroCodec(SchemaRegistry.from_dir(settings.schemas_dir), TOUCHPOINT_SUBJECT)


def normalised_records(
    pairs: Sequence[tuple[bytes, bytes]], codec: AvroCodec, settings: Settings, now_ms: int
) -> list[TouchpointRecord]:
    """Each produced message through the ingest step: the records the pipeline works on."""
    policy = IngestPolicy.from_settings(settings)
    out: list[TouchpointRecord] = []
    for _, value in pairs:
        outcome = ingest_message(value, codec, policy, now_ms)
        assert isinstance(outcome, Accepted), outcome
        out.append(outcome.record)
    return out


def permissive_rules_yaml(path: Path, limit: int = 10_000) -> Path:
    """Identity guards that cannot fire for generated traffic (limits and caps far above
    anything a person has); the blocked values stay the defaults."""
    config = {
        "limits": dict.fromkeys(IDENTIFIER_KINDS, limit),
        "merge_caps": dict.fromkeys(IDENTIFIER_KINDS, limit),
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def produce_raw(settings: Settings, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Write ``(key, value)`` pairs to the raw topic and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(settings.topics.raw, v, key=k) for k, v in pairs]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str, expected: int, timeout: float = 30.0
) -> list[Any]:
    """Messages of ``topic`` from the start, until ``expected`` are read or ``timeout``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(messages)
    finally:
        await consumer.stop()
    return out


async def landed_ids(pipeline: Pipeline, db: str, count: int) -> set[str]:
    """Wait until ``count`` touchpoints are in ClickHouse (asserted); their distinct event ids."""
    landed = await wait_for(pipeline, f"SELECT count() FROM {db}.touchpoints", count)
    assert landed == count
    return {r[0] for r in await query(pipeline, f"SELECT event_id FROM {db}.touchpoints_v")}


def generated_traffic(
    s: Settings, customers: int, seed: int, span_ms: int = 2 * 3600 * 1000
) -> tuple[list[tuple[bytes, bytes]], dict[str, TouchpointRecord]]:
    """Seeded journeys up to now as Confluent-Avro pairs (a tenth on the v1 schema), and the
    records ingest makes of them, by event id (asserted unique), in the pairs' order."""
    codec = codec_for(s)
    now_ms = int(time.time() * 1000)
    events = generate(customers, seed=seed, now_ms=now_ms, span_ms=span_ms)
    pairs = encode_events(events, codec, old_schema_fraction=0.1, seed=seed)
    records = normalised_records(pairs, codec, s, now_ms)
    by_id = {r["event_id"]: r for r in records}
    assert len(by_id) == len(records), "generated event ids must be unique"
    return pairs, by_id
