"""Relevance-vs-object agreement: the dataset-level counts behind relevance mIoU and pixel accuracy.

Relevance mIoU follows the ImageNet-segmentation protocol (Chefer et al.): the relevance map of
an image is binarised at its own mean, and intersections and unions of the two classes
(background, object) are *summed over the dataset* before dividing; mIoU is their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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
