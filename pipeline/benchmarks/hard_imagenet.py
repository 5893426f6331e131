"""Hard ImageNet (Moayeri et al., "Hard ImageNet: Segmentations for Objects with Strong Spurious
Cues", NeurIPS 2022 Datasets and Benchmarks): 15 ImageNet classes whose models lean on context,
with an object mask per image, the images themselves from the user's ImageNet.

Layout (``mmoayeri/HardImageNet``, ``datasets/hard_imagenet.py``): the Hard ImageNet folder holds
``meta/idx_to_wnid.pkl`` (ImageNet index -> WordNet id), ``meta/hard_imagenet_idx.pkl`` (the 15
ImageNet indices) and ``<split>/<wnid>_<image file>`` masks (non-zero = object); the image is
``<ImageNet>/<split>/<wnid>/<image file>`` (ImageNet val sorted into WordNet-id folders). The
``.pkl`` files are read with an unpickler that builds plain containers only (no code runs).

Each image is scored as it is (``none``) and with its object ablated after the model's resize and
crop, as ``ablations.py`` does on the transformed tensor: ``gray`` (the object's pixels grey, 0.5),
``gray_bbox`` (the mask's bounding box grey) and ``blur`` (the object's pixels replaced by a
Gaussian blur of the image, radius ``BLUR_RADIUS`` of the side: shape and colour blob kept,
detail gone). The paper's ``tile`` (the box filled with adjacent background) is not implemented.
A model that still recognises the class with its object gone relies on the context: the metric
``ablation_drop`` is the accuracy on ``none`` minus the mean over the ablations (high = the object
matters). Relevance metrics (mIoU, background share: ``1 - background_share`` is the share of
relevance on the object) are measured on the ``none`` images against their masks.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from pipeline.benchmarks.catalog import BenchmarkError, BenchmarkImages
from pipeline.benchmarks.kinds import HARD_IMAGENET_ABLATIONS
from pipeline.data.array_store import StoreError
from pipeline.data.datasets import decode_image
from pipeline.data.preprocess import InputTransform

ABLATIONS = HARD_IMAGENET_ABLATIONS  # each image is also scored as it is ("none")
BLUR_RADIUS = 0.05  # of the input side: 11 px at 224
GREY = 128  # the reference code's 0.5 before normalisation
META_FILES = ("idx_to_wnid.pkl", "hard_imagenet_idx.pkl")


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples, numbers and strings only: a class or function in the file is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: Hard ImageNet's meta files hold plain data")


def _load_plain(path: Path) -> Any:
    if not path.is_file():
        raise BenchmarkError(f"{path}: not found (Hard ImageNet: meta/{' and meta/'.join(META_FILES)})")
    try:
        return _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as error:  # any unpickling failure is a bad file, named
        raise BenchmarkError(f"{path}: unreadable as Hard ImageNet metadata ({error})") from error


def hard_imagenet_wnids(root: Path) -> list[str]:
    """The WordNet ids of the 15 classes, from the dataset's meta files."""
    index_to_wnid = _load_plain(root / "meta" / META_FILES[0])
    indices = _load_plain(root / "meta" / META_FILES[1])
    if not isinstance(index_to_wnid, dict) or not isinstance(indices, list | tuple):
        raise BenchmarkError(f"{root / 'meta'}: expected a dict (index -> wnid) and a list of indices")
    missing = [index for index in indices if index not in index_to_wnid]
    if missing:
        raise BenchmarkError(f"{root / 'meta' / META_FILES[0]}: no WordNet id for ImageNet index(es) {missing}")
    return [str(index_to_wnid[index]) for index in indices]


def read_hard_imagenet(
    root: Path,
    imagenet: Path,
    class_names: Sequence[str],
    split: str | None = None,
    ablations: Sequence[str] = ABLATIONS,
) -> BenchmarkImages:
    """One entry per (ablation, image), ablation-major (``none`` first), files relative to ``imagenet``;
    metadata: ``ablation`` and ``mask`` (the mask file's path)."""
    split = split or "val"
    wnids = hard_imagenet_wnids(root)
    position = {name: index for index, name in enumerate(class_names)}
    absent = [wnid for wnid in wnids if wnid not in position]
    if absent:
        raise BenchmarkError(
            f"{root}: the model's classes do not include Hard ImageNet's {absent[:3]}{'...' if len(absent) > 3 else ''} "
            "(an ImageNet-1k classifier names its classes by WordNet id)"
        )
    mask_dir = root / split
    if not mask_dir.is_dir():
        raise BenchmarkError(f"{mask_dir}: no mask folder for split {split!r} (<Hard ImageNet>/<split>/<wnid>_<file>)")
    files, targets, masks = [], [], []
    for mask in sorted(path for path in mask_dir.iterdir() if path.is_file() and not path.name.startswith(".")):
        wnid, _, name = mask.name.partition("_")
        if wnid not in wnids or not name:
            raise BenchmarkError(f"{mask}: mask name is not <wnid>_<image file> of one of the 15 classes")
        image = Path(split) / wnid / name
        if not (imagenet / image).is_file():
            raise BenchmarkError(
                f"{mask}: its image {imagenet / image} is not found (ImageNet {split} in wnid folders)"
            )
        files.append(image.as_posix())
        targets.append((position[wnid],))
        masks.append(str(mask))
    if not files:
        raise BenchmarkError(f"{mask_dir}: no mask files")
    variants = ["none", *ablations]
    return BenchmarkImages(
        "hard_imagenet",
        imagenet,
        files * len(variants),
        targets * len(variants),
        None,
        metadata={"ablation": [v for v in variants for _ in files], "mask": masks * len(variants)},
    )


def ablate(image: np.ndarray, mask: np.ndarray, ablation: str) -> np.ndarray:
    """``image`` (S, S, 3) uint8 with the object under ``mask`` (S, S) taken away by ``ablation``."""
    if ablation == "none" or not mask.any():
        return image
    out = image.copy()
    if ablation == "gray":
        out[mask] = GREY
    elif ablation == "gray_bbox":
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = GREY
    elif ablation == "blur":
        radius = BLUR_RADIUS * image.shape[0]
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
        out[mask] = blurred[mask]
    else:
        raise ValueError(f"unknown ablation {ablation!r} (none, {', '.join(ABLATIONS)})")
    return out


class HardImageNetItems(Dataset[dict[str, Any]]):
    """Decoded, transformed and ablated on access; the object mask comes with the ``none`` images
    only (an ablated object has no place to measure relevance against)."""

    def __init__(self, images: BenchmarkImages, transform: InputTransform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        size = self.transform.size
        ablation = self.images.metadata["ablation"][index]
        try:
            decoded = decode_image(Path(self.images.root) / self.images.files[index])
            mask = np.asarray(Image.open(self.images.metadata["mask"][index]).convert("L")) > 0
            image = self.transform.image(decoded)
            object_mask = self.transform.mask(mask, *decoded.shape[:2])
            image, readable = ablate(image, object_mask, ablation), True
        except (StoreError, OSError):
            image, object_mask, readable = (
                np.zeros((size, size, 3), dtype=np.uint8),
                np.zeros((size, size), bool),
                False,
            )
        shown = object_mask if ablation == "none" else np.zeros_like(object_mask)
        return {
            "image": torch.from_numpy(np.array(image)),  # a writable copy
            "mask": torch.from_numpy(shown),
            "index": index,
            "readable": readable,
        }


def ablation_metrics(ablations: Sequence[str], right: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Accuracy per ablation (``accuracy_none`` = the images as they are) and ``ablation_drop``."""
    ablation_of = np.asarray(ablations, dtype=object)
    accuracy = {
        name: float(right[ablation_of == name].mean())
        for name in dict.fromkeys(ablations)
        if (ablation_of == name).any()
    }
    metrics = {f"{prefix}accuracy_{name}": round(value, 6) for name, value in accuracy.items()}
    ablated = [value for name, value in accuracy.items() if name != "none"]
    if "none" in accuracy and ablated:
        metrics[f"{prefix}ablation_drop"] = round(accuracy["none"] - float(np.mean(ablated)), 6)
    return metrics
