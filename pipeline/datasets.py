"""Loading manifest splits into memory as arrays (the world is small enough to hold whole)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.array_store import StoreError, open_array, read_rows
from pipeline.manifest import read_manifest, split_rows


@dataclass
class ArraySplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _read_images(manifest_dir: Path, rows: pa.Table) -> np.ndarray:
    sources = rows.column("source").to_numpy(zero_copy_only=False)
    indices = rows.column("source_index").to_numpy()
    images: np.ndarray | None = None
    for source in dict.fromkeys(sources):
        where = np.flatnonzero(sources == source)
        if (indices[where] < 0).any():
            raise StoreError(f"{manifest_dir / source}: image-file sources are not readable by the array loader")
        array = open_array(manifest_dir / Path(source).parent, f"{Path(source).name}/images")
        block = read_rows(array, indices[where])
        if images is None:
            images = np.empty((rows.num_rows, *block.shape[1:]), dtype=block.dtype)
        images[where] = block
    assert images is not None
    return images


def load_split(manifest_path: str | Path, split: str, table: pa.Table | None = None) -> ArraySplit:
    """All images and labels of ``split``, in manifest order."""
    manifest_path = Path(manifest_path)
    table = table if table is not None else read_manifest(manifest_path)
    rows = split_rows(table, split)
    return ArraySplit(
        images=_read_images(manifest_path.parent, rows),
        labels=rows.column("class_index").to_numpy().astype(np.int64),
        image_ids=rows.column("image_id").to_pylist(),
    )
