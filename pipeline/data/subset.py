"""The fine-tuning subset: which classes are fine-tuned on ("seen"), and which images.

``subset.parquet`` has one row per chosen image:

===========  ======  ==============================================================
column       type    meaning
===========  ======  ==============================================================
image_id     string  the manifest's image id
class_index  int32   as in the manifest
class_name   string
role         string  ``finetune`` (trained on) or ``val`` (picks the best epoch)
seen         bool    whether the image's class is fine-tuned on
===========  ======  ==============================================================

The schema metadata ``cft.subset`` (JSON) records the seen and unseen class names and the
config that drew them, so every later stage (and a reader of the artifact) knows the split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.manifest import classes_of, split_rows
from pipeline.utils.atomic import write_with
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.data import SubsetConfig

SUBSET_NAME = "subset.parquet"
METADATA_KEY = b"cft.subset"


class SubsetError(CftError):
    """A subset that cannot be drawn or read; names the split or file."""


def seen_class_count(num_classes: int, seen_fraction: float) -> int:
    return min(num_classes - 1, max(1, round(num_classes * seen_fraction)))


def _draw(
    rows: pa.Table, class_index: int, count: int, rng: np.random.Generator, split: str, class_name: str
) -> list[int]:
    candidates = np.flatnonzero(rows.column("class_index").to_numpy() == class_index)
    if len(candidates) < count:
        raise SubsetError(f"split '{split}' has {len(candidates)} images of class '{class_name}', {count} are needed")
    return sorted(rng.permutation(candidates)[:count].tolist())


def _seen_rng(config: SubsetConfig) -> np.random.Generator:
    return np.random.default_rng([config.seed, 0x5B5E7])


def draw_seen_classes(num_classes: int, config: SubsetConfig) -> list[int]:
    """The seeded, sorted indices of the classes fine-tuned on."""
    return sorted(
        _seen_rng(config).permutation(num_classes)[: seen_class_count(num_classes, config.seen_fraction)].tolist()
    )


def select_subset(manifest: pa.Table, config: SubsetConfig) -> pa.Table:
    """Draw the subset reproducibly from ``config.seed`` (independent of the data seed)."""
    classes = classes_of(manifest)
    splits = set(manifest.column("split").to_pylist())
    for split in (config.split, config.val_split):
        if split not in splits:
            raise SubsetError(f"data.subset: split '{split}' is not in the dataset (splits: {sorted(splits)})")
    rng = _seen_rng(config)
    seen = sorted(rng.permutation(len(classes))[: seen_class_count(len(classes), config.seen_fraction)].tolist())
    train_rows, val_rows = split_rows(manifest, config.split), split_rows(manifest, config.val_split)
    picked = [
        train_rows.take(_draw(train_rows, index, config.images_per_class, rng, config.split, classes[index]))
        for index in seen
    ]
    picked += [
        val_rows.take(_draw(val_rows, index, config.val_images_per_class, rng, config.val_split, classes[index]))
        for index in range(len(classes))
    ]
    roles = ["finetune"] * len(seen) + ["val"] * len(classes)
    return _table(classes, seen, picked, roles, config)


def subset_table(manifest: pa.Table, seen: list[int], config: SubsetConfig) -> pa.Table:
    """The subset of a manifest that holds only chosen images: split ``train`` is fine-tuned on, ``val`` validates."""
    classes = classes_of(manifest)
    return _table(
        classes, seen, [split_rows(manifest, "train"), split_rows(manifest, "val")], ["finetune", "val"], config
    )


def _table(
    classes: list[str], seen: list[int], picked: list[pa.Table], roles: list[str], config: SubsetConfig
) -> pa.Table:
    columns: dict[str, list[Any]] = {"image_id": [], "class_index": [], "class_name": [], "role": [], "seen": []}
    seen_set = set(seen)
    for rows, role in zip(picked, roles, strict=True):
        indices = rows.column("class_index").to_pylist()
        columns["image_id"] += rows.column("image_id").to_pylist()
        columns["class_index"] += indices
        columns["class_name"] += [classes[i] for i in indices]
        columns["role"] += [role] * len(indices)
        columns["seen"] += [i in seen_set for i in indices]
    metadata = {
        "seen_classes": [classes[i] for i in seen],
        "unseen_classes": [name for i, name in enumerate(classes) if i not in seen],
        "classes": classes,
        "config": config.model_dump(),
    }
    schema = pa.schema(
        [
            ("image_id", pa.string()),
            ("class_index", pa.int32()),
            ("class_name", pa.string()),
            ("role", pa.string()),
            ("seen", pa.bool_()),
        ],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )
    return pa.table(columns, schema=schema)


def write_subset(path: str | Path, table: pa.Table) -> None:
    write_with(path, lambda tmp: pq.write_table(table, tmp))


def read_subset(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """The subset table and its metadata (seen/unseen classes, config)."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"{path}: subset file not found (run `cft prepare`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise SubsetError(f"{path}: not a readable parquet file ({exc})") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise SubsetError(f"{path}: no '{METADATA_KEY.decode()}' metadata; not a subset file")
    return table, json.loads(raw)


def subset_ids(table: pa.Table, role: str, seen: bool | None = None) -> list[str]:
    roles = table.column("role").to_pylist()
    seens = table.column("seen").to_pylist()
    return [
        i
        for i, r, s in zip(table.column("image_id").to_pylist(), roles, seens, strict=True)
        if r == role and (seen is None or s == seen)
    ]
