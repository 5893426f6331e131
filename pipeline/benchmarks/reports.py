"""What `cft evaluate <benchmark>` and `cft report` write: metrics JSON, predictions, CSVs and pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.atomic import write_json, write_with
from pipeline.benchmarks.protocols import factor_breakdown, protocols_for
from pipeline.benchmarks.runner import BenchmarkRun, ModelUnderTest
from pipeline.benchmarks.sources import EvalSource
from pipeline.relevance.maps import relevance_batch
from pipeline.reporting import write_csv
from pipeline.visualize import grouped_bar_chart, overlay_grid, save_png

PREDICTIONS_NAME = "predictions.parquet"
SUMMARY_KEYS = ("accuracy", "accuracy_seen", "accuracy_unseen", "miou", "miou_seen", "miou_unseen", "background_share")


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def benchmark_info(source: EvalSource, settings: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"name": source.name, "kind": source.kind, "images": len(source), **settings}
    if source.images is not None:
        info["protocols"] = {p.name: p.description for p in protocols_for(source.images)}
        if source.images.skipped:
            info["skipped"] = source.images.skipped
    return info


def write_benchmark_results(source: EvalSource, run: BenchmarkRun, metrics: dict[str, dict[str, float]], info: dict[str, Any], metrics_path: Path, out_dir: Path, plots_dir: Path) -> None:
    """Metrics JSON (for `dvc metrics diff`), one prediction row per image, and the SI-Score factor plot."""
    write_json(metrics_path, {"benchmark": info, "models": {model: {k: _finite(v) for k, v in row.items()} for model, row in metrics.items()}})
    columns: dict[str, Any] = {"readable": pa.array(run.readable)}
    if source.images is not None:
        columns["file"] = pa.array(source.images.files)
        columns["targets"] = pa.array([list(t) for t in source.images.targets], type=pa.list_(pa.int32()))
        columns.update({key: pa.array(values) for key, values in source.images.metadata.items()})
    for model, per_protocol in run.predictions.items():
        for protocol, values in per_protocol.items():
            columns[f"{model}.{protocol}"] = pa.array(values.astype(np.int32))
    table = pa.table(columns)
    write_with(out_dir / PREDICTIONS_NAME, lambda tmp: pq.write_table(table, tmp))
    if source.images is not None and source.images.kind == "si_score":
        keep = np.flatnonzero(run.readable)
        images = source.images.take(keep.tolist())
        rows = [{"model": model, **row} for model, per in run.predictions.items() for row in factor_breakdown(images, {p: v[keep] for p, v in per.items()})]
        write_csv(plots_dir / "factors.csv", rows)
        by_factor: dict[str, dict[str, float]] = {}
        for model, per in metrics.items():
            for key, value in per.items():
                if key.startswith("accuracy_") and key.split("_", 1)[1] not in ("seen", "unseen"):
                    by_factor.setdefault(key.split("_", 1)[1], {})[model] = value
        if by_factor:
            grouped_bar_chart(by_factor, f"{source.name}: accuracy by factor", plots_dir / "factors.png", ylabel="accuracy")


def write_overlay(source: EvalSource, models: list[ModelUnderTest], count: int, device: torch.device, path: Path) -> None:
    """The first images with their object masks and each model's relevance map (true class when labelled)."""
    items = [source.dataset[i] for i in range(min(count, len(source)))]
    if not items or not source.has_masks:
        return
    images = np.stack([item["image"].numpy() for item in items])
    masks = np.stack([item["mask"].numpy() for item in items])
    maps: dict[str, np.ndarray] = {}
    batch = torch.from_numpy(images).to(device)
    for entry in models:
        if not entry.relevance:
            continue
        x = entry.normalizer(batch)
        if source.images is not None:
            targets = torch.tensor([source.images.targets[i][0] for i in range(len(items))], device=device)
        else:
            with torch.no_grad():
                targets = entry.model(x).argmax(dim=1)
        maps[entry.name] = relevance_batch(entry.model, x, targets, device)
    if maps:
        save_png(overlay_grid(images, [("object", masks), *maps.items()], source.captions[: len(items)]), path)


def read_benchmark_metrics(metrics_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> the metrics JSON of `cft evaluate <name>`; a missing one is an error naming it."""
    found = {}
    for name in names:
        path = metrics_dir / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results for benchmark '{name}' (run `cft evaluate {name}` or `dvc repro`)")
        found[name] = json.loads(path.read_text())
    return found


def summarise(per_benchmark: dict[str, dict[str, Any]], in_distribution: str | None, reference: str = "base") -> dict[str, dict[str, float]]:
    """Per model: mean of each metric over the out-of-distribution benchmarks, and forgetting = the
    drop of in-distribution accuracy on unseen classes relative to ``reference``."""
    models = list(dict.fromkeys(model for result in per_benchmark.values() for model in result["models"]))
    summary: dict[str, dict[str, float]] = {}
    for model in models:
        row: dict[str, float] = {}
        for key in SUMMARY_KEYS:
            values = [result["models"][model].get(key) for name, result in per_benchmark.items() if name != in_distribution and model in result["models"]]
            values = [v for v in values if v is not None]
            if values:
                row[f"ood_{key}_mean"] = round(float(np.mean(values)), 6)
        if in_distribution in per_benchmark:
            models_there = per_benchmark[in_distribution]["models"]
            mine, theirs = models_there.get(model, {}).get("accuracy_unseen"), models_there.get(reference, {}).get("accuracy_unseen")
            if mine is not None and theirs is not None:
                row["forgetting_unseen"] = round(theirs - mine, 6)
        summary[model] = row
    return summary


def write_summary(per_benchmark: dict[str, dict[str, Any]], summary: dict[str, dict[str, float]], metrics_path: Path, plots_dir: Path) -> None:
    """The summary JSON, a long-format CSV and one chart per metric, benchmarks side by side."""
    results = {name: result["models"] for name, result in per_benchmark.items()}
    write_json(metrics_path, {"summary": summary, "benchmarks": results})
    write_csv(plots_dir / "metrics.csv", [{"benchmark": name, "model": model, **row} for name, per in results.items() for model, row in per.items()])
    for metric, label in (("accuracy", "accuracy"), ("accuracy_seen", "accuracy, seen classes"), ("accuracy_unseen", "accuracy, unseen classes"), ("miou", "relevance mIoU vs object")):
        values = {name: {model: row[metric] for model, row in per.items() if row.get(metric) is not None} for name, per in results.items()}
        values = {name: per for name, per in values.items() if per}
        if values:
            grouped_bar_chart(values, label, plots_dir / f"{metric}.png", ylabel=metric)
