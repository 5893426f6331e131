"""`cft base`: the model every later stage starts from, saved as a model artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config import load_section
from pipeline.config.base import BaseConfig
from pipeline.utils.atomic import atomic_directory
from pipeline.utils.dvc_inputs import check_declared
from stages.common import PARAMS_OPTION, user_errors


def base(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    out: Path = typer.Option(Path("models/base"), help="model artifact directory (fully rewritten)"),
    metrics: Path = typer.Option(Path("results/base.json"), help="accuracy per split, JSON"),
    plots: Path = typer.Option(Path("plots/base"), help="training curves and accuracy charts"),
) -> None:
    """Build (and on the world, train) the base model from the `base` params section."""
    with user_errors():
        config = load_section(params, "base", BaseConfig)
        check_declared(
            {"base.checkpoint": config.checkpoint, "base.classifier_checkpoint": config.classifier_checkpoint}, params
        )
        from pipeline.models.factory import save_model_artifact
        from pipeline.reports.base import write_base_reports
        from pipeline.training.base import train_base

        outcome = train_base(config, data / "manifest.parquet")
        with atomic_directory(out) as staging:
            save_model_artifact(
                staging,
                outcome.model,
                config,
                outcome.class_names,
                outcome.preprocessing,
                metrics={f"{split} accuracy": value for split, value in outcome.accuracy.items()},
            )
        write_base_reports(outcome, metrics, plots)
    summary = ", ".join(f"{split} {acc:.3f}" for split, acc in outcome.accuracy.items())
    typer.echo(f"base model {out} (trained {outcome.train_seconds:.0f} s); accuracy: {summary}")
    for warning in outcome.warnings:
        typer.secho(f"warning: {warning} (recorded in {metrics})", fg=typer.colors.YELLOW, err=True)
