"""The concepts artifact: for each class, the visual parts that identify it.

``concepts.parquet`` (one row per class and concept: class_name, concept, weight) is what later
stages read; ``concepts.json`` holds the same table for people, with provenance (source, model,
prompt hash, temperature, date) and, for the LLM source, what each filter dropped per class.
Sources: ``catalog`` (a YAML file ``class: [concepts]``, or the dataset's own catalog, e.g. the
world's part names) and ``llm`` (``pipeline.concepts.llm``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.utils.atomic import write_json, write_with
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.concepts import ConceptsConfig

CONCEPTS_JSON = "concepts.json"
CONCEPTS_PARQUET = "concepts.parquet"
FORMAT_VERSION = 1
DATASET_CATALOG = "world.json"


class ConceptsError(CftError):
    """A catalog or concepts artifact that cannot be used; names the file and the class."""


def _validate(catalog: Any, classes: list[str], name: str) -> dict[str, list[str]]:
    if not isinstance(catalog, dict):
        raise ConceptsError(f"{name}: expected a mapping class -> list of concepts")
    unknown = sorted(set(catalog) - set(classes))
    if unknown:
        raise ConceptsError(f"{name}: unknown class(es) {unknown}; the dataset's classes are {classes}")
    missing = [cls for cls in classes if cls not in catalog]
    if missing:
        raise ConceptsError(f"{name}: no concepts for class(es) {missing}")
    out: dict[str, list[str]] = {}
    for cls in classes:
        concepts = catalog[cls]
        if (
            not isinstance(concepts, list)
            or not concepts
            or not all(isinstance(c, str) and c.strip() for c in concepts)
        ):
            raise ConceptsError(f"{name}: class '{cls}' needs a non-empty list of non-empty strings, got {concepts!r}")
        out[cls] = list(dict.fromkeys(c.strip() for c in concepts))
    return out


def catalog_concepts(
    config: ConceptsConfig, dataset_dir: str | Path, classes: list[str]
) -> tuple[dict[str, list[str]], str]:
    """Concepts per class from the configured catalog; returns them and where they came from."""
    if config.catalog is not None:
        path = Path(config.catalog)
        if not path.is_file():
            raise ConceptsError(f"{path}: concept catalog not found (concepts.catalog)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConceptsError(f"{path}: not valid YAML: {exc}") from exc
        return _validate(raw, classes, str(path)), str(path)
    path = Path(dataset_dir) / DATASET_CATALOG
    if not path.is_file():
        raise ConceptsError(f"{path}: the dataset ships no concept catalog; set concepts.catalog to a YAML file")
    raw = json.loads(path.read_text()).get("concepts")
    return _validate(raw, classes, f"{path} (concepts)"), f"dataset catalog {path.name}"


def write_concepts(
    out_dir: str | Path,
    concepts: dict[str, list[str]],
    provenance: dict[str, Any],
    class_stats: dict[str, Any] | None = None,
) -> None:
    """``concepts.parquet`` is the table later stages read (it changes only when the concepts do);
    ``concepts.json`` adds provenance and per-class filter statistics for people."""
    out_dir = Path(out_dir)
    rows = [(cls, concept, 1.0) for cls, names in concepts.items() for concept in names]
    table = pa.table(
        {"class_name": [r[0] for r in rows], "concept": [r[1] for r in rows], "weight": [r[2] for r in rows]},
        schema=pa.schema([("class_name", pa.string()), ("concept", pa.string()), ("weight", pa.float32())]),
    )
    write_with(out_dir / CONCEPTS_PARQUET, lambda tmp: pq.write_table(table, tmp))
    payload = {"format_version": FORMAT_VERSION, "provenance": provenance, "classes": concepts}
    if class_stats is not None:
        payload["filter_stats"] = class_stats
    write_json(out_dir / CONCEPTS_JSON, payload)


def read_concepts(artifact_dir: str | Path) -> dict[str, list[str]]:
    """Class -> concepts, in order, from ``concepts.parquet``."""
    path = Path(artifact_dir) / CONCEPTS_PARQUET
    if not path.is_file():
        raise ConceptsError(f"{path}: concepts table not found (run `cft concepts`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ConceptsError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = {"class_name", "concept"} - set(table.column_names)
    if missing:
        raise ConceptsError(f"{path}: missing column(s) {sorted(missing)}")
    concepts: dict[str, list[str]] = {}
    for cls, concept in zip(table.column("class_name").to_pylist(), table.column("concept").to_pylist(), strict=True):
        concepts.setdefault(cls, []).append(concept)
    return concepts
