"""Layering, checked on the source: the pure domain cores import no framework, client or
settings (a ``TYPE_CHECKING`` block for annotations is allowed), and only the runtime
imports Faust."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streams"

# Pure, typed steps: every module of these subpackages, and the declared topology.
CORE_PACKAGES = ("wire", "ingest", "identity", "customers")
DOMAIN_CORES = {
    p.relative_to(PACKAGE).with_suffix("").as_posix()
    for package in CORE_PACKAGES
    for p in (PACKAGE / package).rglob("*.py")
} | {"topology"}
FORBIDDEN_IN_CORES = {
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "clickhouse_connect",
    "chdb",
    "prometheus_client",
    "streams.settings",
    "streams.adapters.clickhouse",
    "streams.adapters.kafka",
    "streams.metrics",
    "streams.runtime.app",
    "streams.adapters.sink",
}
# The runtime (composition root, fenced Faust patches) and the CLI that starts workers.
FAUST_ALLOWED = {"runtime/app", "runtime/faust_patches", "cli"}


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks (top level or nested)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _matches(module: str, names: set[str]) -> set[str]:
    return {n for n in names if module == n or module.startswith(n + ".")}


def test_the_checker_sees_imports_and_skips_type_checking_blocks(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import faust.types\n"
        "if TYPE_CHECKING:\n    from streams.settings import Settings\n"
        "def f():\n    from clickhouse_connect import get_client\n"
    )
    found = _runtime_imports(sample)
    assert "faust.types" in found and "clickhouse_connect" in found
    assert "streams.settings" not in found
    assert _matches("faust.types", {"faust"}) == {"faust"}


def test_the_domain_cores_are_found() -> None:
    expected = {"wire/codec", "ingest/stage", "identity/graph", "customers/stage", "topology"}
    assert expected <= DOMAIN_CORES, expected - DOMAIN_CORES


def test_domain_cores_import_no_framework_client_or_settings() -> None:
    problems = {}
    for module in sorted(DOMAIN_CORES):
        bad = set()
        for imported in _runtime_imports(PACKAGE / f"{module}.py"):
            bad |= {imported} if _matches(imported, FORBIDDEN_IN_CORES) else set()
        if bad:
            problems[module] = sorted(bad)
    assert not problems, f"domain cores with forbidden imports: {problems}"


def test_only_the_runtime_imports_faust() -> None:
    importers = {
        path.relative_to(PACKAGE).with_suffix("").as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(_matches(m, {"faust"}) for m in _runtime_imports(path))
    }
    assert importers <= FAUST_ALLOWED, (
        f"Faust imported outside the runtime: {importers - FAUST_ALLOWED}"
    )
    assert "runtime/app" in importers, "the checker must see the composition root's Faust import"


def test_domain_cores_live_in_their_subpackages_and_nothing_is_left_flat() -> None:
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == {"__init__", "cli", "logs", "metrics", "readme", "settings", "topology"}, (
        "new modules belong in a subpackage (wire, ingest, identity, customers, adapters, "
        "runtime, ops, sim)"
    )


def test_faust_patches_match_the_installed_upstream_versions() -> None:
    from importlib.metadata import version

    from streams.runtime.faust_patches import PATCHED_VERSIONS

    installed = {name: version(name) for name in PATCHED_VERSIONS}
    assert installed == PATCHED_VERSIONS, (
        "Faust/aiokafka changed: re-read streams/runtime/faust_patches.py against the new "
        "upstream code, then update PATCHED_VERSIONS"
    )
