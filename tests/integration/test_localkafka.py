"""Integration tests for deploy/local/localkafka.py: a real Kafka broker on the local JDK.

The jars are shared between test sessions: ``$LOCALKAFKA_HOME/libs`` (default
``<repo>/.local/kafka/libs``); every broker gets its own data dir under pytest's tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "localkafka.py"
KAFKA_HOME = Path(os.environ.get("LOCALKAFKA_HOME", str(REPO / ".local" / "kafka")))
LIBS_DIR = KAFKA_HOME / "libs"


if str(SCRIPT.parent) not in sys.path:
    sys.path.insert(0, str(SCRIPT.parent))

import localkafka  # noqa: E402  (deploy/local is not a package)
from localkafka import LocalKafka  # noqa: E402


def _cli(workdir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the localkafka command line on ``workdir`` (with the shared jars)."""
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *args,
            "--workdir",
            str(workdir),
            "--libs-dir",
            str(LIBS_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("localkafka"), libs_dir=LIBS_DIR)
    t0 = time.monotonic()
    bootstrap = broker.start(timeout=120.0)
    print(f"\nLocalKafka {broker.kafka_version} at {bootstrap} in {time.monotonic() - t0:.1f}s")
    assert bootstrap == broker.bootstrap
    assert bootstrap.startswith("127.0.0.1:") and not bootstrap.endswith(":9092")
    yield broker
    pid = broker.pid
    data_dir = broker.data_dir
    broker.stop()
    assert not _port_open(bootstrap), "broker port still open after stop()"
    assert pid is not None and not _pid_alive(pid)
    assert data_dir is not None and not data_dir.exists()
    broker.stop()  # idempotent


def test_broker_answers_kafka_protocol(kafka: LocalKafka) -> None:
    host, _, port = kafka.bootstrap.rpartition(":")
    brokers = localkafka.probe_broker(host, int(port))
    assert (1, "127.0.0.1", int(port)) in brokers
    rss = kafka.rss_bytes()
    assert rss is not None
    print(f"broker RSS {rss / 2**20:.0f} MiB")


def test_admin_produce_consume_roundtrip(kafka: LocalKafka) -> None:
    kafka_python = pytest.importorskip("kafka", reason="kafka-python not installed")
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"localkafka-roundtrip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="localkafka-test")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        deadline = time.monotonic() + 30
        while topic not in admin.list_topics():
            assert time.monotonic() < deadline, "topic never appeared"
            time.sleep(0.1)
    finally:
        admin.close()

    expected = [f"value-{i:03d}".encode() for i in range(100)]
    producer = kafka_python.KafkaProducer(
        bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=5
    )
    try:
        futures = [
            producer.send(topic, key=f"key-{i % 7}".encode(), value=value)
            for i, value in enumerate(expected)
        ]
        producer.flush(timeout=30)
        metadata = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)
    assert {m.topic for m in metadata} == {topic}
    assert {m.partition for m in metadata} <= {0, 1, 2}

    consumer = kafka_python.KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"localkafka-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: list[tuple[int, bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(expected) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend((r.partition, r.key, r.value) for r in records)
        consumer.commit()  # exercises the group coordinator / __consumer_offsets (RF 1)
    finally:
        consumer.close()

    assert len(received) == len(expected), f"got {len(received)} of {len(expected)}"
    assert sorted(v for _p, _k, v in received) == expected
    # Order is kept per partition, and a key always lands on the same partition.
    for partition in {p for p, _k, _v in received}:
        values = [v for p, _k, v in received if p == partition]
        assert values == sorted(values)
    key_partitions: dict[bytes | None, set[int]] = {}
    for p, k, _v in received:
        key_partitions.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in key_partitions.values())


def test_aiokafka_transactions(kafka: LocalKafka) -> None:
    """A transactional producer can init a producer id (transaction state log settings are
    single-node friendly), and read_committed consumers skip aborted records."""
    aiokafka = pytest.importorskip("aiokafka", reason="aiokafka not installed")
    pytest.importorskip("kafka", reason="kafka-python not installed")
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"localkafka-txn-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    async def scenario() -> list[bytes]:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap,
            transactional_id=f"localkafka-txn-{uuid.uuid4().hex[:8]}",
            enable_idempotence=True,
        )
        await asyncio.wait_for(producer.start(), 60)
        try:
            await producer.begin_transaction()
            for i in range(5):
                await producer.send(topic, f"aborted-{i}".encode())
            await producer.abort_transaction()

            async with producer.transaction():
                for i in range(10):
                    await producer.send(topic, f"committed-{i}".encode())
        finally:
            await producer.stop()

        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            values: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(values) < 10 and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values.extend(r.value for r in batch.get(tp, []))
            # One more poll: nothing else (e.g. aborted records) may show up.
            batch = await consumer.getmany(tp, timeout_ms=300)
            values.extend(r.value for r in batch.get(tp, []))
            return values
        finally:
            await consumer.stop()

    values = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert values == [f"committed-{i}".encode() for i in range(10)]


def test_cli_detached_start_status_stop(tmp_path: Path) -> None:
    """`start` leaves a detached broker behind (pid + bootstrap files), `status` sees it and
    `stop` ends it and closes the port."""
    started = _cli(tmp_path, "start")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip().splitlines()[-1]
    try:
        assert bootstrap.startswith("127.0.0.1:")
        assert (tmp_path / "bootstrap").read_text().strip() == bootstrap
        pid = int((tmp_path / "broker.pid").read_text().strip())
        assert _pid_alive(pid)  # survived the CLI process exiting
        assert _port_open(bootstrap)

        status = _cli(tmp_path, "status", timeout=30)
        assert status.returncode == 0, status.stderr
        assert status.stdout.strip().splitlines()[-1] == bootstrap

        again = _cli(tmp_path, "start", timeout=60)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == bootstrap  # idempotent
    finally:
        stopped = _cli(tmp_path, "stop", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert not _port_open(bootstrap)
    assert not _pid_alive(pid)
    assert not (tmp_path / "broker.pid").exists()

    status = _cli(tmp_path, "status", timeout=30)
    assert status.returncode == 1
    assert status.stdout.strip() == "stopped"


def test_cli_restarts_on_kept_data_on_the_same_port(tmp_path: Path) -> None:
    """Issue 12, item 8: `stop --keep-data` then `start` brings the same broker back —
    topics, messages and committed offsets — on the same bootstrap (before, `start`
    formatted new storage on new ports). `start --fresh` starts empty."""
    kafka_python = pytest.importorskip("kafka", reason="kafka-python not installed")
    from kafka.admin import KafkaAdminClient, NewTopic

    def cli(*args: str) -> str:
        done = _cli(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    topic, group = "kept-topic", "kept-group"

    def consume(want: int, *, seconds: float, commit: bool) -> list[bytes]:
        """Read as the group: at most ``want`` messages when committing (the rest stay)."""
        consumer = kafka_python.KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        got: list[bytes] = []
        deadline = time.monotonic() + seconds
        while len(got) < want and time.monotonic() < deadline:
            limit = {"max_records": want - len(got)} if commit else {}
            for records in consumer.poll(timeout_ms=500, **limit).values():
                got.extend(r.value for r in records)
        if commit:
            consumer.commit()
        consumer.close()
        return got

    bootstrap = cli("start")
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            admin.close()
        producer = kafka_python.KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(10):
            producer.send(topic, f"m{i}".encode())
        producer.flush(timeout=30)
        producer.close(timeout=10)
        got = consume(4, seconds=30, commit=True)
        assert len(got) == 4

        cli("stop", "--keep-data")
        assert not _port_open(bootstrap)
        assert cli("start") == bootstrap  # same port, same storage

        rest = consume(6, seconds=60, commit=False)
        assert rest == [f"m{i}".encode() for i in range(4, 10)]  # the group resumes at 4

        cli("stop", "--keep-data")
        fresh = cli("start", "--fresh")
        admin = KafkaAdminClient(bootstrap_servers=fresh)
        try:
            assert topic not in admin.list_topics()
        finally:
            admin.close()
    finally:
        cli("stop")
    assert not (tmp_path / "kept-data.json").exists()
    assert not list(tmp_path.glob("data-*"))
