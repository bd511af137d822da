from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_environment_variables_map_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka://b1:9092,b2:9092")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "s3cret")
    s = Settings()
    assert s.kafka_bootstrap_servers == "b1:9092,b2:9092"
    assert s.topic_partitions == 12
    assert s.clickhouse_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_bad_values_are_refused_with_the_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="topic_partitions"):
        Settings()


def test_settings_are_immutable() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.topic_partitions = 3  # type: ignore[misc]


def test_topic_names_take_the_prefix() -> None:
    names = Settings(topic_prefix="acme.").topics
    assert names.raw == "acme.touchpoints.raw" and names.dead_letter == "acme.touchpoints.dlq"


def test_readme_settings_table_is_current() -> None:
    assert settings_table() in README.read_text(), "run: python -m streams.settings"
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in README.read_text()


def test_readme_metrics_table_is_current_and_lists_every_metric() -> None:
    from streams import metrics

    text = README.read_text()
    assert metrics.metrics_table() in text, "run: python -m streams.metrics"
    for family in metrics.REGISTRY.collect():
        assert f"`{family.name}" in text, family.name
