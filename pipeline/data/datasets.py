"""Loading manifest rows into memory as arrays at the model's input size.

Array-store rows (the world) are already at the model's size. Image-file rows (image folders) are
decoded and passed through the model's own evaluation transform (:mod:`pipeline.data.preprocess`);
the fine-tuning subset is small (a few images per class), so it is held whole.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.data.array_store import StoreError, open_array, read_rows
from pipeline.data.manifest import read_manifest, split_rows

if TYPE_CHECKING:
    from pipeline.data.preprocess import InputTransform


@dataclass
class ArraySplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def read_arrays(manifest_dir: Path, rows: pa.Table, name: str = "images") -> np.ndarray:
    """Array ``name`` (``images``, or ``part_labels`` for annotated sources) for each row, in row order."""
    sources = rows.column("source").to_numpy(zero_copy_only=False)
    indices = rows.column("source_index").to_numpy()
    images: np.ndarray | None = None
    if rows.num_rows == 0:
        raise StoreError(f"{manifest_dir}: no rows to read")
    for source in dict.fromkeys(sources):
        where = np.flatnonzero(sources == source)
        if (indices[where] < 0).any():
            raise StoreError(f"{manifest_dir / source}: image-file sources are not readable by the array loader")
        array = open_array(manifest_dir / Path(source).parent, f"{Path(source).name}/{name}")
        block = read_rows(array, indices[where])
        if images is None:
            images = np.empty((rows.num_rows, *block.shape[1:]), dtype=block.dtype)
        images[where] = block
    assert images is not None
    return images


def has_image_files(rows: pa.Table) -> bool:
    return bool((rows.column("source_index").to_numpy() < 0).any())


def read_images(manifest_dir: Path, rows: pa.Table, transform: InputTransform | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 for ``rows``: array sources as stored, image files through ``transform``."""
    if not has_image_files(rows):
        return read_arrays(manifest_dir, rows)
    if transform is None:
        raise StoreError(f"{manifest_dir}: image-file rows need the model's input transform to be stacked")
    decoded = load_image_list(manifest_dir, rows, transform)
    return np.stack(decoded) if decoded else np.zeros((0, transform.size, transform.size, 3), dtype=np.uint8)


def load_split(
    manifest_path: str | Path, split: str, table: pa.Table | None = None, transform: InputTransform | None = None
) -> ArraySplit:
    """All images and labels of ``split``, in manifest order."""
    manifest_path = Path(manifest_path)
    table = table if table is not None else read_manifest(manifest_path)
    rows = split_rows(table, split)
    return ArraySplit(
        images=read_images(manifest_path.parent, rows, transform),
        labels=rows.column("class_index").to_numpy().astype(np.int64),
        image_ids=rows.column("image_id").to_pylist(),
    )


# The part-label value of a cue (the world's sticker): inside the object's outline, none of its parts.
CUE_LABEL = 255


def object_masks(manifest_dir: Path, rows: pa.Table) -> np.ndarray:
    """(N, H, W) bool whole-object masks of part-annotated sources (StoreError when there are none)."""
    return read_arrays(manifest_dir, rows, "part_labels") > 0


def object_and_cue_masks(manifest_dir: Path, rows: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Whole-object masks (cue included) and cue masks, (N, H, W) bool; cue masks None when no image has a cue."""
    labels = read_arrays(manifest_dir, rows, "part_labels")
    cues = labels == CUE_LABEL
    return labels > 0, cues if cues.any() else None


def rows_by_id(table: pa.Table, image_ids: list[str], name: str = "manifest") -> pa.Table:
    """The manifest rows of ``image_ids``, in that order; unknown ids are an error naming them."""
    position = {image_id: i for i, image_id in enumerate(table.column("image_id").to_pylist())}
    missing = [image_id for image_id in image_ids if image_id not in position]
    if missing:
        raise StoreError(f"{name}: {len(missing)} image id(s) not in the manifest, e.g. {missing[:3]}")
    return table.take(pa.array([position[image_id] for image_id in image_ids], type=pa.int64()))


def load_images(
    manifest_path: str | Path,
    image_ids: list[str],
    table: pa.Table | None = None,
    transform: InputTransform | None = None,
) -> ArraySplit:
    """Images and labels of ``image_ids`` (any splits), in that order."""
    manifest_path = Path(manifest_path)
    table = table if table is not None else read_manifest(manifest_path)
    rows = rows_by_id(table, image_ids, str(manifest_path))
    return ArraySplit(
        images=read_images(manifest_path.parent, rows, transform),
        labels=rows.column("class_index").to_numpy().astype(np.int64),
        image_ids=list(image_ids),
    )


def decode_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grayscale, CMYK, palette and alpha images converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise StoreError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # PIL's truncated/corrupt files raise OSError
        raise StoreError(f"{path}: not a readable image ({exc})") from None


def load_image_list(manifest_dir: Path, rows: pa.Table, transform: InputTransform | None = None) -> list[np.ndarray]:
    """Each row's image, in row order, at its own size (image files through ``transform`` when
    given): array sources and image files alike. Files are decoded by a few threads (PIL releases
    the GIL while decoding)."""
    indices = rows.column("source_index").to_numpy()
    sources = rows.column("source").to_pylist()
    images: list[np.ndarray | None] = [None] * rows.num_rows
    in_arrays = np.flatnonzero(indices >= 0)
    if len(in_arrays):
        for position, image in zip(in_arrays, read_arrays(manifest_dir, rows.take(pa.array(in_arrays))), strict=True):
            images[position] = image

    def decode(position: int) -> np.ndarray:
        image = decode_image(manifest_dir / sources[position])
        return image if transform is None else transform.image(image)

    files = np.flatnonzero(indices < 0).tolist()
    with ThreadPoolExecutor(max_workers=4) as pool:
        for position, image in zip(files, pool.map(decode, files), strict=True):
            images[position] = image
    return images  # type: ignore[return-value]
