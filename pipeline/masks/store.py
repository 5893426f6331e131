"""The mask store: one binary mask per (fine-tuning image, concept of its class).

Layout of the artifact directory (every mask backend writes exactly this)::

    masks.zarr/                 zarr 3 group
        masks                   bool (N, K, H, W); chunk = one image (1, K, H, W), sharded
                                (512 images per shard file, which keeps DVC transfers fast);
                                slot k of row n is the k-th concept of image n's class; a whole-object
                                fallback mask, when used, follows the concepts; unused slots are False
        attrs: format_version, backend, resolution [H, W], max_concepts K,
               image_ids (row order, = the subset's fine-tuning ids), provenance (backend-specific:
               model files and their sha256, thresholds)
    masks.parquet               one row per (image, used slot):
        image_id, row (int64), slot (int32), class_name, concept,
        area_fraction (float32), score (float32, detection score; null if the backend has none),
        boxes (int32, boxes found; null if the backend has none), flag (see FLAGS)

Only slots flagged ``ok`` or ``fallback`` count as usable: ``MaskStore.union`` leaves the others
out, and an image with no usable slot is reported by ``MaskStore.usable`` (fine-tuning skips it).
Readers open single rows (one chunk per image), never the whole store, and verify what they read:
every shard file must exist (checked at open), every chunk must pass its crc32c, and every mask
read must cover the area its table row records (``area_fraction``), so a store that is damaged or
does not belong to its table is an error naming the file, never silently empty masks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.data.array_store import (
    DEFAULT_IMAGES_PER_SHARD,
    DamagedStoreError,
    StoreError,
    create_image_array,
    open_array,
    open_store,
    read_rows,
)
from pipeline.utils.atomic import write_with

STORE_NAME = "masks.zarr"
TABLE_NAME = "masks.parquet"
FORMAT_VERSION = 2
FULL_AREA = 0.95
# QC of a box-prompted mask against its boxes (``noisy``). SAM is trained to segment the object a
# box outlines, from boxes jittered by a standard deviation of 10 % of their side; so a real mask lies
# inside its box give or take that margin and covers a good part of it (a solid object most of its
# box; a diagonal bar 7 % of the box side wide still fills 10 %), while a mask that ignores its box
# (untrained or mismatched weights, a broken prompt) covers the image at about the same density
# inside and outside the box. The thresholds leave a wide berth to real masks.
BOX_MARGIN = 0.1  # boxes are enlarged by this share of their width and height on each side (SAM's box jitter)
NOISY_MIN_FILL = 0.1  # the mask must cover at least this share of its boxes' area
NOISY_MIN_INSIDE = 0.5  # at least this share of the mask must lie inside its enlarged boxes
NOISY_MAX_SPILL = 0.25  # and it may cover at most this share of the image area outside them
FLAGS = {
    "ok": "a usable concept mask",
    "fallback": "the whole-object mask, used because no concept of the image was found",
    "no_box": "the detector found no box above the thresholds",
    "empty": "boxes were found but the mask is empty",
    "full": f"the mask covers more than {FULL_AREA:.0%} of the image (likely a failure)",
    "noisy": (
        f"the mask does not follow its boxes: it fills less than {NOISY_MIN_FILL:.0%} of them, or less than "
        f"{NOISY_MIN_INSIDE:.0%} of it lies inside them (enlarged by {BOX_MARGIN:.0%} of their size on each side), "
        f"or it covers more than {NOISY_MAX_SPILL:.0%} of the image outside them (noise, e.g. untrained SAM weights)"
    ),
    "no_annotation": "the data has no annotation for this concept",
}
USABLE_FLAGS = ("ok", "fallback")
TABLE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("row", pa.int64()),
        ("slot", pa.int32()),
        ("class_name", pa.string()),
        ("concept", pa.string()),
        ("area_fraction", pa.float32()),
        ("score", pa.float32()),
        ("boxes", pa.int32()),
        ("flag", pa.string()),
    ]
)


@dataclass
class ImageMasks:
    """A backend's result for one image: one mask per concept of its class, in concept order."""

    image_id: str
    class_name: str
    concepts: list[str]  # with a fallback, the last entry is the whole-object prompt
    masks: np.ndarray  # (len(concepts), H, W) bool
    scores: list[float | None] = field(default_factory=list)
    boxes: list[int | None] = field(default_factory=list)  # detector backends: boxes kept per concept
    missing: list[bool] = field(default_factory=list)  # True: the data has no annotation for this concept
    fallback: bool = False  # the last slot is the whole-object fallback
    noisy: list[bool] = field(
        default_factory=list
    )  # detector backends: True where the mask does not follow its boxes (see box_agreement)

    def flags(self) -> list[str]:
        flags = []
        for slot in range(len(self.concepts)):
            area = float(self.masks[slot].mean()) if self.masks[slot].size else 0.0
            if self.missing and self.missing[slot]:
                flags.append("no_annotation")
            elif self.boxes and self.boxes[slot] == 0:
                flags.append("no_box")
            elif area == 0.0:
                flags.append("empty")
            elif area > FULL_AREA:
                flags.append("full")
            elif self.noisy and self.noisy[slot]:
                flags.append("noisy")
            else:
                flags.append("fallback" if self.fallback and slot == len(self.concepts) - 1 else "ok")
        return flags

    def usable(self) -> bool:
        return any(flag in USABLE_FLAGS for flag in self.flags())


def box_region(shape: tuple[int, int], boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(H, W) bool: the pixels any of ``boxes`` (n, 4 pixel x0 y0 x1 y1) touches, each box first
    enlarged by ``margin`` times its width and height on each side; clipped to the image."""
    height, width = shape
    region = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        dx, dy = margin * max(x1 - x0, 0.0), margin * max(y1 - y0, 0.0)
        left, top = int(np.clip(np.floor(x0 - dx), 0, width - 1)), int(np.clip(np.floor(y0 - dy), 0, height - 1))
        right, bottom = int(np.clip(np.ceil(x1 + dx), left + 1, width)), int(np.clip(np.ceil(y1 + dy), top + 1, height))
        region[top:bottom, left:right] = True
    return region


def box_agreement(mask: np.ndarray, boxes: np.ndarray) -> dict[str, float]:
    """How well a box-prompted mask follows its boxes (the union of their masks against the union
    of the boxes): ``fill``, the share of the boxes it covers; ``inside``, the share of the mask inside
    the boxes enlarged by ``BOX_MARGIN``; ``spill``, the share of the image outside those that it covers."""
    tight = box_region(mask.shape, boxes)
    loose = box_region(mask.shape, boxes, BOX_MARGIN)
    area, outside = int(mask.sum()), int((~loose).sum())
    return {
        "fill": float((mask & tight).sum() / max(1, tight.sum())),
        "inside": float((mask & loose).sum() / area) if area else 0.0,
        "spill": float((mask & ~loose).sum() / outside) if outside else 0.0,
    }


def is_noisy(mask: np.ndarray, boxes: np.ndarray) -> bool:
    """True where ``mask`` does not follow ``boxes`` (see ``FLAGS["noisy"]``); an empty mask or no
    box is left to the ``empty`` and ``no_box`` flags."""
    if not mask.any() or len(boxes) == 0:
        return False
    agreement = box_agreement(mask, boxes)
    return (
        agreement["fill"] < NOISY_MIN_FILL
        or agreement["inside"] < NOISY_MIN_INSIDE
        or agreement["spill"] > NOISY_MAX_SPILL
    )


def write_mask_store(
    out_dir: str | Path,
    results: Iterable[ImageMasks],
    resolution: tuple[int, int],
    backend: str,
    *,
    image_count: int | None = None,
    max_concepts: int | None = None,
    provenance: dict[str, Any] | None = None,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
) -> pa.Table:
    """Write the store and its table into ``out_dir``; returns the table (the QC report).

    ``results`` may be a stream (a generator): with ``image_count`` and ``max_concepts`` given,
    masks are written one shard at a time and never all held in memory.
    """
    out_dir = Path(out_dir)
    if image_count is None or max_concepts is None:
        results = list(results)
        image_count = len(results)
        max_concepts = max((len(r.concepts) for r in results), default=1)
    resolution = (int(resolution[0]), int(resolution[1]))
    per_shard = max(1, min(image_count, images_per_shard))
    group = zarr.open_group(str(out_dir / STORE_NAME), mode="w")
    array = create_image_array(group, "masks", (image_count, max_concepts, *resolution), bool, per_shard)
    rows: dict[str, list] = {name: [] for name in TABLE_SCHEMA.names}
    image_ids: list[str] = []
    block = np.zeros((per_shard, max_concepts, *resolution), dtype=bool)

    def flush(end: int) -> None:
        start = (end - 1) // per_shard * per_shard
        array[start:end] = block[: end - start]
        block[...] = False

    for index, result in enumerate(results):
        if index >= image_count:
            raise StoreError(f"{out_dir}: more results than the {image_count} images announced")
        if result.masks.shape != (len(result.concepts), *resolution):
            raise StoreError(
                f"{result.image_id}: masks of shape {result.masks.shape}, expected {(len(result.concepts), *resolution)}"
            )
        if len(result.concepts) > max_concepts:
            raise StoreError(
                f"{result.image_id}: {len(result.concepts)} masks, more than the store's {max_concepts} slots"
            )
        block[index % per_shard, : len(result.concepts)] = result.masks
        image_ids.append(result.image_id)
        scores = result.scores or [None] * len(result.concepts)
        boxes = result.boxes or [None] * len(result.concepts)
        for slot, (concept, flag) in enumerate(zip(result.concepts, result.flags(), strict=True)):
            rows["image_id"].append(result.image_id)
            rows["row"].append(index)
            rows["slot"].append(slot)
            rows["class_name"].append(result.class_name)
            rows["concept"].append(concept)
            rows["area_fraction"].append(float(result.masks[slot].mean()))
            rows["score"].append(scores[slot])
            rows["boxes"].append(boxes[slot])
            rows["flag"].append(flag)
        if (index + 1) % per_shard == 0:
            flush(index + 1)
    if len(image_ids) != image_count:
        raise StoreError(f"{out_dir}: {len(image_ids)} results for the {image_count} images announced")
    if image_count % per_shard:
        flush(image_count)
    group.attrs.update(
        {
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "resolution": list(resolution),
            "max_concepts": max_concepts,
            "image_ids": image_ids,
            "provenance": provenance or {},
        }
    )
    table = pa.table(rows, schema=TABLE_SCHEMA)
    write_with(out_dir / TABLE_NAME, lambda tmp: pq.write_table(table, tmp))
    return table


class MaskStore:
    """Read access to a mask store, by image id."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        group = open_store(self.path / STORE_NAME)
        attrs = dict(group.attrs)
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path / STORE_NAME}: not a mask store of format {FORMAT_VERSION} (rerun `cft masks`)"
            )
        self.backend: str = attrs["backend"]
        self.resolution: tuple[int, int] = tuple(attrs["resolution"])  # type: ignore[assignment]
        self.image_ids: list[str] = list(attrs["image_ids"])
        self._row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._masks = open_array(self.path / STORE_NAME, "masks")  # checks that every shard file exists
        max_concepts = int(attrs["max_concepts"])
        expected = (len(self.image_ids), max_concepts, *self.resolution)
        if tuple(self._masks.shape) != expected:
            raise StoreError(
                f"{self.path / STORE_NAME}: masks of shape {tuple(self._masks.shape)}, but its attributes say {expected} (rerun `cft masks`)"
            )
        table_path = self.path / TABLE_NAME
        if not table_path.is_file():
            raise StoreError(f"{table_path}: mask table not found")
        self.table = pq.read_table(table_path)
        self.provenance: dict[str, Any] = dict(attrs.get("provenance") or {})
        rows, slots = self.table.column("row").to_numpy(), self.table.column("slot").to_numpy()
        if len(rows) and (
            rows.min() < 0 or rows.max() >= len(self.image_ids) or slots.min() < 0 or slots.max() >= max_concepts
        ):
            raise StoreError(
                f"{table_path}: rows or slots outside the store's {len(self.image_ids)} images and {max_concepts} slots (rerun `cft masks`)"
            )
        usable = np.isin(np.asarray(self.table.column("flag").to_pylist(), dtype=object), USABLE_FLAGS)
        self._usable_slots = np.zeros((len(self.image_ids), max_concepts), dtype=bool)
        self._usable_slots[rows[usable], slots[usable]] = True
        # What each stored mask must cover (unused slots: nothing), to verify every read against.
        self._areas = np.zeros((len(self.image_ids), max_concepts), dtype=np.float64)
        self._areas[rows, slots] = self.table.column("area_fraction").to_numpy(zero_copy_only=False)

    def rows(self, image_ids: list[str]) -> np.ndarray:
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise StoreError(
                f"{self.path}: no masks for {len(missing)} image(s), e.g. {missing[:3]} (rerun `cft masks`)"
            )
        return np.array([self._row[i] for i in image_ids], dtype=np.int64)

    def concept_masks(self, image_ids: list[str]) -> np.ndarray:
        """(n, K, H, W) bool: each image's per-concept masks (unused slots False), verified against
        the table: a mask whose area differs from its ``area_fraction`` by a pixel or more is an error."""
        rows = self.rows(image_ids)
        masks = read_rows(self._masks, rows)
        pixels = max(1, self.resolution[0] * self.resolution[1])
        areas = masks.reshape(*masks.shape[:2], -1).sum(axis=2) / pixels
        wrong = np.abs(areas - self._areas[rows]) >= 0.5 / pixels
        if wrong.any():
            image, slot = (int(i) for i in np.argwhere(wrong)[0])
            raise DamagedStoreError(
                f"{self.path / STORE_NAME}: the masks of {int(wrong.any(axis=1).sum())} image(s) differ from {TABLE_NAME}, "
                f"e.g. {image_ids[image]} slot {slot} covers {areas[image, slot]:.4f} of the image, the table says {self._areas[rows[image], slot]:.4f}; "
                "the store is damaged or from another run (rerun `cft masks`)"
            )
        return masks

    def usable_slots(self, image_ids: list[str]) -> np.ndarray:
        """(n, K) bool: which slots hold a usable mask (flag ok or fallback)."""
        return self._usable_slots[self.rows(image_ids)]

    def usable(self, image_ids: list[str]) -> np.ndarray:
        """(n,) bool: images with at least one usable mask."""
        return self.usable_slots(image_ids).any(axis=1)

    def union(self, image_ids: list[str]) -> np.ndarray:
        """(n, H, W) bool: the union of each image's usable masks (QC-flagged slots left out)."""
        masks = self.concept_masks(image_ids)
        return (masks & self.usable_slots(image_ids)[:, :, None, None]).any(axis=1)

    def flags(self) -> dict[str, int]:
        values, counts = np.unique(np.asarray(self.table.column("flag").to_pylist(), dtype=object), return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts, strict=True)}
