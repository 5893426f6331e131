"""The report's spurious-reliance section: per model, how much it leans on what is not the object.

* ``bg_gap``: accuracy on mixed_same minus mixed_rand (Xiao et al.'s BG-Gap; ImageNet-9 and the
  world's backgrounds split): the object is the same, only the background's class changes;
  0 = the background's class does not matter.
* ``only_bg_accuracy``: accuracy on the background alone (ImageNet-9's only_bg_t, the world's
  only_bg); chance = 1 / classes.
* ``worst_group_accuracy`` and ``weighted_accuracy``: Waterbirds' lowest group accuracy, and the
  group accuracies weighted by the train split's group sizes.
* ``ablation_drop``: Hard ImageNet's accuracy lost when the object is ablated (high = the object
  matters).
* ``foreground_share``: share of the predicted class's positive relevance on the object
  (1 − ``background_share``): on Hard ImageNet when it is evaluated (Moayeri et al.'s relative
  foreground measure on relevance), else in distribution.

Each is the mean over the benchmarks that report it (usually one), also for seen and unseen classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.reports.base import write_csv
from pipeline.reports.charts import grouped_bar_chart

SPURIOUS_KEYS = ("bg_gap", "only_bg_accuracy", "worst_group_accuracy", "weighted_accuracy", "ablation_drop")
GROUP_SUFFIXES = ("", "_seen", "_unseen")
CHART = {
    "BG-gap": "bg_gap",
    "BG-gap, seen": "bg_gap_seen",
    "BG-gap, unseen": "bg_gap_unseen",
    "only-bg accuracy": "only_bg_accuracy",
    "worst group": "worst_group_accuracy",
    "weighted accuracy": "weighted_accuracy",
    "ablation drop": "ablation_drop",
    "relevance on object": "foreground_share",
}


def _foreground_share(
    per_benchmark: dict[str, dict[str, Any]], in_distribution: str | None, model: str
) -> float | None:
    hard = [
        result["models"].get(model, {}).get("background_share")
        for result in per_benchmark.values()
        if result.get("benchmark", {}).get("kind") == "hard_imagenet"
    ]
    shares = [share for share in hard if share is not None]
    if not shares:
        share = per_benchmark.get(in_distribution or "", {}).get("models", {}).get(model, {}).get("background_share")
        shares = [share] if share is not None else []
    return round(1.0 - float(np.mean(shares)), 6) if shares else None


def spurious_summary(
    per_benchmark: dict[str, dict[str, Any]], in_distribution: str | None
) -> dict[str, dict[str, float]]:
    """model -> the section's numbers (keys of SPURIOUS_KEYS with group suffixes, foreground_share)."""
    models = list(dict.fromkeys(model for result in per_benchmark.values() for model in result["models"]))
    summary: dict[str, dict[str, float]] = {}
    for model in models:
        row: dict[str, float] = {}
        for key in SPURIOUS_KEYS:
            for suffix in GROUP_SUFFIXES:
                values = [
                    result["models"][model][f"{key}{suffix}"]
                    for result in per_benchmark.values()
                    if result["models"].get(model, {}).get(f"{key}{suffix}") is not None
                ]
                if values:
                    row[f"{key}{suffix}"] = round(float(np.mean(values)), 6)
        share = _foreground_share(per_benchmark, in_distribution, model)
        if share is not None:
            row["foreground_share"] = share
        if row:
            summary[model] = row
    return summary


def write_spurious_plots(summary: dict[str, dict[str, float]], plots_dir: Path) -> None:
    """plots/summary/spurious.csv (one row per model) and spurious.png (the headline numbers) from the
    report's summary rows; nothing when no benchmark measures spurious reliance."""
    if not any(key in row for row in summary.values() for key in SPURIOUS_KEYS):
        return
    mine = ("foreground_share", *(f"{key}{suffix}" for key in SPURIOUS_KEYS for suffix in GROUP_SUFFIXES))
    write_csv(
        plots_dir / "spurious.csv",
        [{"model": model, **{key: row[key] for key in mine if key in row}} for model, row in summary.items()],
    )
    shown = {label: {model: row[key] for model, row in summary.items() if key in row} for label, key in CHART.items()}
    shown = {label: values for label, values in shown.items() if values}
    low = min(0.0, *(value for values in shown.values() for value in values.values()))
    grouped_bar_chart(shown, "spurious reliance", plots_dir / "spurious.png", "", (low - 0.05, 1.15))
