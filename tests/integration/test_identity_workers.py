"""Issue 3 acceptance: identity resolution with two worker processes, one of them SIGKILLed.

Two ``touchpoints worker`` processes (``SINK_ENABLED=false``) share the consumer group and
the 8-partition topics; the ClickHouse sink runs in this test process, which therefore owns
the embedded engine and can query it. Generated journeys of ~150 people (cookies that log in
later, apps, phones, emails in odd spellings...) are produced in two halves, in event-time
order; while the first half is being processed one worker is killed with SIGKILL and a
replacement with the same settings is started. When the pipeline is quiescent:

* ``identity_map_v`` (identifier -> customer) is, as a partition of the identifiers, exactly
  the offline union-find components of the same normalised records, with guard rules that
  cannot fire for this traffic (checked: no refusal was written);
* ``customer_touchpoints_v`` holds every event exactly once, with the customer of its anchor
  identifier, and every identifier of the event belongs to that customer: timelines are
  complete, including the events ingested before the merge that joined them to their person.

The process/sink/quiescence harness at the top is shared with ``test_aggregates_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.clickhouse import connect
from streams.codec import TOUCHPOINT_SUBJECT, AvroCodec, SchemaRegistry
from streams.generator import GeneratedEvent, encode_events, generate, produce
from streams.identity import IdentityRules, event_identifiers, offline_components
from streams.ingest import Accepted, IngestPolicy, anchor_key, ingest_message
from streams.model import IDENTIFIER_KINDS, TouchpointRecord
from streams.runner import prepare
from streams.settings import Settings
from streams.sink import SinkService

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Bounded waits (seconds). After a SIGKILL the group waits one session timeout (the test
# sets KAFKA_SESSION_TIMEOUT_SECONDS=10; the default is 30) before the dead member's
# partitions move, then rebalances again when the replacement joins: QUIESCE_TIMEOUT
# covers those plus the processing.
READY_TIMEOUT = 90.0
KILL_POINT_TIMEOUT = 60.0
QUIESCE_TIMEOUT = 150.0
STOP_TIMEOUT = 30.0


# ----------------------------------------------------------------------------- harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The worker's environment: every Settings field as its variable, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_"))}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    env.update(overrides)
    return env


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
    """Every consumer group of the deployment and the topics it consumes."""
    t = settings.topics
    return {
        settings.app_id: [t.raw, t.valid, t.identity_ops, t.resolved],
        settings.sink_group_id: [t.resolved, t.identity_changes, t.aggregates, t.dead_letter],
    }


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


# ----------------------------------------------------------------------------- the test

CUSTOMERS = 150
SEED = 20261123
FIRST_HALF_RATE = 150.0  # events/s: the first half is still flowing when the worker dies


def _partition_report(
    expected: list[frozenset[str]], mapping: dict[str, str], limit: int = 8
) -> list[str]:
    """How the identity map differs from the expected components (empty: it does not)."""
    problems: list[str] = []
    expected_ids = set().union(*expected) if expected else set()
    missing = sorted(expected_ids - set(mapping))
    extra = sorted(set(mapping) - expected_ids)
    if missing:
        problems.append(f"{len(missing)} identifiers not in identity_map_v, e.g. {missing[:limit]}")
    if extra:
        problems.append(f"{len(extra)} identifiers nobody sent, e.g. {extra[:limit]}")
    members: dict[str, set[str]] = defaultdict(set)
    for identifier, customer in mapping.items():
        members[customer].add(identifier)
    split = [c for c in expected if len({mapping.get(i) for i in c if i in mapping}) > 1]
    if split:
        examples = [
            {
                cust: sorted(i for i in comp if mapping.get(i) == cust)
                for cust in {mapping.get(i) for i in comp}
            }
            for comp in split[:3]
        ]
        problems.append(
            f"{len(split)} offline components split over several customers, e.g. {examples}"
        )
    component_of = {i: n for n, comp in enumerate(expected) for i in comp}
    glued = [
        (cust, ids) for cust, ids in members.items() if len({component_of.get(i) for i in ids}) > 1
    ]
    if glued:
        problems.append(
            f"{len(glued)} customers glue several offline components, e.g. "
            f"{[(c, sorted(ids)[:6]) for c, ids in glued[:3]]}"
        )
    actual = sorted((frozenset(ids) for ids in members.values()), key=min)
    if not problems and actual != expected:
        problems.append("the partitions differ (no single difference isolated)")
    return problems


def test_identity_across_two_workers_with_one_killed_matches_offline_components(
    settings: Settings, tmp_path: Path
) -> None:
    rules_path = permissive_rules_yaml(tmp_path / "identity-rules.yaml")
    s = settings.model_copy(
        update={
            "topic_partitions": 8,
            "identity_rules": rules_path,
            "kafka_session_timeout_seconds": 10.0,  # the killed worker leaves the group sooner
        }
    )
    rules = IdentityRules.from_mapping(yaml.safe_load(rules_path.read_text()))
    codec = codec_for(s)
    now_ms = int(time.time() * 1000)
    events: list[GeneratedEvent] = generate(CUSTOMERS, seed=SEED, now_ms=now_ms)
    pairs = encode_events(events, codec, old_schema_fraction=0.1, seed=SEED)
    records = normalised_records(pairs, codec, s, now_ms)
    by_id = {r["event_id"]: r for r in records}
    assert len(by_id) == len(records), "generated event ids must be unique"
    n = len(records)
    half = n // 2

    # The traffic: guards cannot fire (nothing blocked; the permissive limits are far above
    # any component), and links arrive late: second-half events join first-half customers.
    assert not any(rules.is_blocked(k) for r in records for k in event_identifiers(r))
    expected = offline_components(records, rules)
    first_half_components = offline_components(records[:half], rules)
    late_joins = len(first_half_components) - sum(
        1 for c in expected if c & set().union(*first_half_components)
    )
    assert late_joins > 0, "the second half should merge customers of the first half"
    assert any(len(c) > 2 for c in expected)

    workdir = tmp_path / "workers"
    workdir.mkdir()
    a = WorkerProcess("a", s, workdir, tmp_path / "faust-a")
    b = WorkerProcess("b", s, workdir, tmp_path / "faust-b")
    a2 = a.replacement("a2")  # the same settings as a, started after a is killed
    workers = [a, b, a2]
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    t0 = time.monotonic()

    async def scenario() -> None:
        async with observers(s) as (sink, probe):
            try:
                a.start()
                b.start()
                await wait_ready([a, b])
                timings["workers_ready"] = time.monotonic() - t0

                first = asyncio.create_task(produce(s, pairs[:half], rate=FIRST_HALF_RATE))
                threshold = max(1, half // 4)

                async def partly_processed() -> bool:
                    assert a.alive and b.alive, "a worker died before the planned kill"
                    count = int(await sink.scalar("SELECT count() FROM {db}.touchpoints"))
                    return count >= threshold

                assert await wait_until(partly_processed, KILL_POINT_TIMEOUT), (
                    f"fewer than {threshold} events reached ClickHouse in {KILL_POINT_TIMEOUT}s"
                )
                a.kill()
                facts["landed_at_kill"] = await sink.scalar("SELECT count() FROM {db}.touchpoints")
                facts["produced_before_kill"] = not first.done()
                timings["killed"] = time.monotonic() - t0
                a2.start()
                assert await asyncio.wait_for(first, timeout=60) == half
                assert await asyncio.wait_for(produce(s, pairs[half:]), timeout=60) == n - half
                timings["all_produced"] = time.monotonic() - t0

                quiet = await wait_quiescent(
                    sink,
                    probe,
                    s,
                    expected_events=n,
                    fingerprints={
                        "identity_map": "SELECT count(), groupBitXor(cityHash64(identifier, customer_id))"
                        " FROM {db}.identity_map_v",
                        "timelines": "SELECT count(), groupBitXor(cityHash64(event_id, customer_id))"
                        " FROM {db}.customer_touchpoints_v",
                    },
                    timeout=QUIESCE_TIMEOUT,
                    workers=[b, a2],
                )
                timings["quiescent"] = time.monotonic() - t0
                # Not asserted here: what is missing or doubled is the better report.
                facts["quiet"] = quiet
                if not quiet.reached:  # what the consumers believe, and every task's stack
                    for w in (b, a2):
                        url = f"http://127.0.0.1:{w.port}/debug/consumer"
                        try:
                            with urllib.request.urlopen(url, timeout=5) as response:
                                print(f"worker {w.name} {url}: {response.read().decode()}")
                        except (urllib.error.URLError, OSError) as exc:
                            print(f"worker {w.name} {url}: {exc!r}")
                        if w.alive and w.proc is not None:
                            w.proc.send_signal(signal.SIGUSR1)  # mode's task dump into the log
                    await asyncio.sleep(3)

                facts["identity_map"] = await sink.rows(
                    "SELECT identifier, customer_id FROM {db}.identity_map_v"
                )
                facts["timeline"] = await sink.rows(
                    "SELECT event_id, customer_id, identity_key, customer_id_at_ingest"
                    " FROM {db}.customer_touchpoints_v"
                )
                facts["touchpoints"] = await sink.rows(
                    "SELECT count(), uniqExact(event_id) FROM {db}.touchpoints_v"
                )
                facts["refusals"] = await sink.rows(
                    "SELECT reason, identifier, evidence FROM {db}.identity_refusals FINAL LIMIT 10"
                )
                facts["merges"] = await sink.scalar(
                    "SELECT count() FROM {db}.customer_merges FINAL"
                )
            finally:
                exits = {}
                for w in (b, a2):
                    exits[w.name] = await asyncio.to_thread(w.terminate)
                facts["exit_codes"] = exits
                timings["workers_stopped"] = time.monotonic() - t0

    try:
        asyncio.run(scenario())
        print(f"timings (s since start): {timings}; events={n}; components={len(expected)}")
        print(f"landed at kill: {facts['landed_at_kill']}/{half}; merges: {facts['merges']}")

        problems: list[str] = []
        if not facts["quiet"].reached:
            problems.append(f"not quiescent after {QUIESCE_TIMEOUT}s: {facts['quiet'].last}")
        mapping = {identifier: customer for identifier, customer in facts["identity_map"]}
        if len(mapping) != len(facts["identity_map"]):
            problems.append("identity_map_v has more than one row for some identifier")
        problems += _partition_report(expected, mapping)
        if facts["refusals"]:
            problems.append(
                f"identity guards fired (they cannot for this traffic): {facts['refusals']}"
            )

        # Timelines: every event once, on the customer of its anchor, with all its identifiers.
        if facts["touchpoints"] != [(n, n)]:
            problems.append(
                f"touchpoints_v (count, distinct ids) = {facts['touchpoints']}, want {(n, n)}"
            )
        timeline = facts["timeline"]
        seen: dict[str, int] = defaultdict(int)
        wrong_customer, wrong_anchor, scattered = [], [], []
        for event_id, customer, identity_key, _ in timeline:
            seen[event_id] += 1
            record = by_id.get(event_id)
            if record is None:
                continue
            anchor = anchor_key(record, rules.is_blocked)
            if identity_key != anchor:
                wrong_anchor.append((event_id, identity_key, anchor))
            if mapping.get(anchor) != customer:
                wrong_customer.append((event_id, customer, mapping.get(anchor)))
            if {mapping.get(k) for k in event_identifiers(record)} != {customer}:
                scattered.append(event_id)
        missing = sorted(set(by_id) - set(seen))
        if missing:
            order = {r["event_id"]: i for i, r in enumerate(records)}
            early = sum(1 for e in missing if order[e] < half)
            print(
                f"missing events: {early} of the first half, {len(missing) - early} of the second"
            )
        doubled = sorted(e for e, c in seen.items() if c > 1)
        unknown = sorted(set(seen) - set(by_id))
        for label, items in (
            ("events missing from customer_touchpoints_v", missing),
            ("events more than once in customer_touchpoints_v", doubled),
            ("events nobody sent in customer_touchpoints_v", unknown),
            ("events whose identity_key is not their anchor", wrong_anchor),
            ("events not on the customer of their anchor", wrong_customer),
            ("events whose identifiers are on other customers", scattered),
        ):
            if items:
                problems.append(f"{len(items)} {label}, e.g. {items[:5]}")
        before_merge = sum(1 for _, customer, _, at_ingest in timeline if customer != at_ingest)
        print(f"events resolved to a customer that was merged away later: {before_merge}")
        if before_merge == 0:
            problems.append("no event was ingested before its merge: the scenario did not test it")

        hung = [name for name, code in facts["exit_codes"].items() if code is None]
        if hung:
            problems.append(f"worker(s) {hung} did not stop within {STOP_TIMEOUT}s of SIGTERM")
        assert not problems, "\n".join(problems)
    except BaseException:
        print(log_tails(workers))
        raise
    finally:
        for w in workers:
            w.ensure_dead()
