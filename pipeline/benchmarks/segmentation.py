"""ImageNet-segmentation relevance benchmark: reader for ``gtsegs_ijcv.mat`` and its metrics.

The data set is Guillaumin et al.'s ImageNet auto-annotation ground truth (IJCV 2014): 4,276
images with binary object masks in one MATLAB v7.3 (HDF5) file. The protocol is that of Chefer
et al., "Transformer Interpretability Beyond Attention Visualization" (CVPR 2021; repository
hila-chefer/Transformer-Explainability, ``baselines/ViT/imagenet_seg_eval.py``,
``data/Imagenet.py``, ``utils/metrices.py``):

* image resized to the square input size (no crop), mask resized with nearest neighbour;
* the patch relevance is upsampled bilinearly to the input resolution, min-max normalised per
  image and binarised at its own mean; pixel accuracy = correct pixels / all pixels (every pixel is labelled);
* IoU of the two classes (background, object) with intersections and unions *summed over the
  data set*; mIoU = mean of the two;
* AP per image, averaged over images. Chefer's AP pools both classes: the background channel
  scores every pixel with ``1 - r`` (positive where the mask is 0), the object channel with ``r``
  (positive where the mask is 1), and one sklearn ``average_precision_score`` runs over the
  2·H·W pooled scores. That is ``ap``; every image has positives there, so images without
  foreground are well defined. ``ap_foreground`` is the plain definition (``r`` as foreground
  score alone); an image without foreground scores 0 there, as sklearn returns 0 and Chefer's
  code applies ``np.nan_to_num`` (older sklearn returned NaN).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from pipeline.benchmarks.mask_scores import SegmentationCounts, binarise_at_mean
from pipeline.utils.errors import CftError


class SegmentationError(CftError):
    """The segmentation file is missing or not laid out like gtsegs_ijcv.mat."""


class SegmentationSet:
    """The images and masks of gtsegs_ijcv.mat, read lazily by index.

    Safe in DataLoader worker processes: the HDF5 handle is opened on first use in each process
    (checked by pid) and never pickled, because an HDF5 handle shared across fork is corrupted.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SegmentationError(f"{self.path}: segmentation file not found")
        if not h5py.is_hdf5(self.path):
            raise SegmentationError(f"{self.path}: not an HDF5 (MATLAB v7.3) file")
        with h5py.File(self.path, "r") as f:
            sizes = [self._references(f, name).size for name in ("value/img", "value/gt")]
        if sizes[0] != sizes[1]:
            raise SegmentationError(f"{self.path}: value/img has {sizes[0]} entries but value/gt has {sizes[1]}")
        self._length = sizes[0]
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._refs: dict[str, np.ndarray] = {}

    def _references(self, f: h5py.File, name: str) -> h5py.Dataset:
        item = f.get(name)
        if not isinstance(item, h5py.Dataset) or h5py.check_dtype(ref=item.dtype) is None:
            raise SegmentationError(f"{self.path}: no dataset of object references at '{name}'")
        # MATLAB writes a 1xN cell as (N, 1); accept either orientation of a vector.
        if item.ndim > 2 or (item.ndim == 2 and min(item.shape) > 1):
            raise SegmentationError(f"{self.path}: '{name}' has shape {item.shape}, expected a vector")
        return item

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # A handle inherited through fork is not ours to close; just drop it.
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._refs = {name: self._references(self._file, name)[()].ravel() for name in ("value/img", "value/gt")}
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _refs={})
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} images in {self.path}")
        index %= self._length
        f = self._open()
        # MATLAB is column-major: an H x W x 3 image is stored as (3, W, H), a mask as (W, H).
        image = np.asarray(f[self._refs["value/img"][index]][()]).T
        if image.ndim == 2:  # a grey image; Chefer's loader converts to RGB
            image = np.repeat(image[..., None], 3, axis=2)
        gt = f[self._refs["value/gt"][index]]
        if h5py.check_dtype(ref=gt.dtype) is not None:  # each gt entry is a 1x1 cell holding the mask
            gt = f[gt[()].ravel()[0]]
        mask = np.asarray(gt[()]).T != 0
        if image.shape[:2] != mask.shape or image.shape[2] != 3:
            raise SegmentationError(f"{self.path}: image {index} has shape {image.shape} but mask {mask.shape}")
        return np.ascontiguousarray(image, dtype=np.uint8), np.ascontiguousarray(mask)


def _matlab(dataset: h5py.Dataset | h5py.Group, matlab_class: str) -> None:
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)


def write_segmentation_file(path: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """Write images (H, W, 3) uint8 and masks (H, W) bool in the layout of the real gtsegs_ijcv.mat.

    Mirrors the real file: a MATLAB v7.3 header in a 512-byte user block; struct ``value`` with
    cell vectors ``img`` and ``gt`` stored as (N, 1) object references; the arrays live under
    ``#refs#`` in MATLAB's column-major layout (image as (3, W, H) uint8, mask as (W, H) uint8
    0/1); each ``gt`` entry is itself a 1x1 cell whose one reference points at the mask. The
    mask's MATLAB class in the real file is not known to us; readers only test ``!= 0``.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as f:
        value, refs = f.create_group("value"), f.create_group("#refs#")
        _matlab(value, "struct")
        img = value.create_dataset("img", (len(images), 1), dtype=h5py.ref_dtype)
        gt = value.create_dataset("gt", (len(images), 1), dtype=h5py.ref_dtype)
        _matlab(img, "cell")
        _matlab(gt, "cell")
        for i, (image, mask) in enumerate(zip(images, masks)):
            if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
                raise ValueError(f"image {i} has shape {image.shape}, mask {mask.shape}")
            stored = refs.create_dataset(f"img{i}", data=np.asarray(image, dtype=np.uint8).T)
            _matlab(stored, "uint8")
            stored_mask = refs.create_dataset(f"mask{i}", data=np.asarray(mask, dtype=np.uint8).T)
            _matlab(stored_mask, "uint8")
            cell = refs.create_dataset(f"gt{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = stored_mask.ref
            _matlab(cell, "cell")
            img[i, 0], gt[i, 0] = stored.ref, cell.ref
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as raw:  # MATLAB's 128-byte header: text, subsystem offset, version, endianness
        raw.write(header + b"\x00" * 8 + b"\x00\x02" + b"IM")


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and mask (nearest) to ``size`` x ``size``, as Chefer's protocol does.

    This squashes the image to a square without cropping, unlike the models' own resize-and-crop
    preprocessing; the difference is deliberate, so that numbers compare with the papers.
    """
    resized = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB").resize((size, size), Image.BILINEAR)
    resized_mask = Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((size, size), Image.NEAREST)
    return np.array(resized, dtype=np.uint8), np.asarray(resized_mask) != 0  # a writable copy, for torch


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision as sklearn.metrics.average_precision_score: AP = Σ (R_n − R_{n−1}) P_n.

    One operating point per distinct score (tied scores enter together). Without positives the
    result is 0.0 (sklearn's value; Chefer's code maps older sklearn's NaN to 0 as well).
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel() != 0
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if not labels.any():
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(labels)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _normalise(relevance: np.ndarray) -> np.ndarray | None:
    """Min-max to [0, 1]; None for a constant map (Chefer's division yields NaN, then set to 0)."""
    low, high = relevance.min(), relevance.max()
    return None if high <= low else (relevance - low) / (high - low)


@dataclass
class SegmentationScores:
    """Running sums of the benchmark over batches; ``to_dict``/``from_dict``/``+`` let runs resume."""

    counts: SegmentationCounts = field(default_factory=SegmentationCounts)
    ap_sum: float = 0.0
    ap_foreground_sum: float = 0.0
    images: int = 0

    def add(self, relevance: np.ndarray, masks: np.ndarray) -> None:
        """``relevance`` (B, H, W) float maps and ``masks`` (B, H, W) bool at the same size."""
        relevance, masks = np.asarray(relevance, dtype=np.float64), np.asarray(masks) != 0
        if relevance.ndim != 3 or relevance.shape != masks.shape:
            raise ValueError(f"relevance {relevance.shape} and masks {masks.shape} must both be (B, H, W)")
        if not np.isfinite(relevance).all():
            raise ValueError("relevance contains NaN or infinity")
        for single, mask in zip(relevance, masks):
            normalised = _normalise(single)
            if normalised is None:
                predicted = np.zeros_like(mask)  # NaN > mean is False: all background
                pooled = np.zeros(2 * mask.size)
            else:
                predicted = binarise_at_mean(normalised[None])[0]
                pooled = np.concatenate([1.0 - normalised.ravel(), normalised.ravel()])
            self.counts.add(predicted.astype(np.int64), mask.astype(np.int64))
            self.ap_sum += average_precision(pooled, np.concatenate([~mask.ravel(), mask.ravel()]))
            self.ap_foreground_sum += average_precision(single, mask)
            self.images += 1

    def metrics(self) -> dict[str, float]:
        def mean(total: float) -> float:
            return total / self.images if self.images else float("nan")

        out = {
            "pixel_accuracy": float(self.counts.pixel_accuracy()),
            "miou": self.counts.miou(),
            "ap": mean(self.ap_sum),
            "ap_foreground": mean(self.ap_foreground_sum),
        }
        return {**{key: round(value, 6) for key, value in out.items()}, "images": self.images}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready running sums (not the rounded metrics), for saving partial results."""
        return {
            "intersection": [float(v) for v in self.counts.intersection],
            "union": [float(v) for v in self.counts.union],
            "correct": float(self.counts.correct),
            "pixels": float(self.counts.pixels),
            "ap_sum": self.ap_sum,
            "ap_foreground_sum": self.ap_foreground_sum,
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationScores:
        counts = SegmentationCounts(
            intersection=np.asarray(data["intersection"], dtype=np.float64),
            union=np.asarray(data["union"], dtype=np.float64),
            correct=float(data["correct"]),
            pixels=float(data["pixels"]),
        )
        return cls(counts, float(data["ap_sum"]), float(data["ap_foreground_sum"]), int(data["images"]))

    def __add__(self, other: SegmentationScores) -> SegmentationScores:
        mine, theirs = self.to_dict(), other.to_dict()
        return SegmentationScores.from_dict({key: np.add(mine[key], theirs[key]).tolist() for key in mine})
