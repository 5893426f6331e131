"""`cft report`: every (benchmark, model) result side by side, out-of-distribution means and forgetting."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config.evaluate import load_evaluate
from stages.common import PARAMS_OPTION, user_errors


def report(
    params: Path = PARAMS_OPTION,
    results: Path = typer.Option(
        Path("results/evaluate"), help="folder of `cft evaluate` results: <benchmark>/<model>/"
    ),
    metrics: Path = typer.Option(
        Path("metrics"), help="folder of the compact metrics, one JSON per model (what `dvc metrics show` prints)"
    ),
    plots: Path = typer.Option(
        Path("plots/summary"), help="full table (metrics.csv), charts per metric, relevance pictures per benchmark"
    ),
) -> None:
    """Summarise the benchmarks of `evaluate.benchmarks` for every model of `evaluate.models`."""
    with user_errors():
        config = load_evaluate(params)
        from pipeline.reports.summary import read_results, summarise, write_summary

        per_benchmark = read_results(results, list(config.benchmarks), config.models)
        apart = frozenset(name for name, benchmark in config.benchmarks.items() if not benchmark.in_ood_mean())
        summary = summarise(per_benchmark, config.in_distribution, apart=apart, shortcut_tests=config.shortcut_tests)
        write_summary(per_benchmark, summary, metrics, plots, results)
    for name, row in summary.items():
        shown = ", ".join(f"{key} {value:.3f}" for key, value in row.items())
        typer.echo(f"{name}: {shown}")
