"""Generated sections of the README (settings and metrics tables), kept between markers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]


def write_section(readme: Path, marker: str, body: str) -> None:
    """Replace what stands between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{tail}")
