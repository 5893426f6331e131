"""Evaluating models on every split: accuracy and relevance-vs-object agreement, seen and unseen.

Relevance mIoU follows the ImageNet-segmentation protocol (Chefer et al.): the relevance map of
an image is binarised at its own mean, and intersections and unions of the two classes
(background, object) are *summed over the dataset* before dividing; mIoU is their mean.
``background_share`` is the share of positive relevance that falls outside the object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.array_store import StoreError
from pipeline.config import EvaluateConfig
from pipeline.datasets import ArraySplit, load_split
from pipeline.datasets import object_masks as whole_object_masks
from pipeline.manifest import split_rows
from pipeline.objective import background_share
from pipeline.relevance.attnlrp import UnsupportedModelError
from pipeline.relevance.maps import relevance_batch, relevance_maps
from pipeline.training import Normalizer, autocast

GROUPS = ("all", "seen", "unseen")


@dataclass
class SegmentationCounts:
    """Dataset-level sums for 2-class (background, object) IoU and pixel accuracy."""

    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2))
    correct: float = 0.0
    pixels: float = 0.0

    def add(self, predicted: np.ndarray, target: np.ndarray) -> None:
        for value in (0, 1):
            p, t = predicted == value, target == value
            self.intersection[value] += np.logical_and(p, t).sum()
            self.union[value] += np.logical_or(p, t).sum()
        self.correct += (predicted == target).sum()
        self.pixels += target.size

    def miou(self) -> float:
        if self.pixels == 0:
            return math.nan
        return float(np.mean(self.intersection / np.maximum(self.union, 1)))

    def pixel_accuracy(self) -> float:
        return self.correct / self.pixels if self.pixels else math.nan


def binarise_at_mean(relevance: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> bool maps: above each map's own mean."""
    return relevance > relevance.mean(axis=(1, 2), keepdims=True)


@dataclass
class SplitResult:
    predictions: np.ndarray
    labels: np.ndarray
    seen: np.ndarray  # bool per image
    segmentation: dict[str, SegmentationCounts] | None = None
    shares: np.ndarray | None = None  # background share per image

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group in GROUPS:
            chosen = np.ones_like(self.seen) if group == "all" else (self.seen if group == "seen" else ~self.seen)
            suffix = "" if group == "all" else f"_{group}"
            out[f"accuracy{suffix}"] = float(np.mean(self.predictions[chosen] == self.labels[chosen])) if chosen.any() else math.nan
            if self.segmentation is not None and self.shares is not None:
                out[f"miou{suffix}"] = self.segmentation[group].miou()
                measured = chosen[: len(self.shares)]  # relevance may cover only the first images
                out[f"background_share{suffix}"] = float(self.shares[measured].mean()) if measured.any() else math.nan
        return {key: round(value, 6) for key, value in out.items()}


def evaluate_split(
    model: torch.nn.Module,
    normalizer: Normalizer,
    data: ArraySplit,
    object_masks: np.ndarray | None,
    seen_classes: set[int],
    config: EvaluateConfig,
    device: torch.device,
) -> SplitResult:
    """Predictions for every image; with ``object_masks`` also relevance mIoU and background share."""
    model.eval()
    seen = np.isin(data.labels, sorted(seen_classes))
    predictions = []
    segmentation = {group: SegmentationCounts() for group in GROUPS} if object_masks is not None else None
    shares = []
    for start in range(0, len(data), config.batch_size):
        x = normalizer(torch.from_numpy(data.images[start : start + config.batch_size]).to(device))
        with torch.no_grad(), autocast(device):
            predicted = model(x).argmax(dim=1)
        predictions.append(predicted.cpu().numpy())
        if segmentation is None or object_masks is None:
            continue
        limit = len(data) if config.relevance_images is None else config.relevance_images
        if start >= limit:
            continue
        labels = torch.from_numpy(data.labels[start : start + config.batch_size]).to(device)
        targets = (predicted if config.relevance_target == "predicted" else labels)[: limit - start]
        maps = np.concatenate(
            [
                relevance_batch(model, x[offset : offset + config.relevance_batch_size], targets[offset : offset + config.relevance_batch_size], device)
                for offset in range(0, len(targets), config.relevance_batch_size)
            ]
        )
        masks = object_masks[start : start + len(maps)]
        binary = binarise_at_mean(maps)
        batch_seen = seen[start : start + len(maps)]
        for group, chosen in (("all", np.ones_like(batch_seen)), ("seen", batch_seen), ("unseen", ~batch_seen)):
            segmentation[group].add(binary[chosen], masks[chosen])
        shares.append(background_share(torch.from_numpy(maps), torch.from_numpy(masks)).numpy())
    return SplitResult(
        predictions=np.concatenate(predictions),
        labels=data.labels,
        seen=seen,
        segmentation=segmentation,
        shares=np.concatenate(shares) if shares else None,
    )


def evaluation_splits(config: EvaluateConfig, available: list[str], used: set[str]) -> list[str]:
    if config.splits is None:
        return [split for split in available if split not in used]
    unknown = [split for split in config.splits if split not in available]
    if unknown:
        raise ValueError(f"evaluate.splits: unknown split(s) {unknown}; the dataset has {available}")
    return list(config.splits)


def evaluate_models(
    models: dict[str, tuple[torch.nn.Module, dict[str, Any]]],
    manifest_path: Path,
    manifest: Any,
    splits: list[str],
    seen_classes: set[int],
    config: EvaluateConfig,
    device: torch.device,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """metrics[model][split] for every model and split."""
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    with tqdm(total=len(models) * len(splits), desc="evaluate", unit="split", disable=not progress) as bar:
        for split in splits:
            data = load_split(manifest_path, split, manifest)
            object_masks = None
            if config.relevance:
                try:
                    object_masks = whole_object_masks(manifest_path.parent, split_rows(manifest, split))
                except StoreError:
                    object_masks = None
            for name, (model, spec) in models.items():
                normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"]).to(device)
                try:
                    result = evaluate_split(model, normalizer, data, object_masks, seen_classes, config, device)
                except UnsupportedModelError:
                    result = evaluate_split(model, normalizer, data, None, seen_classes, config, device)
                results[name][split] = result.metrics()
                bar.update(1)
                bar.set_postfix(split=split, model=name)
    return results


def summarise(results: dict[str, dict[str, dict[str, float]]], in_distribution: str, reference: str = "base") -> dict[str, dict[str, float]]:
    """Per model: mean accuracy over the out-of-distribution splits (all, seen, unseen classes),
    mean relevance mIoU, and forgetting = drop of in-distribution accuracy on unseen classes
    relative to ``reference``."""
    summary: dict[str, dict[str, float]] = {}
    for name, per_split in results.items():
        ood = [split for split in per_split if split != in_distribution]
        row: dict[str, float] = {}
        for key in ("accuracy", "accuracy_seen", "accuracy_unseen", "miou", "miou_seen", "miou_unseen", "background_share"):
            values = [per_split[split][key] for split in ood if key in per_split[split]]
            if values:
                row[f"ood_{key}_mean"] = round(float(np.nanmean(values)), 6)
        if in_distribution in per_split and reference in results and in_distribution in results[reference]:
            row["forgetting_unseen"] = round(results[reference][in_distribution]["accuracy_unseen"] - per_split[in_distribution]["accuracy_unseen"], 6)
        summary[name] = row
    return summary


def overlay_sample(models: dict[str, tuple[torch.nn.Module, dict[str, Any]]], manifest_path: Path, manifest: Any, split: str, count: int, device: torch.device) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """The first ``count`` images of ``split``, their object masks and each model's relevance map
    for the true class (captions: class name)."""
    data = load_split(manifest_path, split, manifest)
    rows = split_rows(manifest, split).slice(0, count)
    images, labels = data.images[:count], data.labels[:count]
    masks = whole_object_masks(manifest_path.parent, rows)
    maps = {}
    for name, (model, spec) in models.items():
        normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"]).to(device)
        maps[name] = relevance_maps(model, normalizer, images, labels, device, count)
    return images, masks, maps, rows.column("class_name").to_pylist()
