"""Corruption benchmarks: any benchmark seen through ImageNet-C's corruptions, and the metrics per
corruption, severity and family.

Kind ``corrupted`` wraps another benchmark's images (a world split, an ImageNet val folder): item
``i`` is image ``i // k`` under the ``i % k``-th (corruption, severity) pair, corrupted after the
model's resize and crop (as ImageNet-C corrupts 224-pixel crops). Each corrupted image is drawn
from a generator seeded by (seed, image, corruption, severity) alone, so every model, batch size,
worker count and resumed part sees the same pixels. Kind ``imagenet_c`` reads the published files
(catalog.py) with the same ``corruption`` and ``severity`` metadata, so both share the metrics.

Per model, beyond the usual accuracy over all corrupted images (seen/unseen classes): accuracy per
corruption (mean over severities), per family, and over the corruptions the model was fine-tuned on
(``accuracy_corruptions_seen``) against the others (``accuracy_corruptions_unseen``). The report
relates errors to the base model's (report's ``relative_ce``); Hendrycks & Dietterich normalise by
AlexNet's instead, which a world has no counterpart of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pipeline.benchmarks.catalog import BenchmarkImages
from pipeline.benchmarks.protocols import STANDARD, correct
from pipeline.corruptions.families import family_of, seen_and_unseen
from pipeline.corruptions.ops import corrupt, corruption_generator

OTHER_FAMILY = "other"  # ImageNet-C folders that no configured family names


class CorruptedItems(Dataset[dict[str, Any]]):
    """Every image of ``inner`` under every (corruption, severity) pair, image-major: the pairs of
    one image are consecutive, so the last decoded image is reused (one decode per image)."""

    def __init__(self, inner: Dataset[dict[str, Any]], pairs: Sequence[tuple[str, int]], seed: int) -> None:
        self.inner, self.pairs, self.seed = inner, list(pairs), seed
        self.count = len(inner)  # type: ignore[arg-type]
        self._last: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self.count * len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, pair = divmod(index, len(self.pairs))
        if self._last is None or self._last[0] != image_index:
            self._last = (image_index, self.inner[image_index])
        item = self._last[1]
        name, severity = self.pairs[pair]
        generator = corruption_generator(self.seed, image_index, name, severity)
        image = corrupt(item["image"][None], name, severity, generator)[0]
        return {"image": image, "index": index, "readable": item["readable"]}


def expand_pairs(images: BenchmarkImages, pairs: Sequence[tuple[str, int]]) -> BenchmarkImages:
    """``images`` repeated per (corruption, severity), image-major, with those two as metadata."""
    k = len(pairs)
    files = [f"{file}#{name}-{severity}" for file in images.files for name, severity in pairs]
    metadata = {key: [value for value in values for _ in range(k)] for key, values in images.metadata.items()}
    metadata["corruption"] = [name for _ in images.files for name, _ in pairs]
    metadata["severity"] = [str(severity) for _ in images.files for _, severity in pairs]
    return replace(images, files=files, targets=[t for t in images.targets for _ in range(k)], metadata=metadata)


def corruption_breakdown(
    images: BenchmarkImages,
    predictions: Mapping[str, np.ndarray],
    seen_classes: set[int] | None,
    families: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """One row per (corruption, severity): its family, image count and standard-protocol accuracy
    (also for seen/unseen classes)."""
    right = correct(STANDARD, np.asarray(predictions[STANDARD]), images.targets)
    corruption = np.array(images.metadata["corruption"], dtype=object)
    severity = np.array([int(s) for s in images.metadata["severity"]])
    seen = None
    if seen_classes is not None:
        seen = np.array([any(t in seen_classes for t in targets) for targets in images.targets], dtype=bool)
    owner = family_of(families)
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(corruption.tolist()):
        for level in sorted(set(severity[corruption == name].tolist())):
            chosen = (corruption == name) & (severity == level)
            row: dict[str, Any] = {
                "corruption": name,
                "family": owner.get(name, OTHER_FAMILY),
                "severity": level,
                "images": int(chosen.sum()),
                "accuracy": round(float(right[chosen].mean()), 6),
            }
            if seen is not None:
                for group, mask in (("seen", chosen & seen), ("unseen", chosen & ~seen)):
                    if mask.any():
                        row[f"accuracy_{group}"] = round(float(right[mask].mean()), 6)
            rows.append(row)
    return rows


def corruption_metrics(rows: list[dict[str, Any]], trained: Sequence[str]) -> dict[str, float]:
    """Flat metrics from the breakdown: accuracy per corruption and per family (each the mean over
    its (corruption, severity) cells, so every corruption and severity weighs alike, as ImageNet-C's
    mean), and over the corruptions the model was fine-tuned on (seen) and the others (unseen)."""
    per_corruption: dict[str, list[float]] = {}
    for row in rows:
        per_corruption.setdefault(row["corruption"], []).append(row["accuracy"])
    means = {name: float(np.mean(values)) for name, values in per_corruption.items()}
    metrics = {f"accuracy_{name}": round(value, 6) for name, value in means.items()}
    for family in dict.fromkeys(row["family"] for row in rows):
        names = {row["corruption"] for row in rows if row["family"] == family}
        metrics[f"accuracy_family_{family}"] = round(float(np.mean([means[n] for n in names])), 6)
    seen, unseen = seen_and_unseen(means, trained)
    for group, names in (("seen", seen), ("unseen", unseen)):
        if names:
            metrics[f"accuracy_corruptions_{group}"] = round(float(np.mean([means[n] for n in names])), 6)
    return metrics
