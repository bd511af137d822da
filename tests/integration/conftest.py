"""Real infrastructure for integration tests.

* Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set (an existing cluster, or testcontainers'
  Kafka started by the caller), else one real Apache Kafka broker (KRaft) started on
  the local JDK for the whole session (deploy/local/localkafka.py).
* Schema Registry: Apicurio Registry (Confluent-compatible API), built from Maven Central on
  first use and cached under ``.local/registry`` (deploy/local/localregistry.py), started
  on a free port for the session.
* ClickHouse: the embedded engine (chdb), one data path for the session (the
  engine allows one path per process); every test gets its own database.
* Every test gets fresh topic names, consumer groups and a database (uuid), so tests
  never see each other's data.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "local"))

from localkafka import LocalKafka  # noqa: E402
from localregistry import LocalRegistry  # noqa: E402


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    home = Path(os.environ.get("LOCALKAFKA_HOME", str(REPO / ".local" / "kafka")))
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), libs_dir=home / "libs")
    try:
        yield broker.start(timeout=120.0)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real Schema Registry for the session (tests may stop and start it: same port and
    schemas). Its URL goes in ``SCHEMA_REGISTRY_URL``."""
    home = Path(os.environ.get("LOCALREGISTRY_HOME", str(REPO / ".local" / "registry")))
    registry = LocalRegistry(home, tmp_path_factory.mktemp("registry"))
    registry.start()
    # A shared registry already holds other teams' schemas: ids our producers get differ
    # from schemas/registry.json's (as on a real cluster), whichever test registers first.
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry.url})
    for n in range(5):
        fields = [{"name": f"f{i}", "type": "string"} for i in range(n + 1)]
        other = {"type": "record", "name": f"Other{n}", "namespace": "elsewhere", "fields": fields}
        client.register_schema(f"elsewhere.topic{n}-value", Schema(json.dumps(other), "AVRO"))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def settings(kafka_bootstrap: str, chdb_path: Path, tmp_path: Path) -> Settings:
    run = uuid.uuid4().hex[:10]
    return Settings(
        app_id=f"tp-{run}",
        topic_prefix=f"t{run}.",
        kafka_bootstrap_servers=kafka_bootstrap,
        clickhouse_chdb_path=chdb_path,
        clickhouse_database=f"test_{run}",
        data_dir=tmp_path / "faust",
        web_port=0,
        topic_partitions=4,
        sink_flush_seconds=0.3,
        ingest_batch_seconds=0.1,
    )
