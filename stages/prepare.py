"""`cft prepare`: build the dataset artifact (manifest + images) from the ``data`` params section."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.atomic import atomic_directory, write_json
from pipeline.config import PrepareConfig, load_section
from stages.common import PARAMS_OPTION, user_errors


def prepare(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="dataset artifact directory (fully rewritten)"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset artifact directory (fully rewritten)"),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="summary metrics JSON"),
    workers: int = typer.Option(0, help="rendering processes; 0 = up to 4 CPU cores"),
) -> None:
    """Build the dataset: the built-in world (`data.source: world`), its manifest and contact sheets."""
    with user_errors():
        config = load_section(params, "data", PrepareConfig)
        from pipeline.world.build import build_world

        from pipeline.manifest import read_manifest
        from pipeline.subset import SUBSET_NAME, select_subset, write_subset

        with atomic_directory(out) as staging:
            summary = build_world(config, staging, workers=workers or None)
        chosen = select_subset(read_manifest(out / "manifest.parquet"), config.subset)
        with atomic_directory(subset) as staging:
            write_subset(staging / SUBSET_NAME, chosen)
        seen = json.loads(chosen.schema.metadata[b"cft.subset"])["seen_classes"]
        write_json(metrics, {"splits": summary["splits"], "subset": {"seen_classes": seen, "finetune_images": chosen.column("role").to_pylist().count("finetune")}})
    counts = ", ".join(f"{split} {info['images']}" for split, info in summary["splits"].items())
    typer.echo(f"prepared {out}: {len(summary['classes'])} classes; {counts}")
    typer.echo(f"fine-tuning subset {subset}: seen classes {seen}")
