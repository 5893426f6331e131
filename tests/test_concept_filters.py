from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.concepts.filters import DEFAULT_CONTEXT_TERMS, FilterReport, filter_concepts, normalise_concept
from pipeline.config.concepts import ConceptFilterConfig

STRIPPED = " .,;:!?\"'`*-"
VOCAB = [
    "a",
    "an",
    "the",
    "wing",
    "wings",
    "beak",
    "long",
    "red",
    "sky",
    "grass",
    "water",
    "heron",
    "herons",
    "duck",
    "ducks",
    "bus",
    "buses",
    "glass",
    "glasses",
    "feet",
    "tail",
    "x",
    "ab",
    "cat",
    "t",
    "shirt",
    "Wings",
    "THE",
    "Sky",
    "eye",
    "é",
    "café",
    "42",
]
SEPARATORS = [" ", "  ", "\t", "-", ", ", ".", "\n", "'", '"', "*", ""]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@st.composite
def phrases(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(VOCAB), min_size=0, max_size=5))
    text = ""
    for part in parts:
        text += draw(st.sampled_from(SEPARATORS)) + part
    return text + draw(st.sampled_from(SEPARATORS))


concept_texts = st.one_of(phrases(), st.text(max_size=45), st.text(alphabet="ab .-", max_size=12))
class_names = st.one_of(phrases(), st.text(max_size=20))
context_lists = st.one_of(
    st.just(list(DEFAULT_CONTEXT_TERMS)),
    st.lists(st.one_of(st.sampled_from(VOCAB), st.text(max_size=10)), max_size=6),
)


@st.composite
def filter_configs(draw: st.DrawFn) -> ConceptFilterConfig:
    return ConceptFilterConfig(
        max_chars=draw(st.integers(3, 40)),
        max_concepts=draw(st.integers(1, 10)),
        drop_class_name=draw(st.booleans()),
        context_terms=draw(context_lists),
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Long Beak", "long beak"),
        ("WINGS", "wings"),
        ("the wings", "wings"),
        ("The Wings", "wings"),
        ("a beak", "beak"),
        ("An Eye", "eye"),
        ("another wing", "another wing"),
        ("theatre mask", "theatre mask"),
        ("anchor tail", "anchor tail"),
        ("wings.", "wings"),
        ("wings!?", "wings"),
        ("red crest;", "red crest"),
        ('"red crest"', "red crest"),
        ("*bold stripes*", "bold stripes"),
        ("`tail`", "tail"),
        ("- webbed feet", "webbed feet"),
        ("  long \t  beak\n", "long beak"),
        ("the   long\n\nbeak.", "long beak"),
        ("black-tipped wings", "black-tipped wings"),
        ("wing (left)", "wing (left)"),
        ("the", "the"),
        ("a", "a"),
        ("...", ""),
        ("   ", ""),
        ("", ""),
    ],
)
def test_normalise_concept(raw: str, expected: str) -> None:
    assert normalise_concept(raw) == expected


@pytest.mark.parametrize("raw", ['"The wings"', "- the wings", "'a wings'"])
def test_normalise_concept_drops_article_after_punctuation(raw: str) -> None:
    assert normalise_concept(raw) == "wings"


@settings(max_examples=300, deadline=None)
@given(st.one_of(phrases(), st.text(max_size=40)))
def test_normalise_concept_shape(raw: str) -> None:
    out = normalise_concept(raw)
    assert out == out.lower()
    assert out == " ".join(out.split())
    if out:
        assert out[0] not in STRIPPED and out[-1] not in STRIPPED
    assert normalise_concept(raw.upper()) == out or raw.upper().lower() != raw.lower()
    assert normalise_concept(f"  {raw}  ") == out


def test_filter_steps_and_report() -> None:
    config = ConceptFilterConfig(max_chars=12, max_concepts=3)
    proposed = [
        "Long Beak",
        "long beak.",
        "blue sky",
        "heron head",
        "Herons",
        "",
        "   ",
        "grey heron legs far",
        "wings",
        "tail",
        "crest",
        "webbed feet",
        "the sky",
    ]
    kept, report = filter_concepts("grey heron", proposed, config)
    assert kept == ["long beak", "wings", "tail"]
    assert report.as_dict() == {
        "proposed": 13,
        "kept": 3,
        "dropped": {
            "too_long": ["grey heron legs far"],
            "duplicate": ["long beak"],
            "names_class": ["heron head", "herons"],
            "context": ["blue sky", "sky"],
            "over_cap": ["crest", "webbed feet"],
        },
    }


def test_filter_step_order() -> None:
    config = ConceptFilterConfig(max_chars=10, max_concepts=1, context_terms=["sky"])
    kept, report = filter_concepts(
        "duck", ["duck in the sky", "duck", "sky", "wing", "wing", "duck bill", "sky"], config
    )
    assert kept == ["wing"]
    assert report.too_long == ["duck in the sky"]
    assert report.names_class == ["duck", "duck bill"]
    assert report.context == ["sky", "sky"]
    assert report.duplicate == ["wing"]
    assert report.over_cap == []


@pytest.mark.parametrize(
    ("class_name", "concept", "dropped"),
    [
        ("duck", "ducks", True),
        ("duck", "duckling", False),
        ("bus", "buses", True),
        ("wings", "wing", True),
        ("glasses", "glass", True),
        ("t-shirt", "t pattern", False),
        ("t-shirt", "shirt collar", True),
        ("ox", "ox horns", False),
        ("Golden Retriever", "golden fur", True),
    ],
)
def test_class_name_words(class_name: str, concept: str, dropped: bool) -> None:
    kept, report = filter_concepts(class_name, [concept], ConceptFilterConfig(context_terms=[]))
    assert report.names_class == ([concept] if dropped else [])
    assert kept == ([] if dropped else [concept])
    kept, report = filter_concepts(class_name, [concept], ConceptFilterConfig(context_terms=[], drop_class_name=False))
    assert kept == [concept]


def test_parent_names_are_class_words() -> None:
    kept, report = filter_concepts("mallard", ["duck bill", "green head"], ConceptFilterConfig(), parents=["duck"])
    assert kept == ["green head"]
    assert report.names_class == ["duck bill"]


def test_context_plural_forms() -> None:
    config = ConceptFilterConfig(context_terms=["cloud", "grass"])
    kept, report = filter_concepts("cat", ["clouds", "grasses", "cloudy fur", "whiskers"], config)
    assert kept == ["cloudy fur", "whiskers"]
    assert report.context == ["clouds", "grasses"]


def test_empty_proposals() -> None:
    kept, report = filter_concepts("cat", [], ConceptFilterConfig())
    assert kept == []
    assert report == FilterReport(proposed=0, kept=0)


@settings(max_examples=200, deadline=None)
@given(class_name=class_names, proposed=st.lists(concept_texts, max_size=25), config=filter_configs())
def test_filter_concepts_properties(class_name: str, proposed: list[str], config: ConceptFilterConfig) -> None:
    kept, report = filter_concepts(class_name, proposed, config)
    normalised = [normalise_concept(p) for p in proposed]
    non_empty = [n for n in normalised if n]

    assert len(kept) == len(set(kept))
    assert all(item in normalised for item in kept)
    assert len(kept) <= config.max_concepts
    assert all(0 < len(item) <= config.max_chars for item in kept)

    context_words = words(" ".join(config.context_terms))
    assert all(not (words(item) & context_words) for item in kept)
    if config.drop_class_name:
        class_words = {w for w in words(class_name) if len(w) >= 3}
        assert all(not (words(item) & class_words) for item in kept)

    first_seen = [non_empty.index(item) for item in kept]
    assert first_seen == sorted(first_seen)

    dropped = report.too_long + report.duplicate + report.names_class + report.context + report.over_cap
    assert report.proposed == len(proposed)
    assert report.kept == len(kept)
    assert report.kept + len(dropped) == len(non_empty)
    assert sorted(kept + dropped) == sorted(non_empty)
    assert all(len(item) > config.max_chars for item in report.too_long)
    assert all(item in kept for item in report.duplicate)
    if report.over_cap:
        assert len(kept) == config.max_concepts
    if config.drop_class_name is False:
        assert report.names_class == []


@settings(max_examples=100, deadline=None)
@given(proposed=st.lists(concept_texts, max_size=15), config=filter_configs())
def test_filter_concepts_is_deterministic_and_unaffected_by_empties(
    proposed: list[str], config: ConceptFilterConfig
) -> None:
    kept, report = filter_concepts("grey heron", proposed, config)
    padded = [" ", *proposed, "", "..."]
    kept_padded, report_padded = filter_concepts("grey heron", padded, config)
    assert kept_padded == kept
    assert report_padded.as_dict()["dropped"] == report.as_dict()["dropped"]
    assert report_padded.proposed == report.proposed + 3
