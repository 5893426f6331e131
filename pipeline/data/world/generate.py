"""Sampling the world's splits: which class, background, pose and rendering each image gets.

Every image is drawn from its own random stream, seeded by (seed, split, index), so an image does
not depend on the order of generation, on the other split sizes or on the number of workers.

Splits and the benchmark each one mirrors:

============  =================================================================  ====================
split         how it is drawn                                                    mirrors
============  =================================================================  ====================
pretrain      any background style, independent of the class                     broad pre-training
train/val/    the class's own background style with probability ``spurious_p``,  biased ImageNet
test          else another class's                                               train / val
random_bg     any background style, independent of the class                     (diagnostic)
swapped_bg    always another class's background style                            ImageNet-A
rendition     other colour schemes (hue-rotated, greyscale, inverted)            ImageNet-R
sketch        part outlines on paper                                             ImageNet-Sketch
pose_sweep    size / location / rotation sweeps on a neutral background          SI-Score
scene         random backgrounds and wider viewpoints                            ObjectNet
cue_removed   as test, without the cue                                           (diagnostic)
cue_swapped   as test, always another class's cue                                (diagnostic)
============  =================================================================  ====================

Two shortcuts, measured apart: the background style, and a *cue*, a small square of a
class-typical colour stuck on the object (inside its outline, none of its named parts: a sticker,
tag or collar). In train/val/test, random_bg and swapped_bg the cue is the class's own with
probability ``cue_p`` (default ``spurious_p``), else another class's; pretrain has none, so the
base model learns the objects first and picks the cue up in its biased phase. The cue splits keep
test's background statistics and change only the cue; the other OOD splits have no cue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.world.classes import CLASSES, ObjectClass
from pipeline.data.world.render import (
    NUM_BACKGROUND_STYLES,
    Pose,
    background,
    cue_region,
    downsample_labels,
    downsample_mean,
    neutral_background,
    outline,
    paint_cue,
    paint_parts,
    part_colors,
    part_label_map,
    pixel_grid,
    restyle_colors,
)
from pipeline.data.world.splits import WORLD_SPLITS

if TYPE_CHECKING:
    from pipeline.config.data import WorldConfig

NO_BACKGROUND_CLASS = -1
NO_CUE = -1
CUE_SPLITS = ("train", "val", "test", "random_bg", "swapped_bg", "cue_swapped")
RENDITION_STYLES = ("hue_shift", "grayscale", "inverted")
POSE_FACTORS = ("size", "location", "rotation")


@dataclass
class WorldSample:
    image: np.ndarray  # (S, S, 3) uint8
    part_labels: np.ndarray  # (S, S) uint8: 0 background, k = part k-1 of the class
    class_index: int
    background_class: int  # whose style the background has; -1 for neutral / paper
    cue_class: int  # whose cue is on the object; -1 for none
    rendering: str
    factor: str = ""
    factor_value: float = math.nan
    part_names: list[str] = field(default_factory=list)
    variant: str = ""  # backgrounds split: which ImageNet-9-style variant of its scene

    @property
    def object_mask(self) -> np.ndarray:
        return self.part_labels > 0

    def part_masks(self) -> dict[str, np.ndarray]:
        return {name: self.part_labels == index for index, name in enumerate(self.part_names, start=1)}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, WORLD_SPLITS.index(split), index]))


def class_assignment(seed: int, split: str, count: int, num_classes: int) -> np.ndarray:
    """Balanced classes in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, WORLD_SPLITS.index(split), 2**31]))
    return rng.permutation(np.arange(count) % num_classes)


def in_distribution_pose(size: int, rng: np.random.Generator) -> Pose:
    return Pose(
        center_x=size * (0.5 + rng.uniform(-0.07, 0.07)),
        center_y=size * (0.5 + rng.uniform(-0.07, 0.07)),
        scale=size * rng.uniform(0.34, 0.42),
        angle_deg=rng.uniform(-20, 20),
        mirror=bool(rng.random() < 0.5),
    )


def _scene_pose(size: int, rng: np.random.Generator) -> Pose:
    return Pose(
        center_x=size * (0.5 + rng.uniform(-0.12, 0.12)),
        center_y=size * (0.5 + rng.uniform(-0.12, 0.12)),
        scale=size * rng.uniform(0.28, 0.44),
        angle_deg=rng.uniform(-60, 60),
        mirror=bool(rng.random() < 0.5),
    )


def _sweep_pose(size: int, rng: np.random.Generator) -> tuple[Pose, str, float]:
    factor = POSE_FACTORS[int(rng.integers(len(POSE_FACTORS)))]
    center, scale, angle = (size / 2, size / 2), size * 0.36, 0.0
    if factor == "size":
        value = float(rng.uniform(0.22, 0.46))
        scale = size * value
    elif factor == "location":
        value = float(rng.uniform(0.0, 1.0))  # position along the main diagonal
        offset = (value - 0.5) * 0.4 * size
        center = (size / 2 + offset, size / 2 + offset)
        scale = size * 0.28
    else:
        value = float(rng.uniform(-180, 180))
        angle = value
    return Pose(center[0], center[1], scale, angle, mirror=False), factor, value


def draw_background_class(
    split: str, class_index: int, num_classes: int, spurious_p: float, rng: np.random.Generator
) -> int:
    others = [k for k in range(num_classes) if k != class_index]
    if split in ("train", "val", "test", "cue_removed", "cue_swapped"):
        return class_index if rng.random() < spurious_p else int(rng.choice(others))
    if split == "swapped_bg":
        return int(rng.choice(others))
    if split in ("sketch", "pose_sweep"):
        return NO_BACKGROUND_CLASS
    return int(rng.integers(num_classes))


def draw_cue_class(split: str, class_index: int, num_classes: int, cue_p: float, rng: np.random.Generator) -> int:
    if split not in CUE_SPLITS:
        return NO_CUE
    others = [k for k in range(num_classes) if k != class_index]
    if split == "cue_swapped" or rng.random() >= cue_p:
        return int(rng.choice(others))
    return class_index


def render_sample(
    config: WorldConfig, classes: tuple[ObjectClass, ...], split: str, index: int, class_index: int, seed: int
) -> WorldSample:
    """Render image ``index`` of ``split``: deterministic in (seed, split, index, class)."""
    rng = sample_rng(seed, split, index)
    size, ss = config.image_size, config.supersample
    obj = classes[class_index]
    xs, ys = pixel_grid(size, ss)
    bg_class = draw_background_class(split, class_index, len(classes), config.spurious_p, rng)
    factor, factor_value = "", math.nan
    if split == "pose_sweep":
        pose, factor, factor_value = _sweep_pose(size, rng)
    elif split == "scene":
        pose = _scene_pose(size, rng)
    else:
        pose = in_distribution_pose(size, rng)
    labels_hi = part_label_map(obj, pose, xs, ys)
    colors = part_colors(obj, rng, config.hue_jitter)
    cue_class = (
        draw_cue_class(split, class_index, len(classes), config.cue_probability, rng) if config.cue_size > 0 else NO_CUE
    )
    cue = cue_region(labels_hi, round(config.cue_size * size) * ss, rng) if cue_class != NO_CUE else None
    cue_class = cue_class if cue is not None else NO_CUE

    rendering = "photo"
    if split == "sketch":
        rendering = "sketch"
        paper = np.full((*xs.shape, 3), rng.uniform(0.9, 1.0)) + rng.normal(0, 0.01, size=(*xs.shape, 3))
        ink = outline(labels_hi, width=max(ss // 2, 1))
        canvas = np.where(ink[..., None], rng.uniform(0.0, 0.2), paper)
    else:
        if bg_class == NO_BACKGROUND_CLASS:
            canvas = neutral_background(xs.shape, rng)
        else:
            style = CLASSES.index(classes[bg_class]) % NUM_BACKGROUND_STYLES
            canvas = background(style, xs, ys, size, rng)
        if split == "rendition":
            rendering = RENDITION_STYLES[int(rng.integers(len(RENDITION_STYLES)))]
            colors = restyle_colors(colors, rendering, rng)
        canvas = paint_parts(canvas, labels_hi, colors, rng)
        if cue is not None:
            paint_cue(canvas, labels_hi, cue, CLASSES.index(classes[cue_class]))

    image = downsample_mean(canvas, ss) + rng.normal(0.0, 0.015, size=(size, size, 3))
    return WorldSample(
        image=np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8),
        part_labels=downsample_labels(labels_hi, ss, len(obj.parts)),
        class_index=class_index,
        background_class=bg_class,
        cue_class=cue_class,
        rendering=rendering,
        factor=factor,
        factor_value=factor_value,
        part_names=obj.part_names,
    )
