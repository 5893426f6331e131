"""Grounded-SAM-like errors on exact part masks (``masks.annotated.noise``).

The world's part annotations are perfect; Grounded-SAM's masks on real images are not. This module
degrades an exact part mask the way GroundingDINO (text -> boxes) and SAM (box -> mask) err, with
one knob, the noise level ``n`` in [0, 1] (0: the exact mask, untouched). For a part covering a
share ``a`` of the image (at the label map's own resolution):

1. **Missed part** (no box passes GroundingDINO's threshold, which happens mostly to small parts):
   with probability ``p_miss = n * f(a)``, ``f(a) = SMALL_AREA / (SMALL_AREA + a)``, the concept gets
   an empty mask. ``f`` is 1 for a vanishing part, 1/2 for a part of ``SMALL_AREA`` (2 % of the image:
   an eye, a beak) and falls as 1/a for large ones (a 20 % body: 0.09), so that even large parts are
   sometimes missed (an unknown word is missed at any size). The backend flags such a concept
   ``no_box``, as the grounded_sam backend does, so ``masks.on_all_missing`` applies as usual.
2. **Boundary jitter** (SAM's low-resolution mask logits, upsampled, are off by about a pixel): with
   probability ``n`` the mask is dilated or eroded (even odds) by one pixel (4-neighbourhood); an
   erosion that would empty the mask is skipped.
3. **Box leakage** (SAM fills a box prompt with whatever it outlines, surroundings and neighbouring
   parts included; on a small or indistinct part its mask is nearly the box): with probability ``n``
   the mask grows into ``round(n * |C|)`` pixels of ``C``, the pixels of the part's bounding box that
   the mask does not cover. The box is enlarged by ``BOX_MARGIN`` (10 %, SAM's box jitter) of its
   height and width on each side, at least one pixel, and clipped to the image. The pixels taken are
   a random blob attached to the mask: the ``k`` best of ``g - d / s`` over ``C``, where ``d`` is the
   chessboard distance to the mask, ``s`` a quarter of the box's mean side and ``g`` a smooth
   standard-normal field (a ``FIELD_GRID`` x ``FIELD_GRID`` grid of draws, bilinearly interpolated).

Consequences used by the tests: a part of share ``a`` is found with probability ``1 - n f(a)``; a found
mask at ``n = 1`` is exactly its enlarged box; the expected leaked area of a found mask grows as about
``n^2 |C|`` (plus ``n/2`` of a one-pixel ring from dilation). One bounding box per part, as
GroundingDINO tends to give one box around many small instances (a mushroom's spots).

Every draw comes from a generator seeded by ``(seed, crc32(image id), crc32(concept))`` and is made
whatever ``n`` (four uniforms, then the field), so results do not depend on processing order or
batching, and a higher noise level degrades the same masks further (its missed parts and leaked
pixels contain those of a lower level, jitter aside).

Label value 255 (a cue region inside the object outline that is no named part) is not a part: only
``labels == k`` for the part's index ``k`` is, and leakage may cover the cue, as SAM's would.
"""

from __future__ import annotations

import zlib

import numpy as np

from pipeline.masks.store import BOX_MARGIN

SMALL_AREA = 0.02  # share of the image at which a part is missed with probability noise / 2
FIELD_GRID = 4  # the leakage blob's smooth field: this many random values per box side


def miss_probability(noise: float, area_share: float | np.ndarray) -> float | np.ndarray:
    """``noise * SMALL_AREA / (SMALL_AREA + area_share)``: the chance that a part is missed."""
    return noise * SMALL_AREA / (SMALL_AREA + np.asarray(area_share, dtype=np.float64))


def concept_rng(seed: int, image_id: str, concept: str) -> np.random.Generator:
    """The generator of one (image, concept): stable across runs, processes and orders."""
    entropy = [int(seed), zlib.crc32(image_id.encode("utf-8")), zlib.crc32(concept.strip().lower().encode("utf-8"))]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def leak_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The mask's bounding box enlarged by ``BOX_MARGIN`` of its sides (at least a pixel) on each side, clipped."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = max(1, round(BOX_MARGIN * (bottom - top))), max(1, round(BOX_MARGIN * (right - left)))
    height, width = mask.shape
    return slice(max(0, top - dy), min(height, bottom + dy)), slice(max(0, left - dx), min(width, right + dx))


def _grow(mask: np.ndarray, diagonal: bool) -> np.ndarray:
    """One-pixel binary dilation (4-neighbourhood, or 8 with ``diagonal``)."""
    padded = np.pad(mask, 1)
    grown = mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    if diagonal:
        grown |= padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:]
    return grown


def _shrink(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood; outside the image counts as covered)."""
    return ~_grow(~mask, diagonal=False)


def _chessboard_distance(mask: np.ndarray) -> np.ndarray:
    """Steps of 8-neighbour dilation from ``mask`` (non-empty) to each pixel."""
    distance = np.zeros(mask.shape, dtype=np.int32)
    reached, step = mask.copy(), 0
    while not reached.all():
        step += 1
        grown = _grow(reached, diagonal=True)
        distance[grown & ~reached] = step
        reached = grown
    return distance


def _smooth_field(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear interpolation of a (G, G) grid over ``shape``, corners on corners."""

    def weights(size: int) -> np.ndarray:
        position = np.linspace(0.0, grid.shape[0] - 1.0, size) if size > 1 else np.zeros(1)
        return np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(grid.shape[0])[None, :]))

    return weights(shape[0]) @ grid @ weights(shape[1]).T


def degrade_mask(part: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``(mask, missed)``: the (H, W) bool ``part`` as Grounded-SAM might have segmented it (see the
    module docstring). ``noise == 0`` and an empty part return ``part`` itself, never missed."""
    if noise <= 0.0 or not part.any():
        return part, False
    u_miss, u_jitter, u_direction, u_leak = rng.random(4)
    grid = rng.standard_normal((FIELD_GRID, FIELD_GRID))
    if u_miss < miss_probability(noise, float(part.mean())):
        return np.zeros_like(part), True
    rows, cols = leak_box(part)
    mask = part.copy()
    if u_jitter < noise:
        if u_direction < 0.5:
            mask = _grow(part, diagonal=False)
        elif (eroded := _shrink(part)).any():
            mask = eroded
    if u_leak < noise:
        box = mask[rows, cols].copy()
        candidates = ~box
        take = round(noise * int(candidates.sum()))
        if take:
            scale = max(1.0, (box.shape[0] + box.shape[1]) / 8.0)  # a quarter of the mean side
            priority = _smooth_field(grid, box.shape) - _chessboard_distance(box) / scale
            order = np.argsort(-priority[candidates], kind="stable")[:take]
            box.flat[np.flatnonzero(candidates)[order]] = True
            mask[rows, cols] = box
    return mask, False
