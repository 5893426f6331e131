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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pipeline.data.class_names import readable_names
from pipeline.data.selection import ClassDraw, Selection, seeded_order, select_files
from pipeline.data.subset import draw_seen_classes
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.config.data import ImageFolderConfig, SubsetConfig


class ImageFolderError(CftError):
    """A folder tree that cannot be used; the message names the folder or file."""


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


def select_imagefolder(
    config: ImageFolderConfig, subset: SubsetConfig, manifest_dir: Path, workers: int | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(manifest, subset table, report) for the tree at ``config.root``; ``manifest_dir`` is where
    the manifest will live (file paths are stored relative to it). A class folder is one pool: its
    first accepted images are fine-tuned on (seen classes), the next ones validate."""
    root = Path(config.root)
    classes = scan_classes(root, config.extensions)
    class_ids = list(classes)
    names = class_readable_names(class_ids, Path(config.class_names) if config.class_names else None)
    seen = set(draw_seen_classes(len(class_ids), subset))
    draws = [
        ClassDraw(
            index,
            [f"{class_id}/{name}" for name in seeded_order(classes[class_id], subset.seed, index)],
            [("train", subset.images_per_class if index in seen else 0), ("val", subset.val_images_per_class)],
        )
        for index, class_id in enumerate(class_ids)
    ]
    return select_files(Selection(root, class_ids, names, seen, draws), subset, manifest_dir, config.min_side, workers)
