"""`cft concepts`: the concepts artifact (class -> visual parts) from the ``concepts`` section."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.atomic import atomic_directory
from pipeline.config import ConceptsConfig, load_section
from stages.common import PARAMS_OPTION, user_errors


def concepts(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    out: Path = typer.Option(Path("data/concepts"), help="concepts artifact directory (fully rewritten)"),
) -> None:
    """Write the concepts of every class (source `catalog`: a YAML file or the dataset's own catalog)."""
    with user_errors():
        config = load_section(params, "concepts", ConceptsConfig)
        from pipeline.concepts import catalog_concepts, write_concepts
        from pipeline.manifest import classes_of, read_manifest

        classes = classes_of(read_manifest(data / "manifest.parquet"))
        chosen, origin = catalog_concepts(config, data, classes)
        with atomic_directory(out) as staging:
            write_concepts(staging, chosen, {"source": config.source, "catalog": origin})
    total = sum(len(names) for names in chosen.values())
    typer.echo(f"concepts {out}: {total} concepts for {len(chosen)} classes from {origin}")
