"""What `cft report` reads and writes: every (benchmark, model) result side by side.

It reads the folders `cft evaluate` leaves (``results/evaluate/<benchmark>/<model>/``, see
files.py) and writes the compact summary that DVC declares as metrics (``metrics/<model>.json``:
a handful of numbers per model, so ``dvc metrics show`` prints one short row per model), the full
per-benchmark table (``plots/summary/metrics.csv``) and the pictures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.benchmarks.files import OVERLAY_NAME, SCORES_NAME
from pipeline.reports.base import write_csv
from pipeline.reports.charts import grouped_bar_chart, overlay_grid, save_png
from pipeline.reports.corruptions import corruption_summary, write_corruption_plots
from pipeline.reports.spurious import spurious_summary, write_spurious_plots
from pipeline.utils.atomic import write_json

MEAN_KEYS = ("accuracy", "accuracy_seen", "accuracy_unseen", "miou", "miou_seen", "miou_unseen", "background_share")
# The DVC metrics of one model (short names: `dvc metrics show` prints them as columns, 120
# characters wide on the world). The relevance means (ood_miou_mean, ood_background_share_mean)
# and every per-benchmark number are in plots/summary/summary.csv and metrics.csv.
COMPACT_KEYS = {
    "ood_acc": "mean accuracy over the out-of-distribution benchmarks",
    "ood_seen": "the same, images of fine-tuned (seen) classes",
    "ood_unseen": "the same, images of unseen classes",
    "id_acc": "accuracy on the in-distribution benchmark",
    "forgetting": "in-distribution accuracy on unseen classes lost against the base model",
    "<name>_drop": "in-distribution accuracy minus the accuracy on the benchmark evaluate.shortcut_tests names (cue_drop, bg_drop)",
    "cue_lift": "in-distribution: share of positive relevance on the cue divided by the cue's share of the image (1 = not singled out)",
    "c_seen": "accuracy on the corruption benchmarks, corruptions the model was fine-tuned on (every severity)",
    "c_unseen": "the same, on the other corruptions (all of them for a model not fine-tuned on corruptions)",
    "c_rel_ce": "corruption error relative to the base model (mean over corruptions; < 1 more robust)",
    "bg_gap": "accuracy on mixed_same minus mixed_rand (ImageNet-9, the world's backgrounds split): what the background's class is worth",
    "only_bg": "accuracy on the background alone (ImageNet-9's only_bg_t, the world's only_bg)",
    "wg_acc": "Waterbirds: worst-group accuracy",
}


def read_results(results_dir: Path, benchmarks: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """benchmark -> {"benchmark": info, "models": {model: scores}}; a missing result is an error naming it."""
    found: dict[str, dict[str, Any]] = {}
    for name in benchmarks:
        for model in models:
            path = results_dir / name / model / SCORES_NAME
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: no results of model '{model}' on benchmark '{name}' (run `cft evaluate {name} {model}` or `dvc repro`)"
                )
            try:
                saved = json.loads(path.read_text())
                scores = saved["scores"]
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}: not a `cft evaluate` scores file ({exc})") from None
            entry = found.setdefault(name, {"benchmark": saved.get("benchmark", {}), "models": {}})
            entry["models"][model] = scores
    return found


def summarise(
    per_benchmark: dict[str, dict[str, Any]],
    in_distribution: str | None,
    reference: str = "base",
    apart: frozenset[str] = frozenset(),
    shortcut_tests: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per model: mean of each metric over the out-of-distribution benchmarks (except those reported
    ``apart``), forgetting = the drop of in-distribution accuracy on unseen classes relative to
    ``reference``, each shortcut test's accuracy drop, the cue's relevance lift in distribution and
    the corruption benchmarks' and the spurious-reliance summaries (reports/corruptions.py, spurious.py)."""
    models = list(dict.fromkeys(model for result in per_benchmark.values() for model in result["models"]))
    corruption = corruption_summary(per_benchmark, reference)
    spurious = spurious_summary(per_benchmark, in_distribution)
    summary: dict[str, dict[str, float]] = {}
    for model in models:
        row: dict[str, float] = {**corruption.get(model, {}), **spurious.get(model, {})}
        for key in MEAN_KEYS:
            values = [
                result["models"][model].get(key)
                for name, result in per_benchmark.items()
                if name != in_distribution and name not in apart and model in result["models"]
            ]
            values = [v for v in values if v is not None]
            if values:
                row[f"ood_{key}_mean"] = round(float(np.mean(values)), 6)
        if in_distribution in per_benchmark:
            models_there = per_benchmark[in_distribution]["models"]
            if models_there.get(model, {}).get("accuracy") is not None:
                row["in_distribution_accuracy"] = models_there[model]["accuracy"]
            mine, theirs = (
                models_there.get(model, {}).get("accuracy_unseen"),
                models_there.get(reference, {}).get("accuracy_unseen"),
            )
            if mine is not None and theirs is not None:
                row["forgetting_unseen"] = round(theirs - mine, 6)
            for name, benchmark in (shortcut_tests or {}).items():
                shifted = per_benchmark.get(benchmark, {}).get("models", {}).get(model, {}).get("accuracy")
                if shifted is not None and "in_distribution_accuracy" in row:
                    row[f"{name}_drop"] = round(row["in_distribution_accuracy"] - shifted, 6)
            mine_there = models_there.get(model, {})
            if mine_there.get("cue_share") is not None and mine_there.get("cue_area"):
                row["cue_lift"] = round(mine_there["cue_share"] / mine_there["cue_area"], 6)
        summary[model] = row
    return summary


def compact(row: dict[str, float]) -> dict[str, float]:
    """The few numbers DVC shows per model (COMPACT_KEYS), rounded to 4 digits."""
    sources = {
        "ood_acc": "ood_accuracy_mean",
        "ood_seen": "ood_accuracy_seen_mean",
        "ood_unseen": "ood_accuracy_unseen_mean",
        "id_acc": "in_distribution_accuracy",
        "forgetting": "forgetting_unseen",
        "c_seen": "corruption_seen_accuracy",
        "c_unseen": "corruption_unseen_accuracy",
        "c_rel_ce": "corruption_relative_ce",
        "bg_gap": "bg_gap",
        "only_bg": "only_bg_accuracy",
        "wg_acc": "worst_group_accuracy",
    }
    sources.update({key: key for key in row if key.endswith("_drop") or key == "cue_lift"})
    return {key: round(row[source], 4) for key, source in sources.items() if row.get(source) is not None}


def write_summary(
    per_benchmark: dict[str, dict[str, Any]],
    summary: dict[str, dict[str, float]],
    metrics_dir: Path,
    plots_dir: Path,
    results_dir: Path,
) -> None:
    """metrics/<model>.json (compact), the full table as CSV, one chart per metric, relevance pictures."""
    for model, row in summary.items():
        write_json(metrics_dir / f"{model}.json", compact(row))
    stale = [path for path in metrics_dir.glob("*.json") if path.stem not in summary] if metrics_dir.is_dir() else []
    for path in stale:
        path.unlink()  # a model no longer evaluated must not linger as a metrics row
    results = {name: result["models"] for name, result in per_benchmark.items()}
    write_csv(
        plots_dir / "metrics.csv",
        [{"benchmark": name, "model": model, **row} for name, per in results.items() for model, row in per.items()],
    )
    write_csv(plots_dir / "summary.csv", [{"model": model, **row} for model, row in summary.items()])
    for metric, label in (
        ("accuracy", "accuracy"),
        ("accuracy_seen", "accuracy, seen classes"),
        ("accuracy_unseen", "accuracy, unseen classes"),
        ("miou", "relevance mIoU vs object"),
    ):
        values = {
            name: {model: row[metric] for model, row in per.items() if row.get(metric) is not None}
            for name, per in results.items()
        }
        values = {name: per for name, per in values.items() if per}
        if values:
            grouped_bar_chart(values, label, plots_dir / f"{metric}.png", ylabel=metric)
    clean = {
        model: row["in_distribution_accuracy"] for model, row in summary.items() if "in_distribution_accuracy" in row
    }
    write_corruption_plots(per_benchmark, results_dir, plots_dir, clean or None)
    write_spurious_plots(summary, plots_dir)
    for name, result in per_benchmark.items():
        _relevance_picture(results_dir / name, list(result["models"]), plots_dir / f"relevance_{name}.png")
        if result["benchmark"].get("kind") == "si_score":
            _factor_picture(result["models"], name, plots_dir / f"factors_{name}.png")


def _relevance_picture(benchmark_dir: Path, models: list[str], path: Path) -> None:
    """Each model's relevance maps side by side over the same images and their object masks."""
    loaded: dict[str, dict[str, np.ndarray]] = {}
    for model in models:
        file = benchmark_dir / model / OVERLAY_NAME
        if file.is_file():
            with np.load(file) as saved:
                loaded[model] = {key: saved[key] for key in saved.files}
    if not loaded:
        return
    first = next(iter(loaded.values()))
    images, masks, captions = first["images"], first["masks"], [str(c) for c in first["captions"]]
    panels: list[tuple[str, np.ndarray]] = [("object", masks)]
    panels += [(model, arrays["maps"]) for model, arrays in loaded.items() if arrays["maps"].shape[0] == len(images)]
    save_png(overlay_grid(images, panels, captions), path)


def _factor_picture(scores: dict[str, dict[str, Any]], name: str, path: Path) -> None:
    """SI-Score: accuracy per factor (the accuracy_<factor> scores), models side by side."""
    by_factor: dict[str, dict[str, float]] = {}
    for model, row in scores.items():
        for key, value in row.items():
            if key.startswith("accuracy_") and key.split("_", 1)[1] not in ("seen", "unseen") and value is not None:
                by_factor.setdefault(key.split("_", 1)[1], {})[model] = value
    if by_factor:
        grouped_bar_chart(by_factor, f"{name}: accuracy by factor", path, ylabel="accuracy")
