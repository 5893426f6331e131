"""Metrics (JSON for `dvc metrics`) and plots (CSV for `dvc plots`, PNG for people)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.reports.charts import bar_chart, line_chart
from pipeline.utils.atomic import write_json, write_text

if TYPE_CHECKING:
    from pipeline.training.base import BaseOutcome


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
    write_text(path, buffer.getvalue())


def base_metrics(outcome: BaseOutcome) -> dict[str, Any]:
    """Accuracy per split, plus how much the model leans on each shortcut of the world.

    ``shortcut_gap`` = in-distribution accuracy minus accuracy when the background belongs to
    another class: near 0 for a model that ignores the background; ``cue_gap`` the same when the
    cue on the object belongs to another class.
    """
    metrics: dict[str, Any] = {"accuracy": {k: round(v, 6) for k, v in outcome.accuracy.items()}}
    if "test" in outcome.accuracy and "swapped_bg" in outcome.accuracy:
        metrics["shortcut_gap"] = round(outcome.accuracy["test"] - outcome.accuracy["swapped_bg"], 6)
    if "test" in outcome.accuracy and "cue_swapped" in outcome.accuracy:
        metrics["cue_gap"] = round(outcome.accuracy["test"] - outcome.accuracy["cue_swapped"], 6)
    if outcome.warnings:
        metrics["warnings"] = list(outcome.warnings)
    return metrics


def write_base_reports(outcome: BaseOutcome, metrics_path: str | Path, plots_dir: str | Path) -> None:
    plots_dir = Path(plots_dir)
    write_json(metrics_path, base_metrics(outcome))
    write_csv(plots_dir / "training.csv", outcome.curves)
    write_csv(plots_dir / "accuracy.csv", [{"split": k, "accuracy": v} for k, v in outcome.accuracy.items()])
    bar_chart(outcome.accuracy, "base model: accuracy per split", plots_dir / "accuracy.png")
    if outcome.curves:
        series = {key: [row[key] for row in outcome.curves] for key in outcome.curves[0] if key.endswith("accuracy")}
        line_chart(series, "epoch", "base model training", plots_dir / "training.png")
