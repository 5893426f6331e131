"""The report's corruption summary: per model, accuracy per family, on the corruptions it was
fine-tuned on against the others, and corruption error relative to the base model.

Relative corruption error follows Hendrycks & Dietterich's CE with the reference model swapped:
for corruption c, CE_c = Σ_s E(model, c, s) / Σ_s E(reference, c, s) (E = top-1 error, s the
severities), and ``relative_ce`` is the mean of CE_c over the benchmark's corruptions. ImageNet-C
normalises by AlexNet's errors; here the reference is the pipeline's base model, so 1 means "as
robust as before fine-tuning" and < 1 more robust. Every severity has the same images, so Σ_s E
is the number of severities times one minus the per-corruption accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.benchmarks.files import CORRUPTIONS_NAME
from pipeline.benchmarks.kinds import CORRUPTION_KINDS
from pipeline.reports.base import write_csv
from pipeline.utils.atomic import write_with

FAMILY_PREFIX = "accuracy_family_"


def corruption_benchmarks(per_benchmark: dict[str, dict[str, Any]]) -> list[str]:
    return [
        name for name, result in per_benchmark.items() if result.get("benchmark", {}).get("kind") in CORRUPTION_KINDS
    ]


def relative_ce(mine: dict[str, float], reference: dict[str, float], corruptions: list[str]) -> float | None:
    """Mean over ``corruptions`` of (1 − accuracy) / (1 − the reference's accuracy); None when the
    reference makes no error on one of them (the ratio is undefined)."""
    ratios = []
    for name in corruptions:
        key = f"accuracy_{name}"
        if key not in mine or key not in reference or reference[key] >= 1.0:
            return None
        ratios.append((1.0 - mine[key]) / (1.0 - reference[key]))
    return float(np.mean(ratios)) if ratios else None


def corruption_summary(per_benchmark: dict[str, dict[str, Any]], reference: str) -> dict[str, dict[str, float]]:
    """model -> corruption metrics averaged over the corruption benchmarks: ``corruption_accuracy``,
    ``corruption_<family>_accuracy``, ``corruption_seen_accuracy`` / ``corruption_unseen_accuracy``
    (the corruptions the model was fine-tuned on, and the others) and ``corruption_relative_ce``."""
    collected: dict[str, dict[str, list[float]]] = {}
    for name in corruption_benchmarks(per_benchmark):
        models = per_benchmark[name]["models"]
        families = per_benchmark[name]["benchmark"].get("families") or {}
        corruptions = [c for names in families.values() for c in names]
        observed = {key[len("accuracy_") :] for row in models.values() for key in row} & set(corruptions)
        corruptions = [c for c in corruptions if c in observed] or sorted(observed)
        for model, row in models.items():
            values = collected.setdefault(model, {})
            if row.get("accuracy") is not None:
                values.setdefault("corruption_accuracy", []).append(row["accuracy"])
            for key, value in row.items():
                if key.startswith(FAMILY_PREFIX) and value is not None:
                    values.setdefault(f"corruption_{key[len(FAMILY_PREFIX) :]}_accuracy", []).append(value)
            for group in ("seen", "unseen"):
                if row.get(f"accuracy_corruptions_{group}") is not None:
                    values.setdefault(f"corruption_{group}_accuracy", []).append(row[f"accuracy_corruptions_{group}"])
            if reference in models:
                ce = relative_ce(row, models[reference], corruptions)
                if ce is not None:
                    values.setdefault("corruption_relative_ce", []).append(ce)
    return {
        model: {key: round(float(np.mean(v)), 6) for key, v in values.items()} for model, values in collected.items()
    }


def write_corruption_plots(
    per_benchmark: dict[str, dict[str, Any]],
    results_dir: Path,
    plots_dir: Path,
    clean: dict[str, float] | None,
) -> None:
    """Per corruption benchmark, ``corruptions_<benchmark>.png``: a table of colours, a row per model,
    its accuracy clean (the in-distribution benchmark), per family, on the corruptions it trained
    on and the others, and per corruption (grouped by family); and for `dvc plots`,
    ``corruptions.csv`` (every model × corruption × severity) and ``corruption_severity.csv``
    (accuracy by severity, a column per model)."""
    cells: list[dict[str, Any]] = []
    by_severity: dict[int, dict[str, list[float]]] = {}
    for name in corruption_benchmarks(per_benchmark):
        models = per_benchmark[name]["models"]
        families = per_benchmark[name]["benchmark"].get("families") or {}
        columns: list[tuple[str, str]] = []  # (heading, score key), in groups
        groups: list[int] = []  # index of each group's first column
        summary = [("clean", "")] if clean else []
        summary += [(family, f"{FAMILY_PREFIX}{family}") for family in families]
        summary += [("seen corr.", "accuracy_corruptions_seen"), ("unseen corr.", "accuracy_corruptions_unseen")]
        for block in [summary, *([(c, f"accuracy_{c}") for c in names] for names in families.values())]:
            present = [(heading, key) for heading, key in block if key == "" or any(key in m for m in models.values())]
            if present:
                groups.append(len(columns))
                columns += present
        values = np.full((len(models), len(columns)), np.nan)
        for row, (model, scores) in enumerate(models.items()):
            for column, (_, key) in enumerate(columns):
                value = (clean or {}).get(model) if key == "" else scores.get(key)
                if value is not None:
                    values[row, column] = value
        accuracy_table(
            values,
            list(models),
            [heading for heading, _ in columns],
            groups,
            name,
            plots_dir / f"corruptions_{name}.png",
        )
        for model in models:
            for cell in _read_cells(results_dir / name / model / CORRUPTIONS_NAME):
                cells.append({"benchmark": name, "model": model, **cell})
                by_severity.setdefault(int(cell["severity"]), {}).setdefault(model, []).append(float(cell["accuracy"]))
    if cells:
        write_csv(plots_dir / "corruptions.csv", cells)
        write_csv(
            plots_dir / "corruption_severity.csv",
            [
                {"severity": level, **{model: round(float(np.mean(v)), 6) for model, v in per.items()}}
                for level, per in sorted(by_severity.items())
            ],
        )


def accuracy_table(
    values: np.ndarray, rows: list[str], columns: list[str], groups: list[int], title: str, path: Path
) -> None:
    """Accuracies as coloured cells with their values, a row per model; a gap before each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 0.62 * len(columns), 0.9 + 0.34 * len(rows)), dpi=120)
    ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
    for start in groups[1:]:
        ax.axvline(start - 0.5, color="white", linewidth=4)
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(f"{title}: accuracy (mean over severities)", fontsize=9)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _read_cells(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
