"""The ``annotated`` mask backend: concept masks from part annotations that come with the data.

The world's images carry a part label map (0 = background, k = the class's k-th part); a concept
is matched to a part by name (case-insensitive). A concept without an annotated part gets an
empty mask flagged ``no_annotation``, never an error mid-run: the QC table reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from PIL import Image

from pipeline.array_store import StoreError
from pipeline.datasets import load_images, read_arrays, rows_by_id
from pipeline.mask_store import ImageMasks
from pipeline.visualize import concept_label_map, contact_sheet

PART_CATALOG = "world.json"


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) masks or label maps; keeps the dtype."""
    size = tuple(size)
    if masks.shape[-2:] == size:
        return masks
    flat = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:]).astype(np.float32))
    resized = F.interpolate(flat, size=size, mode="nearest").numpy()
    return resized.reshape(*masks.shape[:-2], *size).astype(masks.dtype)


def annotated_masks(dataset_dir: str | Path, manifest: pa.Table, image_ids: list[str], concepts: dict[str, list[str]], resolution: int | None, progress: bool = True) -> tuple[list[ImageMasks], tuple[int, int]]:
    dataset_dir = Path(dataset_dir)
    catalog_path = dataset_dir / PART_CATALOG
    if not catalog_path.is_file():
        raise StoreError(f"{catalog_path}: the dataset has no part annotations; the 'annotated' mask backend needs them")
    part_names: dict[str, list[str]] = json.loads(catalog_path.read_text())["concepts"]
    rows = rows_by_id(manifest, image_ids, str(dataset_dir / "manifest.parquet"))
    labels = read_arrays(dataset_dir, rows, "part_labels")
    size = (resolution, resolution) if resolution else labels.shape[1:3]
    class_names = rows.column("class_name").to_pylist()
    results = []
    for image_id, class_name, label_map in tqdm(zip(image_ids, class_names, labels, strict=True), total=len(image_ids), desc="masks", disable=not progress):
        parts = [name.lower() for name in part_names.get(class_name, [])]
        wanted = concepts.get(class_name, [])
        masks = np.zeros((len(wanted), *label_map.shape), dtype=bool)
        missing = []
        for slot, concept in enumerate(wanted):
            found = concept.lower() in parts
            missing.append(not found)
            if found:
                masks[slot] = label_map == parts.index(concept.lower()) + 1
        results.append(ImageMasks(image_id, class_name, wanted, resize_masks(masks, size), missing=missing))
    return results, size


def mask_sheet(dataset_dir: str | Path, manifest: pa.Table, results: list[ImageMasks]) -> Image.Image:
    """Contact sheet of images over their concept masks (colour = concept slot), captioned by class."""
    images = load_images(Path(dataset_dir) / "manifest.parquet", [r.image_id for r in results], manifest).images
    labels = np.stack([resize_masks(concept_label_map(r.masks), images.shape[1:3]) for r in results])
    return contact_sheet(images, [r.class_name for r in results], labels=labels)
