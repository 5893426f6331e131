"""The probe images `cft analyze` shows every model: the first N images of a prepared split at the
models' input size, each also corrupted once (image i by the (i mod n)-th corruption, seeded by
image and corruption as the corruption benchmarks are), with object masks where the dataset has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.analysis.measure import ProbeSet
from pipeline.corruptions.ops import corrupt, corruption_generator
from pipeline.data.array_store import StoreError
from pipeline.data.datasets import load_split, object_and_cue_masks
from pipeline.data.manifest import read_manifest, split_rows
from pipeline.data.preprocess import InputTransform


def probe_set(
    manifest_path: Path,
    split: str,
    count: int,
    transform: InputTransform,
    corruptions: list[str],
    severity: int,
    seed: int,
) -> ProbeSet:
    manifest = read_manifest(manifest_path)
    data = load_split(manifest_path, split, manifest, transform)
    if len(data) < 2:
        raise ValueError(f"{manifest_path}: split {split!r} has {len(data)} images; the analysis needs at least 2")
    count = min(count, len(data))
    clean = data.images[:count]
    corrupted = np.empty_like(clean)
    for index in range(count):
        name = corruptions[index % len(corruptions)]
        generator = corruption_generator(seed, index, name, severity)
        corrupted[index] = corrupt(torch.from_numpy(clean[index : index + 1]), name, severity, generator)[0].numpy()
    masks = None
    try:
        masks, _ = object_and_cue_masks(manifest_path.parent, split_rows(manifest, split))
        masks = masks[:count] if masks.shape[1:] == clean.shape[1:3] else None
    except StoreError:
        masks = None  # no part annotations (real images): no object masks
    return ProbeSet(clean, corrupted, data.labels[:count], masks)
