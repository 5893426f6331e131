"""Building the whole world artifact: array store, manifest, contact sheets and a summary."""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import zarr
from tqdm import tqdm

from pipeline.data.array_store import write_image_array
from pipeline.data.datasets import CUE_LABEL
from pipeline.data.manifest import build_manifest, write_manifest
from pipeline.data.world import backgrounds
from pipeline.data.world.classes import concept_catalog, resolve_classes
from pipeline.data.world.generate import class_assignment, render_sample
from pipeline.data.world.splits import WORLD_SPLITS
from pipeline.reports.charts import contact_sheet, save_png
from pipeline.utils.atomic import write_json

if TYPE_CHECKING:
    from pipeline.config.data import PrepareConfig, WorldConfig

STORE_NAME = "world.zarr"
MANIFEST_NAME = "manifest.parquet"
CHUNK = 250
WORLD_EXTRA_COLUMNS = {
    "background_class": pa.int32(),
    "cue_class": pa.int32(),
    "rendering": pa.string(),
    "factor": pa.string(),
    "factor_value": pa.float64(),
    "variant": pa.string(),
}


@dataclass
class RenderedSplit:
    images: np.ndarray
    part_labels: np.ndarray
    class_index: np.ndarray
    background_class: np.ndarray
    cue_class: np.ndarray
    rendering: list[str]
    factor: list[str]
    factor_value: np.ndarray
    variant: list[str]


def _render_chunk(config: WorldConfig, split: str, start: int, class_indices: np.ndarray, seed: int) -> RenderedSplit:
    classes = resolve_classes(config.classes)
    if split == backgrounds.SPLIT:
        samples = backgrounds.render_images(config, classes, start, class_indices, seed)
    else:
        samples = [
            render_sample(config, classes, split, start + offset, int(class_index), seed)
            for offset, class_index in enumerate(class_indices)
        ]
    return RenderedSplit(
        images=np.stack([s.image for s in samples]),
        part_labels=np.stack([s.part_labels for s in samples]),
        class_index=np.array([s.class_index for s in samples], dtype=np.int32),
        background_class=np.array([s.background_class for s in samples], dtype=np.int32),
        cue_class=np.array([s.cue_class for s in samples], dtype=np.int32),
        rendering=[s.rendering for s in samples],
        factor=[s.factor for s in samples],
        factor_value=np.array([s.factor_value for s in samples], dtype=np.float64),
        variant=[s.variant for s in samples],
    )


def render_split(config: WorldConfig, split: str, count: int, seed: int, workers: int) -> RenderedSplit:
    num_classes = len(resolve_classes(config.classes))
    if split == backgrounds.SPLIT:
        assignment = backgrounds.scene_classes(seed, count, num_classes)
    else:
        assignment = class_assignment(seed, split, count, num_classes)
    starts = list(range(0, count, CHUNK))
    jobs = [(config, split, start, assignment[start : start + CHUNK], seed) for start in starts]
    parts: list[RenderedSplit] = []
    with tqdm(total=count, desc=f"world/{split}", unit="img", leave=False) as bar, contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            chunks = stack.enter_context(ProcessPoolExecutor(max_workers=workers)).map(
                _render_chunk, *zip(*jobs, strict=True)
            )
        else:
            chunks = map(_render_chunk, *zip(*jobs, strict=True))
        for chunk in chunks:
            parts.append(chunk)
            bar.update(len(chunk.class_index))
    return RenderedSplit(
        images=np.concatenate([p.images for p in parts]),
        part_labels=np.concatenate([p.part_labels for p in parts]),
        class_index=np.concatenate([p.class_index for p in parts]),
        background_class=np.concatenate([p.background_class for p in parts]),
        cue_class=np.concatenate([p.cue_class for p in parts]),
        rendering=[r for p in parts for r in p.rendering],
        factor=[f for p in parts for f in p.factor],
        factor_value=np.concatenate([p.factor_value for p in parts]),
        variant=[v for p in parts for v in p.variant],
    )


def build_world(config: PrepareConfig, out_dir: Path, workers: int | None = None) -> dict[str, Any]:
    """Write the world into ``out_dir`` (expected empty: callers stage it atomically). Returns a summary."""
    world = config.world
    classes = resolve_classes(world.classes)
    class_names = [cls.name for cls in classes]
    workers = workers or min(4, os.cpu_count() or 1)
    store = zarr.open_group(str(out_dir / STORE_NAME), mode="w")
    store.attrs.update(
        {
            "classes": class_names,
            "part_names": concept_catalog(classes),
            "image_size": world.image_size,
            "seed": config.seed,
            "layout": f"<split>/images (N,H,W,3) uint8; <split>/part_labels (N,H,W) uint8, 0 = background, k = part k-1, {CUE_LABEL} = the cue",
        }
    )
    columns: dict[str, list] = {
        name: []
        for name in ["image_id", "source", "source_index", "class_index", "class_name", "split", *WORLD_EXTRA_COLUMNS]
    }
    summary: dict[str, Any] = {"classes": class_names, "splits": {}}
    for split in (s for s in WORLD_SPLITS if world.split_sizes.get(s, 0) > 0):
        count = world.split_sizes[split]
        rendered = render_split(world, split, count, config.seed, workers)
        group = store.create_group(split)
        write_image_array(group, "images", rendered.images)
        write_image_array(group, "part_labels", rendered.part_labels)
        columns["image_id"] += [f"{split}/{i:06d}" for i in range(count)]
        columns["source"] += [f"{STORE_NAME}/{split}"] * count
        columns["source_index"] += list(range(count))
        columns["class_index"] += rendered.class_index.tolist()
        columns["class_name"] += [class_names[k] for k in rendered.class_index]
        columns["split"] += [split] * count
        columns["background_class"] += rendered.background_class.tolist()
        columns["cue_class"] += rendered.cue_class.tolist()
        columns["rendering"] += rendered.rendering
        columns["factor"] += [f or None for f in rendered.factor]
        columns["factor_value"] += [None if math.isnan(v) else float(v) for v in rendered.factor_value]
        columns["variant"] += [v or None for v in rendered.variant]
        has_background = rendered.background_class >= 0
        has_cue = rendered.cue_class >= 0
        summary["splits"][split] = {
            "images": count,
            "background_matches_class": float(
                np.mean(rendered.background_class[has_background] == rendered.class_index[has_background])
            )
            if has_background.any()
            else None,
            "cue_matches_class": float(np.mean(rendered.cue_class[has_cue] == rendered.class_index[has_cue]))
            if has_cue.any()
            else None,
            "cue_images": float(np.mean(has_cue)),
            "object_area_fraction": float(np.mean(rendered.part_labels > 0)),
            "cue_area_fraction": float(np.mean(rendered.part_labels == CUE_LABEL)),
        }
        shown = min(count, 28 if split == backgrounds.SPLIT else 24)  # four whole scenes
        sheet = contact_sheet(
            rendered.images[:shown],
            [
                f"{class_names[k]} / {rendered.variant[i] or rendered.rendering[i]}"
                for i, k in enumerate(rendered.class_index[:shown])
            ],
            labels=rendered.part_labels[:shown],
        )
        save_png(sheet, out_dir / "contact_sheets" / f"{split}.png")
    write_manifest(out_dir / MANIFEST_NAME, build_manifest(columns, class_names, WORLD_EXTRA_COLUMNS))
    write_json(
        out_dir / "world.json",
        {"classes": class_names, "concepts": concept_catalog(classes), "config": config.model_dump()},
    )
    return summary
