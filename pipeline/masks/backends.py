"""`cft masks` behind one interface: pick the backend, stream its results into the mask store,
draw the contact sheet, and summarise the QC flags."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.concepts.store import read_concepts
from pipeline.data.datasets import has_image_files, load_image_list, rows_by_id
from pipeline.data.manifest import read_manifest
from pipeline.data.subset import SUBSET_NAME, read_subset, subset_ids
from pipeline.masks.store import USABLE_FLAGS, ImageMasks, write_mask_store
from pipeline.reports.charts import concept_sheet, save_png
from pipeline.utils.distributed import Ranks

if TYPE_CHECKING:
    from pipeline.config.masks import MasksConfig


@dataclass
class MaskSummary:
    images: int
    masks: int
    resolution: tuple[int, int]
    flags: dict[str, int]
    unusable_images: list[str]
    provenance: dict[str, Any]


def build_mask_store(
    config: MasksConfig,
    dataset_dir: Path,
    subset_dir: Path,
    concepts_dir: Path,
    out_dir: Path,
    work_dir: Path,
    sheet_path: Path | None,
    sheet_images: int = 24,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> MaskSummary | None:
    """Write the mask store of the subset's fine-tuning images into ``out_dir`` (a staging directory).

    Under several ``ranks`` (torchrun), every rank segments its share of the grounded_sam parts and
    the main rank writes the store; the others return None without touching ``out_dir``."""
    ranks = ranks or Ranks()
    if config.backend == "annotated" and not ranks.main:
        return None  # read from the dataset in one pass: nothing to share
    subset, _ = read_subset(subset_dir / SUBSET_NAME)
    manifest = read_manifest(dataset_dir / "manifest.parquet")
    image_ids = subset_ids(subset, "finetune")
    rows = rows_by_id(manifest, image_ids, str(dataset_dir / "manifest.parquet"))
    class_names = rows.column("class_name").to_pylist()
    concepts = read_concepts(concepts_dir)

    def load_images(ids: list[str]) -> list[np.ndarray]:
        return load_image_list(dataset_dir, rows_by_id(manifest, ids))

    if config.backend == "annotated":
        from pipeline.masks.annotated import annotated_masks

        results, resolution = annotated_masks(
            dataset_dir,
            manifest,
            image_ids,
            concepts,
            config.resolution,
            config.on_all_missing,
            progress,
            noise=config.annotated,
        )
        stream: Iterator[ImageMasks] = iter(results)
        slots = max((len(r.concepts) for r in results), default=1)
        provenance: dict[str, Any] = {"source": "the dataset's part annotations"}
        if config.annotated.noise > 0:  # noise 0 leaves the store exactly as without the option
            provenance.update({"simulated_noise": config.annotated.noise, "noise_seed": config.annotated.seed})
    else:
        from pipeline.masks.grounded import grounded_sam_masks, load_grounded_sam, slot_count

        if config.resolution is None:
            _check_one_size(dataset_dir, rows)  # before the models load, not at the first odd image
        models = load_grounded_sam(config)
        resolution = (
            (config.resolution, config.resolution)
            if config.resolution
            else tuple(load_images(image_ids[:1])[0].shape[:2])
        )
        stream = grounded_sam_masks(
            models, config, image_ids, class_names, concepts, load_images, resolution, work_dir, progress, ranks
        )
        if not ranks.main:
            for _ in stream:  # segments this rank's parts; yields nothing here
                pass
            return None
        slots = slot_count(config, class_names, concepts)
        grounding = config.grounded_sam.grounding
        provenance = {
            **models.provenance,
            "box_threshold": grounding.box_threshold,
            "text_threshold": grounding.text_threshold,
            "max_boxes": grounding.max_boxes,
        }
    provenance["on_all_missing"] = config.on_all_missing

    shown = (
        set(np.linspace(0, len(image_ids) - 1, min(sheet_images, len(image_ids))).round().astype(int).tolist())
        if image_ids
        else set()
    )
    sample: list[ImageMasks] = []

    def keep_sample(results: Iterator[ImageMasks]) -> Iterator[ImageMasks]:
        for index, result in enumerate(results):
            if index in shown:
                sample.append(result)
            yield result

    table = write_mask_store(
        out_dir,
        keep_sample(stream),
        resolution,
        config.backend,
        image_count=len(image_ids),
        max_concepts=slots,
        provenance=provenance,
    )
    if sheet_path is not None and sample:
        save_png(concept_sheet(load_images([r.image_id for r in sample]), sample), sheet_path)
    flags = table.column("flag").to_pylist()
    usable = {
        image_id
        for image_id, flag in zip(table.column("image_id").to_pylist(), flags, strict=True)
        if flag in USABLE_FLAGS
    }
    return MaskSummary(
        images=len(image_ids),
        masks=table.num_rows,
        resolution=resolution,
        flags={flag: flags.count(flag) for flag in sorted(set(flags))},
        unusable_images=[i for i in image_ids if i not in usable],
        provenance=provenance,
    )


def _check_one_size(dataset_dir: Path, rows: pa.Table) -> None:
    """Masks without ``masks.resolution`` are stored at the images' size, so all must share it."""
    from PIL import Image

    if not has_image_files(rows):
        return  # array sources (the world) are stacked, hence one size
    first: tuple[str, tuple[int, int]] | None = None
    for source, index in zip(rows.column("source").to_pylist(), rows.column("source_index").to_pylist(), strict=True):
        if index >= 0:
            continue
        with Image.open(dataset_dir / source) as image:  # reads the header only
            size = image.size
        if first is None:
            first = (source, size)
        elif size != first[1]:
            raise ValueError(
                f"{dataset_dir / source}: {size[0]}x{size[1]} pixels, unlike {first[0]}'s {first[1][0]}x{first[1][1]}; "
                "set masks.resolution (e.g. 224) to store every mask at one size"
            )
