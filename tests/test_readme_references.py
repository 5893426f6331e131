"""Every "README: <title>" in the code's messages and docstrings names a section README.md has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "README: "
# What may follow a title in a message: a closing bracket, a quote, punctuation that ends a clause, or the line's end.
AFTER_TITLE = re.compile(r"""$|[)\]"'`;,.\s]*($|[)\]"'`;,])""")


def readme_headings(text: str) -> list[str]:
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


def references() -> list[tuple[str, int, str]]:
    """(file, line, text after "README: " up to the line's end) for every reference in pipeline/ and stages/."""
    found = []
    for folder in ("pipeline", "stages"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                start = line.find(REFERENCE)
                while start >= 0:
                    found.append((str(path.relative_to(REPO)), number, line[start + len(REFERENCE) :]))
                    start = line.find(REFERENCE, start + 1)
    return found


def named_heading(rest: str, headings: list[str]) -> str | None:
    """The heading ``rest`` starts with, followed by the end of the reference (the longest, if several)."""
    matches = [title for title in headings if rest.startswith(title) and AFTER_TITLE.match(rest, len(title))]
    return max(matches, key=len, default=None)


def test_heading_parser_skips_code_and_reads_both_levels() -> None:
    text = "# Title\n## Quick start\n```bash\n## not a heading\n# comment\n```\n### Sub: part (x)\n#### too deep\n**Bold.** text\n"
    assert readme_headings(text) == ["Quick start", "Sub: part (x)"]
    headings = ["Real data: ImageNet and the OOD benchmarks", "Relevance (AttnLRP)", "Configuration"]
    assert named_heading("Real data: ImageNet and the OOD benchmarks)", headings) == headings[0]
    assert named_heading('Relevance (AttnLRP))")', headings) == headings[1]
    assert named_heading("Configuration", headings) == "Configuration"
    assert named_heading("Real data)", headings) is None  # a prefix of a title is not the title
    assert named_heading("Configuration files)", headings) is None
    assert named_heading("Mask backends)", headings) is None


def test_the_code_has_readme_references() -> None:
    assert len(references()) >= 3  # the scan below is not vacuous


@pytest.mark.parametrize(("path", "line", "rest"), references(), ids=lambda value: str(value)[:40])
def test_readme_reference_names_a_heading(path: str, line: int, rest: str) -> None:
    headings = readme_headings((REPO / "README.md").read_text())
    assert named_heading(rest, headings), (
        f"{path}:{line}: 'README: {rest.strip()}' names no '## ' or '### ' heading of README.md; headings: {headings}"
    )
