"""Choosing image files for a manifest: seeded draws per class, each file decoded before it is kept.

Shared by the file-based sources (``imagefolder``, ``waterbirds``). A *draw* is one pool of a
class's candidate files in a seeded order and the manifest splits it fills, in order (``train``:
the fine-tuning images of a seen class, ``val``: the validation images). Every candidate is
decoded: corrupt, truncated and tiny images are reported and replaced by the pool's next file;
grayscale, CMYK, palette and alpha images are kept (read as RGB) and reported. Each pool draws
from its own seeded stream, so a replacement in one never changes another's choice. Nothing is
copied: the manifest points at the files (relative to the manifest for a project-relative root).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipeline.data.manifest import READABLE_NAMES_KEY, build_manifest
from pipeline.data.subset import SubsetError, subset_table

if TYPE_CHECKING:
    from pipeline.config.data import SubsetConfig

FILE_EXTRA_COLUMNS = {"width": pa.int32(), "height": pa.int32(), "mode": pa.string()}
REPLACED_PROBLEMS = ("corrupt", "truncated", "tiny")


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of decoding one file: ``problem`` is None, converted (kept) or replaced."""

    path: Path
    width: int = 0
    height: int = 0
    mode: str = ""
    problem: str | None = None  # corrupt, truncated, tiny (replaced) or grayscale, cmyk, palette, alpha (kept)
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.problem not in REPLACED_PROBLEMS


_CONVERTED = {
    "L": "grayscale",
    "LA": "grayscale",
    "I": "grayscale",
    "I;16": "grayscale",
    "1": "grayscale",
    "CMYK": "cmyk",
    "P": "palette",
    "RGBA": "alpha",
}


def check_image(path: Path, min_side: int) -> ImageCheck:
    """Decode ``path`` fully (a truncated JPEG only fails on load) and classify what was found."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            image.load()
            image.convert("RGB")
    except (UnidentifiedImageError, SyntaxError) as exc:
        return ImageCheck(path, problem="corrupt", detail=str(exc))
    except OSError as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return ImageCheck(path, problem=kind, detail=str(exc))
    except Exception as exc:  # decoders raise odd types (ValueError, DecompressionBombError) on bad files
        return ImageCheck(path, problem="corrupt", detail=f"{type(exc).__name__}: {exc}")
    if min(width, height) < min_side:
        return ImageCheck(path, width, height, mode, "tiny", f"{width}x{height} px, shorter side under {min_side}")
    return ImageCheck(path, width, height, mode, _CONVERTED.get(mode))


@dataclass
class ClassDraw:
    """One pool of a class's candidates (paths relative to the root, in seeded order), the manifest
    splits it fills in order, and what has been accepted so far."""

    class_index: int
    order: list[str]
    roles: list[tuple[str, int]]  # (manifest split, images), filled in this order
    position: int = 0
    accepted: list[ImageCheck] = field(default_factory=list)

    @property
    def needed(self) -> int:
        return sum(count for _, count in self.roles)

    def next_candidates(self) -> list[str]:
        count = max(0, self.needed - len(self.accepted))
        chosen = self.order[self.position : self.position + count]
        self.position += len(chosen)
        return chosen

    def split_of(self, position: int) -> str:
        """The manifest split of the ``position``-th accepted image."""
        for split, count in self.roles:
            if position < count:
                return split
            position -= count
        raise IndexError(position)


def seeded_order(files: list[str], seed: int, *stream: int) -> list[str]:
    """``files`` in the order of the seeded stream (seed, 0x1F01DE7, *stream)."""
    rng = np.random.default_rng([seed, 0x1F01DE7, *stream])
    return [files[i] for i in rng.permutation(len(files))]


def _verified(draws: list[ClassDraw], root: Path, min_side: int, workers: int) -> Iterator[ImageCheck]:
    """Decode candidates in rounds until every pool has its images or runs out; yields every check."""
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=sum(d.needed for d in draws), desc="verify", unit="img") as bar,
    ):
        while True:
            jobs = [(draw, name) for draw in draws for name in draw.next_candidates()]
            if not jobs:
                return
            checks = pool.map(lambda job: check_image(root / job[1], min_side), jobs)
            for (draw, _), check in zip(jobs, checks, strict=True):
                if check.usable:
                    draw.accepted.append(check)
                    bar.update(1)
                yield check


def manifest_source(path: Path, manifest_dir: Path) -> str:
    """An absolute root stays absolute; a project-relative one is stored relative to the manifest,
    so a clone of the project finds the files wherever it lives."""
    if path.is_absolute():
        return str(path)
    return os.path.relpath(path.resolve(), manifest_dir.resolve())


@dataclass
class Selection:
    """What a file-based source chose: the classes, their readable names and the seen ones, and the
    pools drawn from (``extra``: per-file manifest columns beyond the decode facts)."""

    root: Path
    class_ids: list[str]
    names: dict[str, str]
    seen: set[int]
    draws: list[ClassDraw]
    extra_columns: dict[str, pa.DataType] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> column -> value


def select_files(
    selection: Selection, subset: SubsetConfig, manifest_dir: Path, min_side: int, workers: int | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(manifest, subset table, report): every pool verified and written to the manifest in order."""
    root, draws, class_ids = selection.root, selection.draws, selection.class_ids
    problems = [
        check
        for check in _verified(draws, root, min_side, workers or min(8, (os.cpu_count() or 1) * 2))
        if check.problem
    ]
    short = [
        f"{class_ids[d.class_index]}{'' if len(d.roles) > 1 else ' ' + d.roles[0][0]} ({len(d.accepted)} of {d.needed})"
        for d in draws
        if len(d.accepted) < d.needed
    ]
    if short:
        replaced = [f"{c.path}: {c.problem}" for c in problems if not c.usable][:5]
        raise SubsetError(
            f"{root}: too few readable images in {len(short)} class(es): {short[:5]}; problems: {replaced}"
        )
    extra_columns = {**FILE_EXTRA_COLUMNS, **selection.extra_columns}
    columns: dict[str, list[Any]] = {
        name: []
        for name in ["image_id", "source", "source_index", "class_index", "class_name", "split", *extra_columns]
    }
    for draw in draws:
        for position, check in enumerate(draw.accepted):
            relative = check.path.relative_to(root).as_posix()
            columns["image_id"].append(relative)
            columns["source"].append(manifest_source(check.path, manifest_dir))
            columns["source_index"].append(-1)
            columns["class_index"].append(draw.class_index)
            columns["class_name"].append(class_ids[draw.class_index])
            columns["split"].append(draw.split_of(position))
            columns["width"].append(check.width)
            columns["height"].append(check.height)
            columns["mode"].append(check.mode)
            for name in selection.extra_columns:
                columns[name].append(selection.extra[relative][name])
    manifest = build_manifest(columns, class_ids, extra_columns)
    metadata = {**(manifest.schema.metadata or {}), READABLE_NAMES_KEY: json.dumps(selection.names).encode()}
    manifest = manifest.replace_schema_metadata(metadata)
    chosen = subset_table(manifest, sorted(selection.seen), subset)
    report = {
        "root": str(root),
        "classes": len(class_ids),
        "seen_classes": len(selection.seen),
        "finetune_images": columns["split"].count("train"),
        "val_images": columns["split"].count("val"),
        "checked": sum(d.position for d in draws),
        "replaced": {kind: sum(c.problem == kind for c in problems) for kind in REPLACED_PROBLEMS},
        "converted": {kind: sum(c.problem == kind for c in problems) for kind in sorted(set(_CONVERTED.values()))},
        "problems": [
            {"file": str(c.path), "problem": c.problem, "replaced": not c.usable, "detail": c.detail} for c in problems
        ],
    }
    return manifest, chosen, report


def write_selection(out_dir: Path, manifest: pa.Table, report: dict[str, Any]) -> None:
    """The manifest, the decode report and a contact sheet of the first fine-tuning images."""
    from pipeline.data.datasets import load_image_list
    from pipeline.data.manifest import MANIFEST_NAME, split_rows, write_manifest
    from pipeline.data.preprocess import InputTransform
    from pipeline.reports.charts import contact_sheet, save_png
    from pipeline.utils.atomic import write_json

    write_manifest(out_dir / MANIFEST_NAME, manifest)
    write_json(out_dir / "report.json", report)
    rows = split_rows(manifest, "train" if "train" in manifest.column("split").to_pylist() else "val").slice(0, 24)
    thumbnail = InputTransform(96, "bilinear", 1.0)
    images = np.stack([thumbnail.image(image) for image in load_image_list(out_dir, rows)])
    save_png(
        contact_sheet(images, rows.column("class_name").to_pylist(), zoom=1),
        out_dir / "contact_sheets" / "finetune.png",
    )
