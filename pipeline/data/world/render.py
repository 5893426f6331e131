"""Rasterising the world: parts, background textures and rendering styles, in plain NumPy.

Everything is drawn at ``supersample`` times the output resolution and averaged down, which gives
anti-aliased images and lets masks be defined by pixel coverage (a pixel belongs to the object
when at least half of it is covered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.datasets import CUE_LABEL
from pipeline.data.world.classes import Ellipse, ObjectClass, Primitive

NUM_BACKGROUND_STYLES = 10
# Two HSV hues per background style; a style is a pattern plus its palette.
_STYLE_HUES = (
    (0.58, 0.62),
    (0.30, 0.18),
    (0.95, 0.08),
    (0.0, 0.0),
    (0.45, 0.52),
    (0.75, 0.85),
    (0.55, 0.12),
    (0.12, 0.05),
    (0.25, 0.38),
    (0.02, 0.68),
)


# The cue: a small square of one class-typical colour stuck on the object (a sticker, tag or
# collar). It lies inside the object's outline but is none of its named parts, so its pixels carry
# their own label (CUE_LABEL): object masks include it, concept (part) masks do not.
# One colour per world class (catalog order), saturated and unlike the part the cue usually sits on.
CUE_HSV = (
    (0.5, 1.0, 1.0),
    (0.16, 1.0, 1.0),
    (0.83, 1.0, 1.0),
    (0.33, 1.0, 0.9),
    (0.58, 0.35, 1.0),
    (0.63, 1.0, 1.0),
    (0.25, 1.0, 0.55),
    (0.08, 1.0, 1.0),
    (0.75, 1.0, 0.8),
    (0.0, 0.0, 1.0),
)


@dataclass(frozen=True)
class Pose:
    """Object placement in pixel units of the output image."""

    center_x: float
    center_y: float
    scale: float  # pixels per object-local unit
    angle_deg: float
    mirror: bool


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB on the last axis, all channels in [0, 1]."""
    h, s, v = (hsv[..., i] for i in range(3))
    h = np.mod(h, 1.0) * 6.0
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [
        np.stack(channels, axis=-1) for channels in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    out = np.zeros(hsv.shape, dtype=np.float64)
    for index, rgb in enumerate(choices):
        out = np.where((sector == index)[..., None], rgb, out)
    return out


def pixel_grid(size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centre coordinates in output-pixel units, shape (size*ss, size*ss) each."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    return np.meshgrid(coords, coords, indexing="xy")


def _to_local(xs: np.ndarray, ys: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xs - pose.center_x, ys - pose.center_y
    theta = np.deg2rad(pose.angle_deg)
    c, s = np.cos(theta), np.sin(theta)
    lx = (c * dx + s * dy) / pose.scale
    ly = (-s * dx + c * dy) / pose.scale
    return (-lx if pose.mirror else lx), ly


def _inside(shape: Primitive, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    if isinstance(shape, Ellipse):
        theta = np.deg2rad(shape.angle_deg)
        c, s = np.cos(theta), np.sin(theta)
        dx, dy = lx - shape.cx, ly - shape.cy
        u = (c * dx + s * dy) / shape.rx
        v = (-s * dx + c * dy) / shape.ry
        return u * u + v * v <= 1.0
    vertices = np.asarray(shape.vertices, dtype=np.float64)
    edges = np.roll(vertices, -1, axis=0) - vertices
    cross = [ex * (ly - vy) - ey * (lx - vx) for (vx, vy), (ex, ey) in zip(vertices, edges, strict=True)]
    stacked = np.stack(cross)
    return np.all(stacked >= 0, axis=0) | np.all(stacked <= 0, axis=0)


def part_label_map(obj: ObjectClass, pose: Pose, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sub-pixel map of the visible part: 0 = background, k = part k-1 (later parts on top)."""
    lx, ly = _to_local(xs, ys, pose)
    labels = np.zeros(xs.shape, dtype=np.uint8)
    for index, part in enumerate(obj.parts, start=1):
        covered = np.zeros(xs.shape, dtype=bool)
        for shape in part.shapes:
            covered |= _inside(shape, lx, ly)
        labels[covered] = index
    return labels


def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[:2]
    return image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:]).mean(axis=(1, 3))


def downsample_labels(labels: np.ndarray, factor: int, num_parts: int) -> np.ndarray:
    """Pixel label = its most covering part (or the cue), if they cover at least half of the pixel; else 0."""
    if factor == 1:
        return labels
    h, w = labels.shape
    blocks = (
        labels.reshape(h // factor, factor, w // factor, factor)
        .transpose(0, 2, 1, 3)
        .reshape(h // factor, w // factor, -1)
    )
    values = (*range(1, num_parts + 1), CUE_LABEL)
    counts = np.stack([(blocks == k).sum(axis=-1) for k in values], axis=-1)
    object_covered = counts.sum(axis=-1) * 2 >= factor * factor
    best = np.asarray(values, dtype=np.uint8)[counts.argmax(axis=-1)]
    return np.where(object_covered, best, 0).astype(np.uint8)


def _window_sums(mask: np.ndarray, side: int) -> np.ndarray:
    """Number of True pixels in every side×side window, indexed by the window's top-left corner."""
    integral = np.pad(mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    return integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]


def cue_region(labels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray | None:
    """Pixels of the cue: a side×side square at a random place where it covers the most of the
    object's largest visible part, clipped to that part, so it stays inside the outline and never
    hides a small part (a thin or ring-shaped part gets a clipped square). None without a place."""
    if side < 1 or side > min(labels.shape):
        return None
    visible = np.bincount(labels.ravel(), minlength=CUE_LABEL + 1)[1:CUE_LABEL]
    if not visible.any():
        return None
    largest = labels == int(visible.argmax()) + 1
    coverage = _window_sums(largest, side)
    corners = np.argwhere(coverage == coverage.max())
    top, left = corners[int(rng.integers(len(corners)))]
    region = np.zeros(labels.shape, dtype=bool)
    region[top : top + side, left : left + side] = True
    return region & largest


def paint_cue(canvas: np.ndarray, labels: np.ndarray, region: np.ndarray, cue_class: int) -> None:
    """Paint class ``cue_class``'s cue colour (world catalog index) on ``region``, labelled CUE_LABEL."""
    canvas[region] = hsv_to_rgb(np.asarray(CUE_HSV[cue_class], dtype=np.float64))
    labels[region] = CUE_LABEL


def background(style: int, xs: np.ndarray, ys: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured background of one of the ten styles, RGB in [0, 1]; randomised within its style."""
    u, v = xs / size, ys / size
    freq = rng.uniform(2.5, 4.5)
    phase = rng.uniform(0, 2 * np.pi)
    cu, cv = rng.uniform(0.2, 0.8, size=2)
    radius = np.hypot(u - cu, v - cv)
    if style == 0:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * v + phase)
    elif style == 1:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase)
    elif style == 2:
        pattern = (np.sin(2 * np.pi * freq * (u + v) / 1.4 + phase) > 0).astype(np.float64)
    elif style == 3:
        pattern = (np.sin(2 * np.pi * freq * u / 1.5 + phase) * np.sin(2 * np.pi * freq * v / 1.5 + phase) > 0).astype(
            np.float64
        )
    elif style == 4:
        cell = 1.0 / (freq * 1.5)
        du = np.mod(u + phase, cell) / cell - 0.5
        dv = np.mod(v + phase, cell) / cell - 0.5
        pattern = (np.hypot(du, dv) < 0.3).astype(np.float64)
    elif style == 5:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * 1.5 * radius + phase)
    elif style == 6:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * v + 1.5 * np.sin(2 * np.pi * 1.5 * u + phase))
    elif style == 7:
        pattern = ((np.mod(u * freq + phase, 1.0) < 0.15) | (np.mod(v * freq + phase, 1.0) < 0.15)).astype(np.float64)
    elif style == 8:
        waves = sum(
            np.sin(2 * np.pi * (a * u + b * v) + c)
            for a, b, c in rng.uniform([-2.5, -2.5, 0.0], [2.5, 2.5, 2 * np.pi], size=(4, 3))
        )
        pattern = 1.0 / (1.0 + np.exp(-2.0 * waves))
    elif style == 9:
        pattern = 0.5 + 0.5 * np.sin(np.round(freq * 2) * np.arctan2(v - cv, u - cu) + phase)
    else:
        raise ValueError(f"unknown background style {style}")
    hue_a, hue_b = _STYLE_HUES[style]
    jitter = rng.uniform(-0.03, 0.03, size=2)
    saturation = 0.0 if style == 3 else rng.uniform(0.45, 0.65)
    color_a = hsv_to_rgb(np.array([hue_a + jitter[0], saturation, rng.uniform(0.75, 0.95)]))
    color_b = hsv_to_rgb(np.array([hue_b + jitter[1], saturation, rng.uniform(0.25, 0.45)]))
    return pattern[..., None] * color_a + (1.0 - pattern[..., None]) * color_b


def neutral_background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(0.4, 0.6)
    return np.full((*shape, 3), grey) + rng.normal(0.0, 0.01, size=(*shape, 3))


def part_colors(obj: ObjectClass, rng: np.random.Generator, hue_jitter: float) -> np.ndarray:
    """Class-typical part colours with per-image jitter, RGB, shape (num_parts, 3)."""
    hsv = np.array([part.hsv for part in obj.parts], dtype=np.float64)
    hsv[:, 0] += rng.uniform(-hue_jitter, hue_jitter, size=len(obj.parts))
    hsv[:, 1:] = np.clip(hsv[:, 1:] + rng.uniform(-0.08, 0.08, size=(len(obj.parts), 2)), 0.0, 1.0)
    return hsv_to_rgb(hsv)


def restyle_colors(colors: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """Rendition styles (like ImageNet-R): same shapes, other colour schemes."""
    if style == "grayscale":
        grey = colors @ np.array([0.299, 0.587, 0.114])
        return np.repeat(grey[:, None], 3, axis=1)
    if style == "inverted":
        return 1.0 - colors
    if style == "hue_shift":
        # Rotating all RGB hues by the same amount keeps the parts' contrasts, changes their colours.
        shift = rng.uniform(0.25, 0.75) * 2 * np.pi
        axis = np.ones(3) / np.sqrt(3)
        c, s = np.cos(shift), np.sin(shift)
        cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)
        return np.clip(colors @ rotation.T, 0.0, 1.0)
    raise ValueError(f"unknown rendition style {style!r}")


def paint_parts(canvas: np.ndarray, labels: np.ndarray, colors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill each part with its colour plus a soft lighting gradient, over the canvas."""
    out = canvas.copy()
    h, w = labels.shape
    light = np.linspace(1.08, 0.92, h)[:, None] * np.ones((1, w))
    light = light if rng.random() < 0.5 else light.T
    for index, color in enumerate(colors, start=1):
        where = labels == index
        out[where] = np.clip(color[None, :] * light[where][:, None], 0.0, 1.0)
    return out


def outline(labels: np.ndarray, width: int) -> np.ndarray:
    """Boundaries between different labels (part edges and the silhouette), ``width`` sub-pixels wide."""
    edges = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        diff = np.diff(labels.astype(np.int16), axis=axis) != 0
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, 1)
        edges |= np.pad(diff, pad)
    grown = edges.copy()
    for _ in range(max(width - 1, 0)):
        grown[1:, :] |= edges[:-1, :]
        grown[:, 1:] |= edges[:, :-1]
        edges = grown.copy()
    return grown
