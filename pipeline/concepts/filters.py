"""Filtering proposed concepts: each step a param, each drop counted per class.

Concepts are compared after normalisation (lower case, no leading article, no trailing
punctuation, single spaces). Steps, in order: too long, duplicate, names the class (or a word of
its name), context rather than a part (a word from ``context_terms``), then the cap to K.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config.concepts import ConceptFilterConfig

DEFAULT_CONTEXT_TERMS = [
    "background",
    "habitat",
    "environment",
    "surroundings",
    "scene",
    "setting",
    "water",
    "sky",
    "ground",
    "grass",
    "sand",
    "soil",
    "forest",
    "field",
    "road",
    "street",
    "weather",
    "ocean",
    "sea",
    "river",
    "lake",
    "snow",
    "cloud",
    "clouds",
    "indoors",
    "outdoors",
    "owner",
    "person",
    "people",
    "hand",
]

_ARTICLE = re.compile(r"^(a|an|the)\s+")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


_PUNCTUATION = " .,;:!?\"'`*-"


def normalise_concept(text: str) -> str:
    text = _SPACES.sub(" ", text.lower()).strip(_PUNCTUATION)
    return _ARTICLE.sub("", text).strip(_PUNCTUATION)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _plural_variants(words: Iterable[str]) -> set[str]:
    out = set()
    for word in words:
        out |= {word, word + "s", word + "es"}
        if word.endswith("s"):
            out.add(word[:-1])
        if word.endswith("es"):
            out.add(word[:-2])
    return out


@dataclass
class FilterReport:
    proposed: int = 0
    too_long: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    names_class: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    over_cap: list[str] = field(default_factory=list)
    kept: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "proposed": self.proposed,
            "kept": self.kept,
            "dropped": {
                "too_long": self.too_long,
                "duplicate": self.duplicate,
                "names_class": self.names_class,
                "context": self.context,
                "over_cap": self.over_cap,
            },
        }


def filter_concepts(
    class_name: str, proposed: list[str], config: ConceptFilterConfig, parents: Iterable[str] = ()
) -> tuple[list[str], FilterReport]:
    """The kept concepts (in proposal order) and what each step dropped."""
    report = FilterReport(proposed=len(proposed))
    class_words = {w for name in (class_name, *parents) for w in _words(name) if len(w) >= 3}
    class_forms = _plural_variants(class_words)
    context_forms = _plural_variants(_words(" ".join(config.context_terms)))
    kept: list[str] = []
    for raw in proposed:
        concept = normalise_concept(raw)
        if not concept:
            continue
        if len(concept) > config.max_chars:
            report.too_long.append(concept)
        elif concept in kept:
            report.duplicate.append(concept)
        elif config.drop_class_name and _words(concept) & class_forms:
            report.names_class.append(concept)
        elif _words(concept) & context_forms:
            report.context.append(concept)
        elif len(kept) >= config.max_concepts:
            report.over_cap.append(concept)
        else:
            kept.append(concept)
    report.kept = len(kept)
    return kept, report
