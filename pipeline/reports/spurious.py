"""The report's spurious-reliance section: per model, how much it leans on what is not the object.

* ``bg_gap``: accuracy on mixed_same minus mixed_rand (Xiao et al.'s BG-Gap): the object is the
  same, only the background's class changes; 0 = the background's class does not matter.
* ``only_bg_accuracy``: accuracy on the background alone (ImageNet-9's only_bg_t, the world's
  only_bg); chance = 1 / classes.
* ``foreground_share``: share of the predicted class's positive relevance on the object, in
  distribution (1 − ``background_share``; Moayeri et al.'s relative foreground score uses the same
  measure on Hard ImageNet).

Each is the mean over the benchmarks that report it (usually one), also for seen and unseen classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.reports.base import write_csv
from pipeline.reports.charts import grouped_bar_chart

SPURIOUS_KEYS = ("bg_gap", "only_bg_accuracy")
GROUP_SUFFIXES = ("", "_seen", "_unseen")


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
        share = per_benchmark.get(in_distribution or "", {}).get("models", {}).get(model, {}).get("background_share")
        if share is not None:
            row["foreground_share"] = round(1.0 - share, 6)
        if row:
            summary[model] = row
    return summary


def write_spurious_plots(summary: dict[str, dict[str, float]], plots_dir: Path) -> None:
    """plots/summary/spurious.csv (one row per model) and spurious.png (the headline numbers) from the
    report's summary rows; nothing when no benchmark measures background reliance."""
    if not any(key in row for row in summary.values() for key in SPURIOUS_KEYS):
        return
    mine = ("foreground_share", *(f"{key}{suffix}" for key in SPURIOUS_KEYS for suffix in GROUP_SUFFIXES))
    write_csv(
        plots_dir / "spurious.csv",
        [{"model": model, **{key: row[key] for key in mine if key in row}} for model, row in summary.items()],
    )
    columns = {
        "BG-gap": "bg_gap",
        "BG-gap, seen": "bg_gap_seen",
        "BG-gap, unseen": "bg_gap_unseen",
        "only-bg accuracy": "only_bg_accuracy",
        "relevance on object": "foreground_share",
    }
    shown = {label: {model: row[key] for model, row in summary.items() if key in row} for label, key in columns.items()}
    shown = {label: values for label, values in shown.items() if values}
    low = min(0.0, *(value for values in shown.values() for value in values.values()))
    grouped_bar_chart(
        shown, "spurious reliance (BG-gap: mixed_same - mixed_rand)", plots_dir / "spurious.png", "", (low - 0.05, 1.15)
    )
