"""`cft prepare`: build the dataset artifact (manifest + images) from the ``data`` params section."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.atomic import atomic_directory, write_json
from pipeline.config import PrepareConfig, load_section
from stages.common import PARAMS_OPTION, user_errors


def prepare(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="dataset artifact directory (fully rewritten)"),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="summary metrics JSON"),
    workers: int = typer.Option(0, help="rendering processes; 0 = up to 4 CPU cores"),
) -> None:
    """Build the dataset: the built-in world (`data.source: world`), its manifest and contact sheets."""
    with user_errors():
        config = load_section(params, "data", PrepareConfig)
        from pipeline.world.build import build_world

        with atomic_directory(out) as staging:
            summary = build_world(config, staging, workers=workers or None)
        write_json(metrics, summary["splits"])
    counts = ", ".join(f"{split} {info['images']}" for split, info in summary["splits"].items())
    typer.echo(f"prepared {out}: {len(summary['classes'])} classes; {counts}")
