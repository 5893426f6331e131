"""`cft report`: every benchmark's results side by side, out-of-distribution means and forgetting."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config import EvaluateConfig, load_section
from stages.common import PARAMS_OPTION, user_errors


def report(
    params: Path = PARAMS_OPTION,
    results: Path = typer.Option(Path("metrics/evaluate"), help="folder of `cft evaluate <benchmark>` metrics JSONs"),
    metrics: Path = typer.Option(Path("metrics/evaluate.json"), help="summary metrics JSON"),
    plots: Path = typer.Option(Path("plots/summary"), help="charts per metric, benchmarks side by side"),
) -> None:
    """Summarise the benchmarks of `evaluate.benchmarks` (each evaluated by `cft evaluate <name>`)."""
    with user_errors():
        config = load_section(params, "evaluate", EvaluateConfig)
        from pipeline.benchmarks.reports import read_benchmark_metrics, summarise, write_summary

        per_benchmark = read_benchmark_metrics(results, list(config.benchmarks))
        summary = summarise(per_benchmark, config.in_distribution)
        write_summary(per_benchmark, summary, metrics, plots)
    for name, row in summary.items():
        shown = ", ".join(f"{key} {value:.3f}" for key, value in row.items())
        typer.echo(f"{name}: {shown}")
