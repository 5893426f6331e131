"""Turning a model's logits into each protocol's predictions on a benchmark, and scoring them.

Two protocols:

* ``standard``: the benchmark's published protocol. The argmax is taken over the benchmark's class
  subset (``BenchmarkImages.classes``; all classes when it is None) and a prediction is right when
  it is any of the image's targets (ObjectNet maps one class to several ImageNet classes).
* ``reference``: the plain argmax over all of the model's classes, right only when it equals the
  image's first target (the label a 1000-way reference script compares with). It is reported only
  where it differs from ``standard`` (ImageNet-A/-R and ObjectNet), so that a score can be set
  beside papers that did not restrict the classes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.benchmarks.backgrounds import superclass_targets, variant_metrics
from pipeline.benchmarks.catalog import (
    OBJECTNET_BORDER,
    SI_SCORE_FACTORS,
    BenchmarkImages,
    imagenet_subset,
    objectnet_class_targets,
)
from pipeline.benchmarks.hard_imagenet import ablation_metrics
from pipeline.benchmarks.waterbirds import group_metrics

STANDARD = "standard"
REFERENCE = "reference"
_METRIC_PREFIX = {STANDARD: "", REFERENCE: "reference_"}


@dataclass(frozen=True)
class Protocol:
    name: str  # "standard" or "reference"
    description: str  # one line, shown in reports


def _has_reference(benchmark: BenchmarkImages) -> bool:
    # Only the class-subset benchmarks (ImageNet-A/-R, ObjectNet) score differently under a plain argmax;
    # decided by the subset, not the images, so a subset of the images keeps the same protocols.
    return benchmark.classes is not None


_VARIANTS = "accuracy per variant, BG-gap = mixed_same - mixed_rand, only_bg accuracy"


def _standard_description(kind: str, subset_size: int | None, border: int = 0, mapped: bool = False) -> str:
    if kind == "objectnet" and subset_size is not None:
        return (
            f"argmax over the {subset_size} ImageNet classes mapped to ObjectNet, right if it is any class mapped "
            f"to the image's ObjectNet class ({border}-px border cropped)"
        )
    if subset_size is not None:
        return f"argmax over the {subset_size} {_TITLES.get(kind, kind)} classes"
    if kind == "imagenet_v2":
        return "argmax over the 1000 ImageNet classes"
    if kind == "si_score":
        return "argmax over the 1000 ImageNet classes, accuracy per factor and factor value"
    if kind == "imagenet_c":
        return "argmax over all the model's classes, accuracy per corruption, severity and family"
    if kind == "imagenet9" and mapped:
        return (
            "1000-way argmax mapped to the 9 super-classes by in_to_in9.json (an ImageNet class mapped to none "
            f"is wrong); {_VARIANTS}"
        )
    if kind == "imagenet9":
        return f"argmax over the model's 9 super-classes; {_VARIANTS}"
    if kind == "waterbirds":
        return (
            "argmax over the model's classes (landbird, waterbird); accuracy per group (bird x background), "
            "worst-group accuracy, group accuracies weighted by the train split's group sizes"
        )
    if kind == "hard_imagenet":
        return (
            "argmax over all the model's classes; accuracy as is and with the object ablated (gray, gray_bbox, blur), "
            "ablation_drop; relevance vs the object mask on the images as they are"
        )
    return "argmax over all the model's classes"


def _reference_description(kind: str) -> str:
    if kind == "objectnet":
        return "argmax over all 1000 ImageNet classes, right only if it is the first class mapped to the image's ObjectNet class"
    return "argmax over all 1000 ImageNet classes (no class subset)"


_TITLES = {"imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R"}


def protocols_for(benchmark: BenchmarkImages) -> list[Protocol]:
    subset_size = None if benchmark.classes is None else len(benchmark.classes)
    # ImageNet-9 through an ImageNet-1k model: each image's targets are its super-class's ImageNet classes
    mapped = benchmark.kind == "imagenet9" and any(len(targets) > 1 for targets in benchmark.targets)
    description = _standard_description(benchmark.kind, subset_size, benchmark.border, mapped)
    if benchmark.kind == "split" and "variant" in benchmark.metadata:
        description += f"; {_VARIANTS}"
    standard = Protocol(STANDARD, description)
    if not _has_reference(benchmark):
        return [standard]
    return [standard, Protocol(REFERENCE, _reference_description(benchmark.kind))]


def predict(logits: torch.Tensor, benchmark: BenchmarkImages) -> dict[str, torch.Tensor]:
    """Protocol name -> predicted model class index per image (int64, on the logits' device)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    full_argmax = logits.argmax(dim=1)
    predictions: dict[str, torch.Tensor] = {}
    for protocol in protocols_for(benchmark):
        if protocol.name == REFERENCE or benchmark.classes is None:
            predictions[protocol.name] = full_argmax
            continue
        subset = torch.as_tensor(benchmark.classes, dtype=torch.long, device=logits.device)
        if int(subset.max()) >= logits.shape[1]:
            raise ValueError(
                f"{benchmark.kind}: class index {int(subset.max())} outside logits with {logits.shape[1]} classes"
            )
        predictions[protocol.name] = subset[logits.index_select(1, subset).argmax(dim=1)]
    return predictions


def _padded_targets(targets: list[tuple[int, ...]]) -> np.ndarray:
    width = max((len(target) for target in targets), default=1)
    padded = np.full((len(targets), width), -1, dtype=np.int64)  # -1 is never a predicted class
    for row, target in enumerate(targets):
        padded[row, : len(target)] = target
    return padded


def correct(protocol: str, predicted: np.ndarray, targets: list[tuple[int, ...]]) -> np.ndarray:
    """Bool per image: standard, the prediction is one of the targets; reference, it is the first target."""
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} predictions for {len(targets)} images")
    if protocol == STANDARD:
        return (_padded_targets(targets) == predicted[:, None]).any(axis=1)
    if protocol == REFERENCE:
        return predicted == np.array([target[0] for target in targets], dtype=np.int64)
    raise ValueError(f"unknown protocol {protocol!r} (known: {STANDARD}, {REFERENCE})")


def _seen_mask(targets: list[tuple[int, ...]], seen_classes: set[int]) -> np.ndarray:
    return np.array([any(index in seen_classes for index in target) for target in targets], dtype=bool)


def _protocol_correct(benchmark: BenchmarkImages, predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    right: dict[str, np.ndarray] = {}
    for protocol in protocols_for(benchmark):
        if protocol.name not in predictions:
            raise ValueError(f"{benchmark.kind}: no predictions for the {protocol.name} protocol")
        right[protocol.name] = correct(protocol.name, np.asarray(predictions[protocol.name]), benchmark.targets)
    return right


def benchmark_metrics(
    benchmark: BenchmarkImages, predictions: Mapping[str, np.ndarray], seen_classes: set[int] | None
) -> dict[str, float]:
    """Accuracy per protocol, overall, for seen/unseen classes, (SI-Score) per factor and (ImageNet-9
    and the world's backgrounds split) per variant with the BG-gap; empty groups left out."""
    groups: dict[str, np.ndarray] = {"": np.ones(len(benchmark.files), dtype=bool)}
    if seen_classes is not None:
        seen = _seen_mask(benchmark.targets, seen_classes)
        groups |= {"_seen": seen, "_unseen": ~seen}
    per_factor = benchmark.kind == "si_score" and "factor" in benchmark.metadata
    if per_factor:
        factors = np.array(benchmark.metadata["factor"], dtype=object)
        groups |= {f"_{factor}": factors == factor for factor in SI_SCORE_FACTORS}
    metrics: dict[str, float] = {}
    for name, right in _protocol_correct(benchmark, predictions).items():
        prefix = _METRIC_PREFIX[name]
        metrics |= {
            f"{prefix}accuracy{suffix}": round(float(right[mask].mean()), 6)
            for suffix, mask in groups.items()
            if mask.any()
        }
        if per_factor:
            # robustness_metrics' synthetic metric averages the accuracies of the factor's values
            rows = _factor_rows(benchmark, right)
            for factor in SI_SCORE_FACTORS:
                per_value = [row["accuracy"] for row in rows if row["factor"] == factor]
                if per_value:
                    metrics[f"{prefix}accuracy_{factor}_value_mean"] = round(float(np.mean(per_value)), 6)
        if "variant" in benchmark.metadata:
            metrics |= variant_metrics(benchmark.metadata["variant"], right, groups, prefix)
        if "group" in benchmark.metadata:
            metrics |= group_metrics(benchmark.metadata["group"], right, benchmark.group_weights, prefix)
        if "ablation" in benchmark.metadata:
            metrics |= ablation_metrics(benchmark.metadata["ablation"], right, prefix)
    metrics["images"] = len(benchmark.files)
    if seen_classes is not None:
        metrics |= {
            f"images{suffix}": int(groups[suffix].sum()) for suffix in ("_seen", "_unseen") if groups[suffix].any()
        }
    return metrics


def _value_sort_key(value: str) -> tuple[bool, tuple[float, ...], str]:
    # numerically, so that rotation 21 comes before 181 (text order would put "181" first)
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", value)
    return (not numbers, tuple(float(number) for number in numbers), value)


def _factor_rows(benchmark: BenchmarkImages, right: np.ndarray) -> list[dict[str, str | float | int]]:
    counts: dict[tuple[str, str], list[int]] = {}
    for factor, value, is_right in zip(benchmark.metadata["factor"], benchmark.metadata["factor_value"], right):
        tally = counts.setdefault((factor, value), [0, 0])
        tally[0] += 1
        tally[1] += int(is_right)
    order = {factor: position for position, factor in enumerate(SI_SCORE_FACTORS)}
    keys = sorted(counts, key=lambda key: (order.get(key[0], len(order)), key[0], _value_sort_key(key[1])))
    return [
        {
            "factor": factor,
            "factor_value": value,
            "images": counts[(factor, value)][0],
            "accuracy": round(counts[(factor, value)][1] / counts[(factor, value)][0], 6),
        }
        for factor, value in keys
    ]


def factor_breakdown(
    benchmark: BenchmarkImages, predictions: Mapping[str, np.ndarray]
) -> list[dict[str, str | float | int]]:
    """SI-Score: one row per (factor, factor value) with the standard protocol's accuracy; [] for other kinds."""
    if benchmark.kind != "si_score" or "factor" not in benchmark.metadata:
        return []
    right = correct(STANDARD, np.asarray(predictions[STANDARD]), benchmark.targets)
    return _factor_rows(benchmark, right)


def _protocol_table() -> list[dict[str, str]]:
    """One row per kind for the README; the protocol texts are the ones ``protocols_for`` reports."""
    objectnet = objectnet_class_targets()
    objectnet_imagenet = len({index for targets in objectnet.values() for index in targets})
    subset_sizes = {kind: len(imagenet_subset(kind)[1]) for kind in _TITLES}
    rows = [
        {
            "kind": "imagefolder",
            "class_subset": "all the model's classes",
            "mapping": "folder name = class id (e.g. a WordNet id)",
        },
        {
            "kind": "imagenet_v2",
            "class_subset": "all 1000 ImageNet classes",
            "mapping": "folder name = ImageNet class index 0-999",
        },
        *(
            {
                "kind": kind,
                "class_subset": f"{size} {_TITLES[kind]} classes (timm {kind}_indices.txt)",
                "mapping": "WordNet-id folder -> ImageNet class index",
            }
            for kind, size in subset_sizes.items()
        ),
        {
            "kind": "objectnet",
            "class_subset": f"{len(objectnet)} ObjectNet classes = {objectnet_imagenet} ImageNet classes",
            "mapping": "images/<folder> -> ObjectNet class -> ImageNet classes (mappings/*.json); images of other classes skipped",
        },
        {
            "kind": "si_score",
            "class_subset": "all 1000 ImageNet classes",
            "mapping": "<factor>/<label>/<image_id>.jpg -> ImageNet index (foreground_classes.csv); factor value from metadata.csv",
        },
        {
            "kind": "imagenet_c",
            "class_subset": "all the model's classes",
            "mapping": "<corruption>/<severity>/<class folder = class id>/<image>; images used at their size (no resize-and-crop)",
        },
        {
            "kind": "imagenet9",
            "class_subset": f"9 super-classes = {sum(map(len, superclass_targets()))} ImageNet classes (in_to_in9.json), or a 9-class model's own",
            "mapping": "<variant>/val/<class folder>/<image>; sorted folder position = super-class; images used at their size",
        },
        {
            "kind": "waterbirds",
            "class_subset": "the model's landbird and waterbird classes",
            "mapping": "metadata.csv: img_filename, y (0 landbird, 1 waterbird), place (0 land, 1 water), split (0/1/2); group = 2y + place",
        },
        {
            "kind": "hard_imagenet",
            "class_subset": "15 ImageNet classes (meta/hard_imagenet_idx.pkl)",
            "mapping": "<split>/<wnid>_<file> mask -> <ImageNet>/<split>/<wnid>/<file> image; wnid = the model's class",
        },
    ]
    subsets = {**subset_sizes, "objectnet": objectnet_imagenet}
    for row in rows:
        kind = row["kind"]
        row["standard_protocol"] = _standard_description(
            kind, subsets.get(kind), OBJECTNET_BORDER if kind == "objectnet" else 0, mapped=kind == "imagenet9"
        )
        row["reference_protocol"] = _reference_description(kind) if kind in subsets else "-"
    return rows


PROTOCOL_TABLE: list[dict[str, str]] = _protocol_table()
