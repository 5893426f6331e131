"""Waterbirds' metadata (Sagawa et al., "Distributionally Robust Neural Networks", ICLR 2020), and
`data.source: waterbirds`: fine-tuning on its train split.

The released folder ``waterbird_complete95_forest2water2/`` holds the images under
``<species folder>/<image>.jpg`` and ``metadata.csv`` (columns ``img_id, img_filename, y, split,
place``): ``y`` 0 landbird, 1 waterbird; ``place`` 0 land, 1 water; ``split`` 0 train, 1 val,
2 test (``kohpangwei/group_DRO``, ``data/cub_dataset.py``). The group is ``2 y + place``, as that
code computes it (``y * (n_groups / 2) + place``). In train, 95 % of each class sits on its own
background.

As a fine-tuning source the classes are ``landbird`` and ``waterbird`` (y order); a seen class's
``images_per_class`` images come from the train split and every class's ``val_images_per_class``
from the val split, drawn in seeded order and decoded as for an image folder (selection.py); the
manifest records each image's ``place`` and ``group``. The test split is for evaluation
(``kind: waterbirds``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.data.selection import ClassDraw, Selection, seeded_order, select_files
from pipeline.data.subset import draw_seen_classes
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.data import SubsetConfig, WaterbirdsConfig

METADATA = "metadata.csv"
SPLITS = {"train": "0", "val": "1", "test": "2"}
CLASSES = ("landbird", "waterbird")
PLACES = ("land", "water")
GROUPS = tuple(f"{bird}_{place}" for bird in CLASSES for place in PLACES)  # index = 2 y + place
_COLUMNS = ("img_filename", "y", "split", "place")


class WaterbirdsError(CftError):
    """A Waterbirds folder or metadata file that cannot be used; the message names it."""


def read_metadata(root: Path) -> list[dict[str, str]]:
    """The rows of ``metadata.csv``; a missing file, column or value is an error naming the file."""
    path = root / METADATA
    if not path.is_file():
        raise WaterbirdsError(f"{path}: not found (Waterbirds: metadata.csv beside the species folders)")
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise WaterbirdsError(f"{path}: unreadable ({error})") from error
    missing = [column for column in _COLUMNS if rows and column not in rows[0]]
    if not rows or missing:
        raise WaterbirdsError(f"{path}: expected the columns {', '.join(_COLUMNS)}; missing {missing or 'every row'}")
    for number, row in enumerate(rows, start=2):
        if row["y"] not in ("0", "1") or row["place"] not in ("0", "1") or row["split"] not in SPLITS.values():
            raise WaterbirdsError(
                f"{path}: line {number}: y and place must be 0 or 1 and split 0, 1 or 2 "
                f"(got y={row['y']!r}, place={row['place']!r}, split={row['split']!r})"
            )
    return rows


def group_of(row: Mapping[str, str]) -> str:
    return GROUPS[2 * int(row["y"]) + int(row["place"])]


def rows_of_split(root: Path, rows: list[dict[str, str]], split: str) -> list[dict[str, str]]:
    """The rows of ``split``; every listed file must exist (an error names the missing ones)."""
    chosen = [row for row in rows if row["split"] == SPLITS[split]]
    if not chosen:
        raise WaterbirdsError(f"{root / METADATA}: no rows of split {split} (split = {SPLITS[split]})")
    absent = [row["img_filename"] for row in chosen if not (root / row["img_filename"]).is_file()]
    if absent:
        raise WaterbirdsError(
            f"{root / METADATA}: {len(absent)} listed image(s) of split {split} not found under {root}, e.g. {absent[:3]}"
        )
    return chosen


def select_waterbirds(
    config: WaterbirdsConfig, subset: SubsetConfig, manifest_dir: Path, workers: int | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(manifest, subset table, report): fine-tuning images from train, validation images from val."""
    root = Path(config.root)
    rows = read_metadata(root)
    seen = set(draw_seen_classes(len(CLASSES), subset))
    by_split = {split: rows_of_split(root, rows, split) for split in ("train", "val")}
    draws = []
    for split, code, count in (
        ("train", 0, subset.images_per_class),
        ("val", 1, subset.val_images_per_class),
    ):
        for index in range(len(CLASSES)):
            files = [row["img_filename"] for row in by_split[split] if int(row["y"]) == index]
            wanted = count if split == "val" or index in seen else 0
            draws.append(ClassDraw(index, seeded_order(files, subset.seed, index, code), [(split, wanted)]))
    extra = {
        row["img_filename"]: {"place": PLACES[int(row["place"])], "group": group_of(row)}
        for split_rows in by_split.values()
        for row in split_rows
    }
    selection = Selection(
        root,
        list(CLASSES),
        {name: name for name in CLASSES},
        seen,
        draws,
        {"place": pa.string(), "group": pa.string()},
        extra,
    )
    return select_files(selection, subset, manifest_dir, config.min_side, workers)
