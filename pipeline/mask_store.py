"""The mask store: one binary mask per (fine-tuning image, concept of its class).

Layout of the artifact directory (every mask backend writes exactly this)::

    masks.zarr/                 zarr 3 group
        masks                   bool (N, K, H, W); chunk = one image (1, K, H, W), sharded
                                (512 images per shard file, which keeps DVC transfers fast);
                                slot k of row n is the k-th concept of image n's class; unused
                                slots (classes with fewer than K concepts) are all False
        attrs: format_version, backend, resolution [H, W], max_concepts K,
               image_ids (row order, = the manifest's image ids)
    masks.parquet               one row per (image, concept slot):
        image_id, row (int64), slot (int32), class_name, concept,
        area_fraction (float32), score (float32, null if the backend has none),
        flag: ok | empty (nothing found) | full (covers > 95 % of the image) | no_annotation

Readers open single rows (one chunk per image), never the whole store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.array_store import StoreError, open_array, open_store, read_rows, write_image_array
from pipeline.atomic import write_with

STORE_NAME = "masks.zarr"
TABLE_NAME = "masks.parquet"
FORMAT_VERSION = 1
FULL_AREA = 0.95
TABLE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("row", pa.int64()),
        ("slot", pa.int32()),
        ("class_name", pa.string()),
        ("concept", pa.string()),
        ("area_fraction", pa.float32()),
        ("score", pa.float32()),
        ("flag", pa.string()),
    ]
)


@dataclass
class ImageMasks:
    """A backend's result for one image: one mask per concept of its class, in concept order."""

    image_id: str
    class_name: str
    concepts: list[str]
    masks: np.ndarray  # (len(concepts), H, W) bool
    scores: list[float | None] = field(default_factory=list)
    missing: list[bool] = field(default_factory=list)  # True: the backend has no way to find this concept


def _flag(area: float, missing: bool) -> str:
    if missing:
        return "no_annotation"
    if area == 0.0:
        return "empty"
    return "full" if area > FULL_AREA else "ok"


def write_mask_store(out_dir: str | Path, results: list[ImageMasks], resolution: tuple[int, int], backend: str) -> pa.Table:
    """Write the store and its table into ``out_dir``; returns the table (the QC report)."""
    out_dir = Path(out_dir)
    max_concepts = max((len(r.concepts) for r in results), default=1)
    stacked = np.zeros((len(results), max_concepts, *resolution), dtype=bool)
    rows: dict[str, list] = {name: [] for name in TABLE_SCHEMA.names}
    for index, result in enumerate(results):
        if result.masks.shape != (len(result.concepts), *resolution):
            raise StoreError(f"{result.image_id}: masks of shape {result.masks.shape}, expected {(len(result.concepts), *resolution)}")
        stacked[index, : len(result.concepts)] = result.masks
        scores = result.scores or [None] * len(result.concepts)
        missing = result.missing or [False] * len(result.concepts)
        for slot, concept in enumerate(result.concepts):
            area = float(result.masks[slot].mean())
            rows["image_id"].append(result.image_id)
            rows["row"].append(index)
            rows["slot"].append(slot)
            rows["class_name"].append(result.class_name)
            rows["concept"].append(concept)
            rows["area_fraction"].append(area)
            rows["score"].append(scores[slot])
            rows["flag"].append(_flag(area, missing[slot]))
    group = zarr.open_group(str(out_dir / STORE_NAME), mode="w")
    group.attrs.update(
        {
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "resolution": list(resolution),
            "max_concepts": max_concepts,
            "image_ids": [r.image_id for r in results],
        }
    )
    write_image_array(group, "masks", stacked)
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
            raise StoreError(f"{self.path / STORE_NAME}: not a mask store of format {FORMAT_VERSION}")
        self.backend: str = attrs["backend"]
        self.resolution: tuple[int, int] = tuple(attrs["resolution"])  # type: ignore[assignment]
        self.image_ids: list[str] = list(attrs["image_ids"])
        self._row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._masks = open_array(self.path / STORE_NAME, "masks")
        table_path = self.path / TABLE_NAME
        if not table_path.is_file():
            raise StoreError(f"{table_path}: mask table not found")
        self.table = pq.read_table(table_path)

    def rows(self, image_ids: list[str]) -> np.ndarray:
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise StoreError(f"{self.path}: no masks for {len(missing)} image(s), e.g. {missing[:3]} (rerun `cft masks`)")
        return np.array([self._row[i] for i in image_ids], dtype=np.int64)

    def concept_masks(self, image_ids: list[str]) -> np.ndarray:
        """(n, K, H, W) bool: each image's per-concept masks (unused slots False)."""
        return read_rows(self._masks, self.rows(image_ids))

    def union(self, image_ids: list[str]) -> np.ndarray:
        """(n, H, W) bool: the union of each image's concept masks."""
        return self.concept_masks(image_ids).any(axis=1)

    def flags(self) -> dict[str, int]:
        values, counts = np.unique(np.asarray(self.table.column("flag").to_pylist(), dtype=object), return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts, strict=True)}
