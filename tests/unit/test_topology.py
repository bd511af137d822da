"""The declared topology (``streams.topology``) is the one source: topic creation, the sink's
routes, lag probes and the README read it, and it is consistent in itself."""

from __future__ import annotations

from pathlib import Path

from streams import topology
from streams.adapters.kafka import topic_specs
from streams.adapters.sink import default_routes
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _settings(**changes: object) -> Settings:
    return Settings(topic_prefix="t1.", app_id="tp", **changes)  # type: ignore[arg-type]


def test_every_reference_names_a_declared_topic_table_or_stage() -> None:
    attrs = {t.attr for t in topology.TOPICS}
    tables = {t.name for t in topology.TABLES}
    stages = {s.name for s in topology.STAGES}
    assert len(attrs) == len(topology.TOPICS), "topic attrs are unique"
    assert len({t.name for t in topology.TOPICS}) == len(topology.TOPICS), "names are unique"
    for stage in topology.STAGES:
        assert set(stage.inputs) <= attrs, stage
        assert set(stage.outputs) <= attrs, stage
        assert set(stage.tables) <= tables, stage
    for table in topology.TABLES:
        assert table.stage in stages, table
    for route in topology.SINK_ROUTES:
        assert route.topic in attrs, route


def test_every_topic_has_a_writer_and_a_reader() -> None:
    for t in topology.TOPICS:
        writers = [s for s in topology.STAGES if t.attr in s.outputs]
        readers = [s for s in topology.STAGES if t.attr in s.inputs]
        assert writers or t.public, f"{t.name}: nothing writes it"
        assert readers or t.public, f"{t.name}: internal, yet nothing reads it"


def test_sink_routes_are_exactly_the_sink_stage_inputs_and_the_sink_consumes_them() -> None:
    settings = _settings()
    assert [r.topic for r in topology.SINK_ROUTES] == list(topology.SINK.inputs)
    assert set(default_routes(settings)) == {settings.topics.of(a) for a in topology.SINK.inputs}


def test_topic_creation_covers_every_declared_topic_and_table_changelog() -> None:
    settings = _settings(topic_partitions=3)
    specs = {s.name: s for s in topic_specs(settings)}
    expected = {settings.topics.of(t.attr) for t in topology.TOPICS} | {
        f"tp-{t.name}-changelog" for t in topology.TABLES
    }
    assert set(specs) == expected
    assert {s.partitions for s in specs.values()} == {3}, "co-partitioned: one count"
    assert specs["t1.identity.merges"].config["cleanup.policy"] == "compact"
    assert specs["tp-customers-changelog"].config["cleanup.policy"] == "compact"
    dlq = specs["t1.touchpoints.dlq"].config["retention.ms"]
    assert dlq == str(settings.dead_letter_retention_ms)


def test_consumer_groups_follow_the_stages_including_the_sinks_alerts() -> None:
    groups = topology.consumer_groups("p.", "app", "app-sink")
    assert groups == {
        "app": [
            "p.touchpoints.raw",
            "p.touchpoints.checked",
            "p.touchpoints.valid",
            "p.identity.ops",
            "p.touchpoints.resolved",
        ],
        "app-sink": [
            "p.touchpoints.resolved",
            "p.touchpoints.dlq",
            "p.identity.changes",
            "p.aggregates.rows",
            "p.alerts",
        ],
    }
    assert "app-sink" not in topology.consumer_groups("p.", "app", "app-sink", with_sink=False)


def test_topic_names_take_the_prefix_for_every_declared_topic() -> None:
    names = topology.TopicNames("x-")
    for t in topology.TOPICS:
        assert names.of(t.attr) == "x-" + t.name
    assert _settings().topics.alerts == "t1.alerts"


def test_readme_shows_the_topology_printed_from_code() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- topology:start -->")
    end = readme.index("<!-- topology:end -->")
    shown = readme[start:end].split("```")[1].strip("\n")
    assert shown == topology.render(), "README out of date: python -m streams.topology --readme"
