"""Every "docs/<guide>.md" the code's messages and docstrings name exists, and so does the section
named after it ("docs/configuration.md: Your own files"); the README links every guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/([\w.-]+\.md)(?::\s+([^)\"'`;,\n]+))?")


def headings(text: str) -> list[str]:
    """The titles of the ``## `` and ``### `` headings, outside fenced code blocks (where ``#`` is a comment)."""
    titles, fence = [], None
    for line in text.splitlines():
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * 3
            elif marker.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            heading = re.match(r"^(##|###)[ \t]+(.+?)[ \t]*#*[ \t]*$", line)
            if heading:
                titles.append(heading.group(2).strip())
    return titles


README_REFERENCE = re.compile(r"README: ([A-Z][^)\"'`;,\n(]+)")


def sources() -> list[Path]:
    """The code and the two files users edit, whose comments point into the guides."""
    code = [path for folder in ("pipeline", "stages") for path in sorted((REPO / folder).rglob("*.py"))]
    return [*code, REPO / "params.yaml", REPO / "dvc.yaml"]


def references() -> list[tuple[str, int, str, str | None]]:
    """(file, line, guide, section or None) for every reference in the code, params.yaml and dvc.yaml."""
    found = []
    for path in sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in REFERENCE.finditer(line):
                section = match.group(2).strip().rstrip(".") if match.group(2) else None
                found.append((str(path.relative_to(REPO)), number, match.group(1), section))
    return found


def test_heading_parser_skips_code_and_reads_both_levels() -> None:
    text = "# Title\n## Quick start\n```bash\n## not a heading\n# comment\n```\n### Sub: part (x)\n#### too deep\n**Bold.** text\n"
    assert headings(text) == ["Quick start", "Sub: part (x)"]


def test_the_reference_pattern_reads_guide_and_section() -> None:
    line = 'raise X("no root (docs/configuration.md: Your own files)") and docs/real-data.md.'
    assert [(m.group(1), m.group(2)) for m in REFERENCE.finditer(line)] == [
        ("configuration.md", "Your own files"),
        ("real-data.md", None),
    ]


def test_the_code_has_doc_references() -> None:
    assert len(references()) >= 5  # the scan below is not vacuous


@pytest.mark.parametrize(("path", "line", "guide", "section"), references(), ids=lambda value: str(value)[:40])
def test_doc_reference_names_a_guide_and_its_section(path: str, line: int, guide: str, section: str | None) -> None:
    file = REPO / "docs" / guide
    assert file.is_file(), f"{path}:{line}: docs/{guide} does not exist"
    if section is not None:
        assert section in headings(file.read_text()), f"{path}:{line}: docs/{guide} has no section '{section}'"


def test_the_readme_links_every_guide() -> None:
    readme = (REPO / "README.md").read_text()
    guides = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert guides and [name for name in guides if f"(docs/{name}" not in readme] == []


def test_readme_references_name_a_readme_section() -> None:
    """ "README: <section>" in the code, params.yaml and dvc.yaml names the start of a README heading."""
    titles = headings((REPO / "README.md").read_text())
    found = [
        (path.name, number, match.group(1).strip())
        for path in sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in README_REFERENCE.finditer(line)
    ]
    assert found, "the scan is not vacuous"
    missing = [
        (name, number, section) for name, number, section in found if not any(t.startswith(section) for t in titles)
    ]
    assert not missing, f"README has no section starting with: {missing}"
