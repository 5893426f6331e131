"""What an evaluation iterates: a benchmark's images at the model's input size, with masks when it has them.

Five kinds of source share one item format, so one runner serves them all:

* ``split``: a split of the prepared dataset (the world's out-of-distribution splits), held in
  memory, with the object masks when the dataset is part-annotated;
* image-file benchmarks (ImageNet val/V2/A/R/Sketch, ObjectNet, SI-Score, ImageNet-9, Waterbirds):
  decoded in DataLoader worker processes and passed through the model's own transform (ObjectNet's
  frame trimmed first);
* ``hard_imagenet``: ImageNet images with their object masks, as they are and with the object
  ablated (hard_imagenet.py);
* ``corrupted``: another source's images, each under every (corruption, severity) pair (corrupted.py);
* ``imagenet_segmentation``: the images and object masks of ``gtsegs_ijcv.mat``, resized square as
  in the segmentation protocol.

An item is ``{"image": uint8 (S, S, 3), "mask": bool (S, S) (only with masks), "cue": bool (S, S)
(only where the images carry a cue, the world's sticker), "index": int, "readable": bool}``. A file that cannot be decoded gives a black image with ``readable`` False: the
run goes on, and the image is left out of the metrics and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.benchmarks.catalog import BenchmarkImages, read_benchmark
from pipeline.benchmarks.kinds import UNCROPPED_KINDS
from pipeline.data.array_store import StoreError
from pipeline.data.datasets import decode_image, load_split, object_and_cue_masks
from pipeline.data.manifest import classes_of, split_rows
from pipeline.data.preprocess import InputTransform
from pipeline.relevance.maps import Upsampling

if TYPE_CHECKING:
    from pipeline.config.evaluate import BenchmarkConfig


@dataclass
class EvalSource:
    name: str
    kind: str
    dataset: Dataset[dict[str, Any]]
    images: BenchmarkImages | None  # targets, class subset and metadata; None when unlabelled (segmentation)
    has_masks: bool
    captions: list[str]
    upsampling: Upsampling = "cells"  # how relevance cells become a pixel map for the mask metrics
    families: dict[str, list[str]] | None = None  # corruption benchmarks: the families reported together

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class ArrayItems(Dataset[dict[str, Any]]):
    def __init__(self, images: np.ndarray, masks: np.ndarray | None, cues: np.ndarray | None = None) -> None:
        self.images, self.masks, self.cues = images, masks, cues

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"image": torch.from_numpy(np.ascontiguousarray(self.images[index])), "index": index, "readable": True}
        if self.masks is not None:
            item["mask"] = torch.from_numpy(self.masks[index])
        if self.cues is not None:
            item["cue"] = torch.from_numpy(self.cues[index])
        return item


class FileItems(Dataset[dict[str, Any]]):
    """Image files under ``root``, decoded and transformed on access (in worker processes)."""

    def __init__(self, root: Path, files: list[str], transform: InputTransform) -> None:
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, readable = self.transform.image(decode_image(self.root / self.files[index])), True
        except StoreError:
            image, readable = np.zeros((self.transform.size, self.transform.size, 3), dtype=np.uint8), False
        return {"image": torch.from_numpy(np.array(image)), "index": index, "readable": readable}


class SegmentationItems(Dataset[dict[str, Any]]):
    def __init__(self, path: Path, size: int, limit: int | None) -> None:
        from pipeline.benchmarks.segmentation import SegmentationSet

        self.images, self.size = SegmentationSet(path), size
        self.count = len(self.images) if limit is None else min(limit, len(self.images))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pipeline.benchmarks.segmentation import resize_pair

        image, mask = resize_pair(*self.images[index], self.size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(mask),
            "index": index,
            "readable": True,
        }


def _spread(count: int, limit: int) -> list[int]:
    """``limit`` of ``count`` positions spread over all of them (sorted files cluster by class)."""
    return np.linspace(0, count - 1, limit).round().astype(int).tolist()


def _limited_per_ablation(images: BenchmarkImages, limit: int | None) -> BenchmarkImages:
    """Hard ImageNet: ``limit`` images, each under every ablation (the same images for each)."""
    ablations = list(dict.fromkeys(images.metadata["ablation"]))
    per = len(images.files) // len(ablations)
    if limit is None or limit >= per:
        return images
    return images.take([block * per + i for block in range(len(ablations)) for i in _spread(per, limit)])


def _split_metadata(rows: Any, count: int) -> dict[str, list[str]]:
    """The manifest columns the metrics break down by (the world's ImageNet-9-style ``variant``)."""
    if "variant" not in rows.column_names:
        return {}
    variants = rows.column("variant").to_pylist()[:count]
    return {"variant": [str(v) for v in variants]} if all(variants) else {}


def _limited(images: BenchmarkImages, limit: int | None) -> BenchmarkImages:
    if limit is None or limit >= len(images.files):
        return images
    return images.take(_spread(len(images.files), limit))


def open_source(
    name: str,
    config: BenchmarkConfig,
    class_names: list[str],
    transform: InputTransform,
    manifest_path: Path,
    manifest: Any,
    relevance: bool,
) -> EvalSource:
    """The source of benchmark ``name``; file benchmarks are listed, not decoded, here."""
    if config.kind == "corrupted":
        from pipeline.benchmarks.corrupted import CorruptedItems, expand_pairs

        assert config.of is not None  # the config validator requires it
        inner = open_source(name, config.of, class_names, transform, manifest_path, manifest, relevance=False)
        assert inner.images is not None  # kinds that can be corrupted are labelled
        pairs = config.corruption_pairs()
        images = expand_pairs(inner.images, pairs)
        dataset = CorruptedItems(inner.dataset, pairs, config.seed)
        captions = [caption for caption in inner.captions for _ in pairs]
        return EvalSource(name, config.kind, dataset, images, False, captions, families=config.families)
    if config.kind == "split":
        split = config.split or name
        data = load_split(manifest_path, split, manifest, transform)
        masks = cues = None
        if relevance:
            try:
                masks, cues = object_and_cue_masks(manifest_path.parent, split_rows(manifest, split))
            except StoreError:
                masks = None
        count = len(data) if config.limit is None else min(config.limit, len(data))
        classes = classes_of(manifest)
        images = BenchmarkImages(
            "split",
            manifest_path.parent,
            data.image_ids[:count],
            [(int(label),) for label in data.labels[:count]],
            None,
            metadata=_split_metadata(split_rows(manifest, split), count),
        )
        dataset = ArrayItems(
            data.images[:count], None if masks is None else masks[:count], None if cues is None else cues[:count]
        )
        return EvalSource(
            name, "split", dataset, images, masks is not None, [classes[int(label)] for label in data.labels[:count]]
        )
    assert config.path is not None  # the config validator requires it
    if config.kind == "imagenet_segmentation":
        dataset = SegmentationItems(Path(config.path), transform.size, config.limit)
        # Bilinear, as the protocol's reference code upsamples the patch relevance (Chefer et al.)
        return EvalSource(
            name, config.kind, dataset, None, True, [f"image {i}" for i in range(len(dataset))], upsampling="bilinear"
        )
    images = read_benchmark(
        config.kind,
        config.path,
        class_names,
        variants=config.variants,
        split=config.split,
        imagenet=config.imagenet,
        ablations=config.ablations,
    )
    if config.kind == "hard_imagenet":
        from pipeline.benchmarks.hard_imagenet import HardImageNetItems

        images = _limited_per_ablation(images, config.limit)
        captions = [class_names[targets[0]] for targets in images.targets]
        return EvalSource(name, config.kind, HardImageNetItems(images, transform), images, True, captions)
    images = _limited(images, config.limit)
    # ImageNet-C's and ImageNet-9's files are already 224-pixel crops (the corruptions were applied
    # to them; the Backgrounds Challenge feeds them through ToTensor alone): resized, never cropped again
    crop_pct = 1.0 if config.kind in UNCROPPED_KINDS else transform.crop_pct
    file_transform = InputTransform(
        transform.size, transform.interpolation, crop_pct, transform.crop_mode, images.border
    )
    captions = [class_names[targets[0]] for targets in images.targets]
    families = config.families if config.kind == "imagenet_c" else None
    return EvalSource(
        name,
        config.kind,
        FileItems(Path(images.root), images.files, file_transform),
        images,
        False,
        captions,
        families=families,
    )
