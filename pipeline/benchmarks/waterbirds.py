"""Waterbirds as a benchmark (the layout and groups: pipeline/data/waterbirds.py).

Metrics, the field's standard:

* ``accuracy_<group>`` for landbird_land, landbird_water, waterbird_land, waterbird_water;
* ``worst_group_accuracy``: the lowest of the four;
* ``weighted_accuracy``: the group accuracies weighted by the groups' sizes in the *train* split
  (WILDS' ``adj_acc_avg``: the val and test splits are balanced over backgrounds, train is not,
  so the plain mean would describe neither distribution).

The model's classes must be named ``landbird`` and ``waterbird`` (any order, any case), as a model
fine-tuned with ``data.source: waterbirds`` names them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.benchmarks.catalog import BenchmarkError, BenchmarkImages, Row, from_rows
from pipeline.data.waterbirds import CLASSES, GROUPS, SPLITS, group_of, read_metadata, rows_of_split


def _model_classes(class_names: Sequence[str], root: Path) -> tuple[int, int]:
    position = {name.casefold(): index for index, name in enumerate(class_names)}
    if any(name not in position for name in CLASSES):
        raise BenchmarkError(
            f"{root}: Waterbirds needs a model whose classes include 'landbird' and 'waterbird'; "
            f"the model has {len(class_names)} classes ({', '.join(list(class_names)[:3])}, ...)"
        )
    return position["landbird"], position["waterbird"]


def read_waterbirds(root: Path, class_names: Sequence[str], split: str | None = None) -> BenchmarkImages:
    """The images of one split (``test`` by default) with their group; every listed file must exist."""
    split = split or "test"
    if split not in SPLITS:
        raise BenchmarkError(f"{root}: Waterbirds split {split!r} is not one of {list(SPLITS)}")
    targets = _model_classes(class_names, root)
    rows = read_metadata(root)
    listed: list[Row] = [
        (row["img_filename"], (targets[int(row["y"])],), {"group": group_of(row)})
        for row in rows_of_split(root, rows, split)
    ]
    train = [group_of(row) for row in rows if row["split"] == SPLITS["train"]]
    weights = {group: train.count(group) / len(train) for group in GROUPS} if train else {}
    return replace(from_rows("waterbirds", root, listed, None), group_weights=weights)


def group_metrics(
    groups: Sequence[str], right: np.ndarray, weights: Mapping[str, float], prefix: str = ""
) -> dict[str, float]:
    """Accuracy per group present, the worst of them, and their mean weighted by ``weights`` (the
    train split's group shares; left out when a weighted group has no image)."""
    group_of_image = np.asarray(groups, dtype=object)
    accuracy = {
        group: float(right[group_of_image == group].mean()) for group in GROUPS if (group_of_image == group).any()
    }
    metrics = {f"{prefix}accuracy_{group}": round(value, 6) for group, value in accuracy.items()}
    if accuracy:
        metrics[f"{prefix}worst_group_accuracy"] = round(min(accuracy.values()), 6)
    weighted = {group: share for group, share in weights.items() if share > 0}
    if weighted and all(group in accuracy for group in weighted):
        total = sum(weighted.values())
        metrics[f"{prefix}weighted_accuracy"] = round(
            sum(share * accuracy[group] for group, share in weighted.items()) / total, 6
        )
    return metrics
