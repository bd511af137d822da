"""Schemas are the contract: they parse, evolve compatibly, and match the Python types."""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path

import pytest
from fastavro import parse_schema

from streams.wire import model
from streams.wire.codec import (
    TOUCHPOINT_SUBJECT,
    SchemaRegistry,
    backward_compatibility_problems,
    load_record_schema,
)

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
REGISTRY = SchemaRegistry.from_dir(SCHEMAS)


@pytest.mark.parametrize("path", sorted((SCHEMAS / "records").glob("*.avsc")), ids=lambda p: p.name)
def test_every_record_schema_parses_with_its_references(path: Path) -> None:
    schema = load_record_schema(path)
    assert schema["type"] == "record"
    assert f"{schema['name']}.avsc".endswith(path.name.split(".", 1)[1])
    parse_schema(schema)


@pytest.mark.parametrize("subject", REGISTRY.subjects())
def test_each_version_is_backward_compatible_with_the_previous(subject: str) -> None:
    versions = REGISTRY.versions(subject)
    ids = [v.schema_id for v in versions]
    assert len(set(ids)) == len(ids), "schema ids must be unique"
    for old, new in zip(versions, versions[1:], strict=False):
        assert backward_compatibility_problems(old.schema, new.schema) == [], (
            f"{subject} v{new.version} cannot read v{old.version} data"
        )


def test_latest_registered_version_is_what_records_build() -> None:
    built = load_record_schema(SCHEMAS / "records" / "touchpoints.Touchpoint.avsc")
    latest = REGISTRY.latest(TOUCHPOINT_SUBJECT).schema
    assert json.dumps(built, sort_keys=True) == json.dumps(latest, sort_keys=True), (
        "schemas/records changed: register a new version in schemas/registry.json"
    )


def test_compatibility_check_catches_breaking_changes() -> None:
    v2 = REGISTRY.latest(TOUCHPOINT_SUBJECT).schema
    no_default = copy.deepcopy(v2)
    no_default["fields"].append({"name": "tier", "type": "string"})
    assert backward_compatibility_problems(v2, no_default) == ["$.tier: new field has no default"]
    retyped = copy.deepcopy(v2)
    retyped["fields"][0]["type"] = "long"
    assert backward_compatibility_problems(v2, retyped) == [
        "$.event_id: string cannot be read as long"
    ]
    narrowed = copy.deepcopy(v2)
    payload = next(f for f in narrowed["fields"] if f["name"] == "payload")
    payload["type"] = payload["type"][:2]  # drop every channel record but web
    problems = backward_compatibility_problems(v2, narrowed)
    assert any("MobileEvent" in p for p in problems)


def _fields(schema: dict[str, typing.Any]) -> set[str]:
    return {f["name"] for f in schema["fields"]}


@pytest.mark.parametrize(
    ("record", "typed"),
    [
        ("Touchpoint", model.TouchpointRecord),
        ("Identifiers", model.IdentifiersRecord),
        ("Context", model.ContextRecord),
        ("Geo", model.GeoRecord),
        ("WebEvent", model.WebRecord),
        ("MobileEvent", model.MobileRecord),
        ("SocialEvent", model.SocialRecord),
        ("ContactCentreEvent", model.ContactCentreRecord),
        ("CommerceEvent", model.CommerceRecord),
    ],
)
def test_python_record_types_match_the_schema(record: str, typed: type) -> None:
    raw = json.loads((SCHEMAS / "records" / f"touchpoints.{record}.avsc").read_text())
    assert _fields(raw) == set(typing.get_type_hints(typed)), record


def test_catalogue_payloads_are_union_branches() -> None:
    built = load_record_schema(SCHEMAS / "records" / "touchpoints.Touchpoint.avsc")
    payload = next(f for f in built["fields"] if f["name"] == "payload")
    branches = {b["name"] for b in payload["type"] if isinstance(b, dict)}
    assert set(model.PAYLOAD_TYPES) == branches
    for channel, types in model.CATALOGUE.items():
        assert types, channel
        assert {p for p in types.values() if p} <= branches
