"""What `cft evaluate <benchmark> <model>` writes: one folder per model under the benchmark's results.

``results/evaluate/<benchmark>/<model>/`` holds ``scores.json`` (every metric of that model on that
benchmark, and how the benchmark was read), ``predictions.parquet`` (one row per image),
``overlay.npz`` (the first images, their object masks and the model's relevance maps, for the
report's pictures), for SI-Score ``factors.csv`` and for corruption benchmarks ``corruptions.csv``
(accuracy per corruption and severity). `cft report` reads them (summary.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.benchmarks.corrupted import corruption_breakdown
from pipeline.benchmarks.files import CORRUPTIONS_NAME, FACTORS_NAME, PREDICTIONS_NAME, SCORES_NAME
from pipeline.benchmarks.protocols import factor_breakdown, protocols_for
from pipeline.benchmarks.runner import BenchmarkRun, ModelUnderTest
from pipeline.benchmarks.sources import EvalSource
from pipeline.relevance.maps import relevance_batch
from pipeline.reports.base import write_csv
from pipeline.utils.atomic import write_json, write_with


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def benchmark_info(source: EvalSource, settings: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"name": source.name, "kind": source.kind, "images": len(source), **settings}
    if source.images is not None:
        info["protocols"] = {p.name: p.description for p in protocols_for(source.images)}
        if source.images.skipped:
            info["skipped"] = source.images.skipped
    return info


def write_model_results(
    source: EvalSource,
    run: BenchmarkRun,
    model: str,
    scores: dict[str, float],
    info: dict[str, Any],
    out_dir: Path,
    seen_classes: set[int] | None = None,
    trained_corruptions: list[str] | None = None,
) -> None:
    """One model's scores, predictions, and the SI-Score factor or corruption tables on one benchmark."""
    saved: dict[str, Any] = {"benchmark": info, "model": model, "scores": {k: _finite(v) for k, v in scores.items()}}
    if source.families is not None:
        saved["trained_corruptions"] = list(trained_corruptions or [])
    write_json(out_dir / SCORES_NAME, saved)
    columns: dict[str, Any] = {"readable": pa.array(run.readable)}
    if source.images is not None:
        columns["file"] = pa.array(source.images.files)
        columns["targets"] = pa.array([list(t) for t in source.images.targets], type=pa.list_(pa.int32()))
        columns.update({key: pa.array(values) for key, values in source.images.metadata.items()})
    for protocol, values in run.predictions[model].items():
        columns[protocol] = pa.array(values.astype(np.int32))
    table = pa.table(columns)
    write_with(out_dir / PREDICTIONS_NAME, lambda tmp: pq.write_table(table, tmp))
    if source.images is not None and source.images.kind == "si_score":
        keep = np.flatnonzero(run.readable)
        images = source.images.take(keep.tolist())
        write_csv(
            out_dir / FACTORS_NAME, factor_breakdown(images, {p: v[keep] for p, v in run.predictions[model].items()})
        )
    if source.images is not None and source.families is not None:
        keep = np.flatnonzero(run.readable)
        predictions = {p: v[keep] for p, v in run.predictions[model].items()}
        rows = corruption_breakdown(source.images.take(keep.tolist()), predictions, seen_classes, source.families)
        trained = set(trained_corruptions or [])
        write_csv(out_dir / CORRUPTIONS_NAME, [{**row, "trained_on": row["corruption"] in trained} for row in rows])


def write_overlay_arrays(
    source: EvalSource, entry: ModelUnderTest, count: int, device: torch.device, path: Path
) -> None:
    """The first images, their object masks and the model's relevance maps (true class where labelled)."""
    items = [source.dataset[i] for i in range(min(count, len(source)))]
    if not items or not source.has_masks or not entry.relevance:
        return
    images = np.stack([item["image"].numpy() for item in items])
    masks = np.stack([item["mask"].numpy() for item in items])
    x = entry.normalizer(torch.from_numpy(images).to(device))
    if source.images is not None:
        targets = torch.tensor([source.images.targets[i][0] for i in range(len(items))], device=device)
    else:
        with torch.no_grad():
            targets = entry.model(x).argmax(dim=1)
    maps = relevance_batch(entry.model, x, targets, device).astype(np.float32)
    captions = np.array(source.captions[: len(items)])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, masks=masks, maps=maps, captions=captions)

    write_with(path, write)
