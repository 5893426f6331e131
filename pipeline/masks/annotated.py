"""The ``annotated`` mask backend: concept masks from part annotations that come with the data.

The world's images carry a part label map (0 = background, k = the class's k-th part); a concept
is matched to a part by name (case-insensitive). A concept without an annotated part gets an
empty mask flagged ``no_annotation``, never an error mid-run: the QC table reports it.

With ``masks.annotated.noise`` > 0 the exact masks are degraded the way Grounded-SAM errs
(:mod:`pipeline.masks.noise`): a part the simulated detector misses gets an empty mask flagged
``no_box`` (as with grounded_sam; ``no_annotation`` stays for concepts the data cannot annotate), and
the table's ``boxes`` column holds 1 for a found part, 0 for a missed one (null: nothing to find).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data.array_store import StoreError
from pipeline.data.datasets import has_image_files, read_arrays, rows_by_id
from pipeline.masks.noise import concept_rng, degrade_mask
from pipeline.masks.store import ImageMasks

if TYPE_CHECKING:
    from pipeline.config.masks import AnnotatedMasksConfig

PART_CATALOG = "world.json"
FALLBACK_CONCEPT = "whole object"


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) masks or label maps; keeps the dtype."""
    size = tuple(size)
    if masks.shape[-2:] == size:
        return masks
    flat = torch.from_numpy(masks.reshape(-1, 1, *masks.shape[-2:]).astype(np.float32))
    resized = F.interpolate(flat, size=size, mode="nearest").numpy()
    return resized.reshape(*masks.shape[:-2], *size).astype(masks.dtype)


def annotated_masks(
    dataset_dir: str | Path,
    manifest: pa.Table,
    image_ids: list[str],
    concepts: dict[str, list[str]],
    resolution: int | None,
    on_all_missing: str = "object",
    progress: bool = True,
    noise: AnnotatedMasksConfig | None = None,
) -> tuple[list[ImageMasks], tuple[int, int]]:
    """Concept masks from the part label maps; ``on_all_missing: object`` adds the whole object
    (all parts) as a fallback slot to an image none of whose concepts is annotated or visible.
    ``noise`` (``masks.annotated``) degrades each mask, the fallback included, at the label map's
    own resolution before resizing (see :mod:`pipeline.masks.noise`); None or noise 0: exact masks."""
    dataset_dir = Path(dataset_dir)
    catalog_path = dataset_dir / PART_CATALOG
    if not catalog_path.is_file():
        what = (
            "an image folder (data.source: imagefolder), which brings images only"
            if has_image_files(manifest)
            else "a dataset without part annotations"
        )
        raise StoreError(
            f"{dataset_dir}: masks.backend: annotated needs part annotations that come with the data (the built-in world, "
            f"data.source: world), but this is {what}. For image folders set masks.backend: grounded_sam, which segments "
            "each concept with GroundingDINO and SAM (see docs/grounded-sam.md)"
        )
    part_names: dict[str, list[str]] = json.loads(catalog_path.read_text())["concepts"]
    rows = rows_by_id(manifest, image_ids, str(dataset_dir / "manifest.parquet"))
    labels = read_arrays(dataset_dir, rows, "part_labels")
    size = (resolution, resolution) if resolution else labels.shape[1:3]
    class_names = rows.column("class_name").to_pylist()
    level, seed = (noise.noise, noise.seed) if noise is not None else (0.0, 0)

    def degrade(exact: np.ndarray, image_id: str, concept: str) -> tuple[np.ndarray, int | None]:
        """The mask as Grounded-SAM might give it at noise ``level``, and its simulated box count
        (1 found, 0 missed: flag ``no_box``; None: nothing to find, the part is not in the image)."""
        if not exact.any():
            return exact, None
        mask, missed = degrade_mask(exact, level, concept_rng(seed, image_id, concept))
        return mask, 0 if missed else 1

    results = []
    for image_id, class_name, label_map in tqdm(
        zip(image_ids, class_names, labels, strict=True), total=len(image_ids), desc="masks", disable=not progress
    ):
        parts = [name.lower() for name in part_names.get(class_name, [])]
        wanted = concepts.get(class_name, [])
        masks = np.zeros((len(wanted), *label_map.shape), dtype=bool)
        missing = []
        boxes: list[int | None] = [None] * len(wanted)
        for slot, concept in enumerate(wanted):
            found = concept.lower() in parts
            missing.append(not found)
            if found:
                masks[slot] = label_map == parts.index(concept.lower()) + 1
                if level > 0:
                    masks[slot], boxes[slot] = degrade(masks[slot], image_id, concept)
        kept_boxes = boxes if level > 0 else []  # noise 0: no detector simulated, the table's boxes stay null
        result = ImageMasks(
            image_id, class_name, list(wanted), resize_masks(masks, size), boxes=kept_boxes, missing=missing
        )
        if on_all_missing == "object" and not result.usable():
            whole, whole_boxes = label_map > 0, None
            if level > 0:
                whole, whole_boxes = degrade(whole, image_id, FALLBACK_CONCEPT)
            result = ImageMasks(
                image_id,
                class_name,
                [*wanted, FALLBACK_CONCEPT],
                np.concatenate([result.masks, resize_masks(whole[None], size)]),
                boxes=[*kept_boxes, whole_boxes] if level > 0 else [],
                missing=[*missing, False],
                fallback=True,
            )
        results.append(result)
    return results, size
