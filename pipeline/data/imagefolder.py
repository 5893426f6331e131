"""`data.source: imagefolder`: a ``root/<class_id>/<image>`` tree (ImageNet train, or a user's own data).

Nothing is copied. The manifest lists only the chosen images and points at their files:

* classes are the sub-folders, in sorted order (for ImageNet: the standard 1000-class order);
  a folder without images is an error naming it (skipping it would shift the later classes' indices);
* a seeded share of the classes is "seen": ``images_per_class`` images of each are fine-tuned on
  (manifest split ``train``); every class also gives ``val_images_per_class`` other images that
  pick the best epoch (split ``val``), so unseen classes are validated too;
* every chosen file is decoded before it is accepted. Corrupt, truncated and tiny images are
  reported and replaced by the class's next image in the seeded order; grayscale, CMYK, palette
  and alpha images are kept (they are read as RGB) and reported. Each class draws from its own
  seeded stream, so a replacement in one class never changes another class's choice.
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

from pipeline.data.class_names import readable_names
from pipeline.data.manifest import READABLE_NAMES_KEY, build_manifest
from pipeline.data.subset import SubsetError, draw_seen_classes, subset_table
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.data import ImageFolderConfig, SubsetConfig

IMAGEFOLDER_EXTRA_COLUMNS = {"width": pa.int32(), "height": pa.int32(), "mode": pa.string()}
REPLACED_PROBLEMS = ("corrupt", "truncated", "tiny")


class ImageFolderError(CftError):
    """A folder tree that cannot be used; the message names the folder or file."""


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


def scan_classes(root: Path, extensions: list[str]) -> dict[str, list[str]]:
    """class folder -> sorted image file names (hidden entries and other extensions ignored).

    Every (non-hidden) folder is a class, and its place in the sorted folder list is its class
    index. A folder without images is an error, not skipped: dropping it would shift the index of
    every later class (against a model trained on all the folders, e.g. ImageNet's 1000), and a
    class without images can be neither fine-tuned on nor validated.
    """
    if not root.is_dir():
        raise ImageFolderError(f"{root}: image folder not found (data.imagefolder.root)")
    wanted = {ext.lower() for ext in extensions}
    classes: dict[str, list[str]] = {}
    empty: dict[str, int] = {}  # folder -> files it holds with other extensions
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    for name in tqdm(folders, desc="scan", unit="class", leave=False):
        entries = [
            entry.name for entry in os.scandir(root / name) if entry.is_file() and not entry.name.startswith(".")
        ]
        files = sorted(entry for entry in entries if Path(entry).suffix.lower() in wanted)
        if files:
            classes[name] = files
        else:
            empty[name] = len(entries)
    if empty:
        shown = ", ".join(
            f"{root / name}" + (f" ({others} file(s) with other extensions)" if others else "")
            for name, others in list(empty.items())[:5]
        )
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise ImageFolderError(
            f"{root}: {len(empty)} of {len(folders)} class folder(s) hold no image ({', '.join(extensions)}): {shown}{more}. "
            "Every folder is a class and the sorted folders give the class indices, so skipping one would shift every later "
            "class; add its images, remove the folder, or list its extension in data.imagefolder.extensions"
        )
    if len(classes) < 2:
        raise ImageFolderError(
            f"{root}: needs at least two class folders with images ({extensions}); found {len(classes)}"
        )
    return classes


def read_name_file(path: Path) -> dict[str, str]:
    """Class id -> readable name: JSON ``{id: name}`` or text lines ``<id> <name ...>`` (tab or space)."""
    if not path.is_file():
        raise ImageFolderError(f"{path}: class name file not found (data.imagefolder.class_names)")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImageFolderError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise ImageFolderError(f"{path}: expected a JSON object of class id -> name")
        return {str(k): v.strip() for k, v in names.items()}
    names = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            raise ImageFolderError(f"{path}: line {number} is not '<class id> <name>': {line!r}")
        names[parts[0]] = parts[1].strip()
    return names


def class_readable_names(class_ids: list[str], name_file: Path | None) -> dict[str, str]:
    """Readable names for prompts: the name file when given (every class must be in it), else
    ImageNet's names for WordNet ids and the folder names otherwise."""
    if name_file is None:
        return readable_names(class_ids)
    names = read_name_file(name_file)
    missing = [class_id for class_id in class_ids if class_id not in names]
    if missing:
        raise ImageFolderError(f"{name_file}: no name for {len(missing)} class folder(s), e.g. {missing[:5]}")
    return {class_id: names[class_id] for class_id in class_ids}


@dataclass
class ClassDraw:
    """One class's seeded candidate order and what has been accepted from it so far."""

    class_id: str
    order: list[str]
    needed: int
    position: int = 0
    accepted: list[ImageCheck] = field(default_factory=list)

    def next_candidates(self) -> list[str]:
        count = max(0, self.needed - len(self.accepted))
        chosen = self.order[self.position : self.position + count]
        self.position += len(chosen)
        return chosen


def _class_order(files: list[str], seed: int, class_index: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x1F01DE7, class_index])
    return [files[i] for i in rng.permutation(len(files))]


def _verified(draws: list[ClassDraw], root: Path, min_side: int, workers: int) -> Iterator[ImageCheck]:
    """Decode candidates in rounds until every class has its images or runs out; yields every check."""
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=sum(d.needed for d in draws), desc="verify", unit="img") as bar,
    ):
        while True:
            jobs = [(draw, name) for draw in draws for name in draw.next_candidates()]
            if not jobs:
                return
            checks = pool.map(lambda job: check_image(root / job[0].class_id / job[1], min_side), jobs)
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


def select_imagefolder(
    config: ImageFolderConfig, subset: SubsetConfig, manifest_dir: Path, workers: int | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(manifest, subset table, report) for the tree at ``config.root``; ``manifest_dir`` is where
    the manifest will live (file paths are stored relative to it)."""
    root = Path(config.root)
    classes = scan_classes(root, config.extensions)
    class_ids = list(classes)
    names = class_readable_names(class_ids, Path(config.class_names) if config.class_names else None)
    seen = set(draw_seen_classes(len(class_ids), subset))
    draws = [
        ClassDraw(
            class_id,
            _class_order(classes[class_id], subset.seed, index),
            subset.val_images_per_class + (subset.images_per_class if index in seen else 0),
        )
        for index, class_id in enumerate(class_ids)
    ]
    problems = [
        check
        for check in _verified(draws, root, config.min_side, workers or min(8, (os.cpu_count() or 1) * 2))
        if check.problem
    ]
    short = [f"{d.class_id} ({len(d.accepted)} of {d.needed})" for d in draws if len(d.accepted) < d.needed]
    if short:
        replaced = [f"{c.path}: {c.problem}" for c in problems if not c.usable][:5]
        raise SubsetError(
            f"{root}: too few readable images in {len(short)} class folder(s): {short[:5]}; problems: {replaced}"
        )

    columns: dict[str, list[Any]] = {
        name: []
        for name in [
            "image_id",
            "source",
            "source_index",
            "class_index",
            "class_name",
            "split",
            *IMAGEFOLDER_EXTRA_COLUMNS,
        ]
    }
    for index, draw in enumerate(draws):
        train_count = subset.images_per_class if index in seen else 0
        for position, check in enumerate(draw.accepted):
            columns["image_id"].append(f"{draw.class_id}/{check.path.name}")
            columns["source"].append(manifest_source(check.path, manifest_dir))
            columns["source_index"].append(-1)
            columns["class_index"].append(index)
            columns["class_name"].append(draw.class_id)
            columns["split"].append("train" if position < train_count else "val")
            columns["width"].append(check.width)
            columns["height"].append(check.height)
            columns["mode"].append(check.mode)
    manifest = build_manifest(columns, class_ids, IMAGEFOLDER_EXTRA_COLUMNS)
    metadata = {**(manifest.schema.metadata or {}), READABLE_NAMES_KEY: json.dumps(names).encode()}
    manifest = manifest.replace_schema_metadata(metadata)
    chosen = subset_table(manifest, sorted(seen), subset)
    report = {
        "root": str(root),
        "classes": len(class_ids),
        "seen_classes": len(seen),
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


def write_imagefolder(out_dir: Path, manifest: pa.Table, report: dict[str, Any]) -> None:
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
