"""Reading each benchmark's folder layout into a list of images and the classes counted as right.

No pixels are decoded here: a reader lists the image files (by extension, case-insensitive, hidden
files skipped, sub-folders of a class folder included as torchvision's ``ImageFolder`` does) and
works out each image's targets. Files are sorted by their path relative to ``root``.

===========  ===========================================================  ======================================
kind         layout (``root`` is the folder named here)                   where the layout comes from
===========  ===========================================================  ======================================
imagefolder  ``<class id>/<image>``; every folder must be one of the      torchvision ``ImageFolder``; ImageNet
             model's class names (ImageNet val in WordNet-id folders,     val, ImageNet-Sketch ``sketch/<wnid>/``
             ImageNet-Sketch's ``sketch/``, a user's own data)
imagenet_v2  ``<0..999>/<image>.jpeg``: the folder name is the ImageNet   modestyachts/ImageNetV2_pytorch
             class *index* (``imagenetv2-*-format-val``)                  ``ImageNetV2_dataset.py``:
                                                                          ``int(path.parent.name)``
imagenet_a   ``<wnid>/<image>.jpg``, 200 WordNet-id folders (a            hendrycks/natural-adv-examples
imagenet_r   ``README.txt`` beside them is ignored); the 200-class         ``eval.py`` (``output[:, indices_in_1k]``);
             subset is timm's ``imagenet_{a,r}_{synsets,indices}.txt``    hendrycks/imagenet-r
objectnet    ``objectnet-1.0/``: ``images/<folder>/<image>.png`` and      modestyachts/imagenet-testbed
             ``mappings/folder_to_objectnet_label.json``,                 ``src/eval_settings/objectnet.py``
             ``mappings/objectnet_to_imagenet_1k.json`` (the packaged      (mapping split on ';', ImageNet names
             copies are used when the dataset has none); images of the     are full class descriptions, 2-px
             200 ObjectNet classes outside the 113 mapped ones are        border crop)
             skipped
si_score     a folder holding one or more of ``object_size/``,            google-research/si-score README (``aws s3
             ``object_location/``, ``object_rotation/`` (the S3            cp s3://si-score-dataset/object_{size|
             download), each with ``metadata.csv`` (image_id, x_coord,     location|rotation}/``) and
             y_coord, area, rotation, ...; required: it holds the factor  ``dataset_generator.py`` (metadata.csv,
             values), ``foreground_classes.csv`` (int = ImageNet index,   foreground_classes.csv, ``<label>/<id>
             label; the packaged JSON otherwise) and ``<label>/<image_id>  .jpg``); robustness_metrics
             .jpg`` (also one level down, as in the TFDS zips' ``area/``,  ``metrics/synthetic.py`` (reads
             ``rotation/``, ``location20_area02_min0pc/``)                 ``object_<factor>/metadata.csv``;
                                                                          1000-way argmax); TFDS ``siscore.py``
===========  ===========================================================  ======================================
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from pipeline.benchmarks.kinds import DATASET_KINDS
from pipeline.data.formats import IMAGE_EXTENSIONS

KINDS = DATASET_KINDS
OBJECTNET_BORDER = 2  # ObjectNet images carry a 1-2 px red frame; the reference code crops 2 px
OBJECTNET_FOLDER_MAP = "folder_to_objectnet_label.json"
OBJECTNET_IMAGENET_MAP = "objectnet_to_imagenet_1k.json"
SI_SCORE_LABEL_MAP = "si_score_label_to_imagenet_index.json"
SI_SCORE_FACTORS: tuple[str, ...] = ("size", "location", "rotation")
# The metadata.csv columns that hold each factor's value (dataset_generator.py's header).
SI_SCORE_FACTOR_COLUMNS: dict[str, tuple[str, ...]] = {
    "size": ("area",),
    "location": ("x_coord", "y_coord"),
    "rotation": ("rotation",),
}
_SI_SCORE_FOLDERS = {
    "object_size": "size",
    "size": "size",
    "area": "size",
    "object_location": "location",
    "location": "location",
    "object_rotation": "rotation",
    "rotation": "rotation",
}


class BenchmarkError(CftError):
    """A benchmark folder or mapping that cannot be read; the message names the path and the problem."""


@dataclass(frozen=True)
class BenchmarkImages:
    kind: str
    root: Path
    files: list[str]
    targets: list[tuple[int, ...]]
    classes: tuple[int, ...] | None
    border: int = 0
    metadata: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    group_weights: dict[str, float] = field(default_factory=dict)  # Waterbirds: each group's share of train

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.files) or any(
            len(column) != len(self.files) for column in self.metadata.values()
        ):
            raise BenchmarkError(f"{self.root}: files, targets and metadata columns differ in length")
        if any(not target for target in self.targets):
            raise BenchmarkError(f"{self.root}: every image needs at least one target class")

    def take(self, indices: list[int]) -> BenchmarkImages:
        """The same benchmark restricted to ``indices`` (files, targets and metadata alike)."""
        if len(indices) == len(self.files) and indices == list(range(len(self.files))):
            return self
        return replace(
            self,
            files=[self.files[i] for i in indices],
            targets=[self.targets[i] for i in indices],
            metadata={k: [v[i] for i in indices] for k, v in self.metadata.items()},
        )


def read_benchmark(
    kind: str,
    root: str | Path,
    class_names: list[str],
    *,
    variants: list[str] | None = None,
    split: str | None = None,
    imagenet: str | Path | None = None,
    ablations: list[str] | None = None,
) -> BenchmarkImages:
    """List ``root``'s images in ``kind``'s layout, with targets as indices into ``class_names``.

    Kind options: ``variants`` (ImageNet-9's variant folders, all by default), ``split`` (Waterbirds',
    Hard ImageNet's), ``imagenet`` (Hard ImageNet: the ImageNet folder its images come from) and
    ``ablations`` (Hard ImageNet's, all by default)."""
    if kind not in KINDS:
        raise BenchmarkError(f"{root}: unknown benchmark kind {kind!r}; known kinds: {', '.join(KINDS)}")
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{root}: {kind} benchmark root {'is not a folder' if root.exists() else 'not found'}")
    if kind == "imagefolder":
        return _read_imagefolder(root, class_names)
    if kind == "imagenet_c":
        return _read_imagenet_c(root, class_names)
    if kind == "imagenet9":
        from pipeline.benchmarks.backgrounds import read_imagenet9

        return read_imagenet9(root, class_names, variants)
    if kind == "waterbirds":
        from pipeline.benchmarks.waterbirds import read_waterbirds

        return read_waterbirds(root, class_names, split)
    if kind == "hard_imagenet":
        from pipeline.benchmarks.hard_imagenet import ABLATIONS, read_hard_imagenet

        if imagenet is None:
            raise BenchmarkError(f"{root}: kind hard_imagenet needs `imagenet`, the ImageNet folder of its images")
        return read_hard_imagenet(root, Path(imagenet), class_names, split, ablations or ABLATIONS)
    _require_imagenet_classifier(kind, class_names)
    if kind == "imagenet_v2":
        folders = {str(index): (index,) for index in range(1000)}
        return from_rows(kind, root, _read_class_folders(root, folders, "an ImageNet class index 0-999"), None)
    if kind in ("imagenet_a", "imagenet_r"):
        wnids, indices = imagenet_subset(kind)
        folders = {wnid: (index,) for wnid, index in zip(wnids, indices)}
        rows = _read_class_folders(root, folders, f"one of the {len(wnids)} {kind} WordNet ids")
        return from_rows(kind, root, rows, indices)
    if kind == "objectnet":
        return _read_objectnet(root)
    return _read_si_score(root)


# --- shared listing ------------------------------------------------------------------------------

Row = tuple[str, tuple[int, ...], dict[str, str]]  # relative path, targets, metadata values


def visible_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def _read_class_folders(root: Path, folder_targets: dict[str, tuple[int, ...]], expected: str) -> list[Row]:
    rows: list[Row] = []
    for folder in visible_dirs(root):
        if folder.name not in folder_targets:
            raise BenchmarkError(f"{folder}: folder {folder.name!r} is not a known class (expected {expected})")
        rows += [(path.relative_to(root).as_posix(), folder_targets[folder.name], {}) for path in list_images(folder)]
    return rows


def from_rows(
    kind: str,
    root: Path,
    rows: list[Row],
    classes: tuple[int, ...] | None,
    border: int = 0,
    skipped: dict[str, int] | None = None,
) -> BenchmarkImages:
    if not rows:
        raise BenchmarkError(f"{root}: no images found for {kind} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    rows = sorted(rows, key=lambda row: row[0])
    columns = sorted({name for _, _, values in rows for name in values})
    metadata = {name: [values[name] for _, _, values in rows] for name in columns}
    return BenchmarkImages(
        kind, root, [row[0] for row in rows], [row[1] for row in rows], classes, border, metadata, dict(skipped or {})
    )


def _read_imagefolder(root: Path, class_names: list[str]) -> BenchmarkImages:
    duplicates = sorted(name for name, count in Counter(class_names).items() if count > 1)
    if duplicates:
        raise BenchmarkError(f"{root}: the model's class names repeat {duplicates}")
    folders = {name: (index,) for index, name in enumerate(class_names)}
    rows = _read_class_folders(root, folders, f"one of the model's {len(class_names)} class names")
    return from_rows("imagefolder", root, rows, None)


def _read_imagenet_c(root: Path, class_names: list[str]) -> BenchmarkImages:
    """ImageNet-C's layout ``<corruption>/<severity 1-5>/<class>/<image>`` (also ImageNet-C-bar's and
    CIFAR-10-C-style folders), class folders named as the model's classes (WordNet ids for ImageNet)."""
    folders = {name: (index,) for index, name in enumerate(class_names)}
    rows: list[Row] = []
    for corruption in visible_dirs(root):
        levels = visible_dirs(corruption)
        wrong = [level.name for level in levels if level.name not in {"1", "2", "3", "4", "5"}]
        if wrong or not levels:
            raise BenchmarkError(
                f"{corruption}: expected severity folders 1-5 (ImageNet-C layout <corruption>/<severity>/<class>/<image>)"
                + (f", found {wrong}" if wrong else ", found none")
            )
        for level in levels:
            found = _read_class_folders(level, folders, f"one of the model's {len(class_names)} class names")
            prefix = f"{corruption.name}/{level.name}/"
            rows += [
                (prefix + file, targets, {"corruption": corruption.name, "severity": level.name})
                for file, targets, _ in found
            ]
    return from_rows("imagenet_c", root, rows, None)


def _require_imagenet_classifier(kind: str, class_names: list[str]) -> None:
    from pipeline.data.class_names import imagenet_classes

    if list(class_names) != imagenet_classes():
        preview = ", ".join(list(class_names)[:3])
        raise BenchmarkError(
            f"benchmark kind {kind!r} needs an ImageNet-1k classifier (the 1000 WordNet ids in the standard order); "
            f"the model has {len(class_names)} classes ({preview}{', ...' if len(class_names) > 3 else ''})"
        )


# --- ImageNet-A / -R ----------------------------------------------------------------------------


@lru_cache(maxsize=2)
def imagenet_subset(kind: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The WordNet ids and ImageNet-1k indices of ImageNet-A's or -R's 200 classes, from timm's package data."""
    from pipeline.data.class_names import imagenet_classes

    letter = {"imagenet_a": "a", "imagenet_r": "r"}.get(kind)
    if letter is None:
        raise ValueError(f"no 200-class subset for benchmark kind {kind!r} (imagenet_a, imagenet_r)")
    info = files("timm.data") / "_info"
    synsets_file, indices_file = info / f"imagenet_{letter}_synsets.txt", info / f"imagenet_{letter}_indices.txt"
    wnids = tuple(synsets_file.read_text().split())
    indices = tuple(int(value) for value in indices_file.read_text().split())
    position = {wnid: index for index, wnid in enumerate(imagenet_classes())}
    # The two files are independent copies; a disagreement would silently score the wrong classes.
    if len(wnids) != len(indices) or any(position.get(wnid) != index for wnid, index in zip(wnids, indices)):
        raise BenchmarkError(f"{indices_file}: indices disagree with {synsets_file} and the ImageNet-1k class order")
    return wnids, indices


# --- mappings (JSON / CSV) ----------------------------------------------------------------------


def packaged_data(name: str) -> Traversable:
    """A mapping file shipped in ``pipeline/benchmarks/data``."""
    return files("pipeline.benchmarks") / "data" / name


def read_json_mapping(source: Path | Traversable, what: str, value_type: type) -> dict[str, Any]:
    try:
        mapping = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchmarkError(f"{source}: {what} unreadable ({error})") from error
    if not isinstance(mapping, dict) or not all(
        isinstance(key, str) and isinstance(value, value_type) for key, value in mapping.items()
    ):
        raise BenchmarkError(f"{source}: {what} must be a JSON object of {value_type.__name__} values")
    return mapping


def own_or_packaged(own: Path | None, name: str) -> Path | Traversable:
    """The dataset's own copy of a mapping file when it has one: it is the authority for its images."""
    return own if own is not None and own.is_file() else packaged_data(name)


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """ImageNet-1k descriptions (``"backpack, back pack, knapsack, ..."``) and their single lemmas -> indices."""
    from timm.data import ImageNetInfo

    by_description: dict[str, list[int]] = defaultdict(list)
    by_lemma: dict[str, list[int]] = defaultdict(list)
    for index, description in enumerate(ImageNetInfo("imagenet-1k").label_descriptions()):
        by_description[description.strip().casefold()].append(index)
        for lemma in {lemma.strip().casefold() for lemma in description.split(",")}:
            by_lemma[lemma].append(index)
    return dict(by_description), dict(by_lemma)


def resolve_imagenet_name(name: str, where: str) -> int:
    """An ImageNet class name as ObjectNet's mapping writes it (the full description) -> its index.

    A name that is not a full description may still be a lemma of exactly one class.
    """
    by_description, by_lemma = _imagenet_names()
    key = name.strip().casefold()
    for matches in (by_description.get(key), by_lemma.get(key)):
        if matches and len(matches) == 1:
            return matches[0]
        if matches:
            raise BenchmarkError(f"{where}: ImageNet class name {name!r} is ambiguous (ImageNet-1k classes {matches})")
    raise BenchmarkError(f"{where}: ImageNet class name {name!r} matches no ImageNet-1k class description")


def objectnet_class_targets(mapping_dir: Path | None = None) -> dict[str, tuple[int, ...]]:
    """ObjectNet class -> the ImageNet-1k indices it maps to, in the mapping file's order.

    Reads ``mapping_dir/objectnet_to_imagenet_1k.json`` when it exists, else the packaged copy.
    """
    source = own_or_packaged(mapping_dir / OBJECTNET_IMAGENET_MAP if mapping_dir else None, OBJECTNET_IMAGENET_MAP)
    mapping = read_json_mapping(source, "ObjectNet to ImageNet mapping", str)
    targets: dict[str, tuple[int, ...]] = {}
    for objectnet_class, imagenet_names in mapping.items():
        names = [name.strip() for name in imagenet_names.split(";") if name.strip()]
        if not names:
            raise BenchmarkError(f"{source}: ObjectNet class {objectnet_class!r} maps to no ImageNet class")
        where = f"{source} (ObjectNet class {objectnet_class!r})"
        targets[objectnet_class] = tuple(dict.fromkeys(resolve_imagenet_name(name, where) for name in names))
    return targets


def si_score_label_targets(dataset_dir: Path | None = None) -> dict[str, int]:
    """SI-Score foreground label -> ImageNet-1k index: the dataset's ``foreground_classes.csv`` or the packaged JSON."""
    own = dataset_dir / "foreground_classes.csv" if dataset_dir else None
    if own is None or not own.is_file():
        return read_json_mapping(packaged_data(SI_SCORE_LABEL_MAP), "SI-Score label mapping", int)
    try:
        with own.open(newline="", encoding="utf-8") as stream:
            return {row["label"].strip(): int(row["int"]) for row in csv.DictReader(stream)}
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, csv.Error) as error:
        raise BenchmarkError(
            f"{own}: SI-Score foreground classes unreadable (expected columns int,label; {error!r})"
        ) from error


# --- ObjectNet ----------------------------------------------------------------------------------


def _read_objectnet(root: Path) -> BenchmarkImages:
    images = root / "images"
    if not images.is_dir():
        raise BenchmarkError(f"{images}: not found (give the objectnet-1.0 folder, which holds images/<folder>/*.png)")
    mappings = root / "mappings"
    folder_source = own_or_packaged(mappings / OBJECTNET_FOLDER_MAP, OBJECTNET_FOLDER_MAP)
    folder_to_class = read_json_mapping(folder_source, "ObjectNet folder to label mapping", str)
    class_targets = objectnet_class_targets(mappings)
    unknown = sorted(set(class_targets) - set(folder_to_class.values()))
    if unknown:
        imagenet_source = own_or_packaged(mappings / OBJECTNET_IMAGENET_MAP, OBJECTNET_IMAGENET_MAP)
        raise BenchmarkError(
            f"{imagenet_source}: no folder holds the mapped ObjectNet classes {unknown} (folders: {folder_source})"
        )
    rows: list[Row] = []
    skipped: dict[str, int] = {}
    for folder in visible_dirs(images):
        objectnet_class = folder_to_class.get(folder.name)
        if objectnet_class is None:
            raise BenchmarkError(f"{folder}: folder {folder.name!r} is not an ObjectNet folder in {folder_source}")
        paths = list_images(folder)
        if objectnet_class not in class_targets:
            skipped[folder.name] = len(paths)  # one of the ObjectNet classes with no ImageNet counterpart
            continue
        values = {"objectnet_class": objectnet_class}
        rows += [(path.relative_to(root).as_posix(), class_targets[objectnet_class], values) for path in paths]
    classes = tuple(sorted({index for targets in class_targets.values() for index in targets}))
    return from_rows("objectnet", root, rows, classes, OBJECTNET_BORDER, skipped)


# --- SI-Score -----------------------------------------------------------------------------------


def _si_score_factor(folder_name: str) -> str | None:
    name = folder_name.casefold()
    return _SI_SCORE_FOLDERS.get(name) or ("location" if name.startswith("location") else None)


def _si_score_dataset_dir(folder: Path, factor: str) -> Path:
    """The folder with ``metadata.csv`` and the label folders: ``folder`` itself or one nested factor folder."""
    if (folder / "metadata.csv").is_file():
        return folder
    nested = [
        child
        for child in visible_dirs(folder)
        if _si_score_factor(child.name) == factor and (child / "metadata.csv").is_file()
    ]
    if len(nested) != 1:
        raise BenchmarkError(
            f"{folder}: no metadata.csv (SI-Score's per-image {factor} values) in it or in one nested {factor} folder"
        )
    return nested[0]


def _si_score_label_folders(dataset_dir: Path, factor: str) -> list[Path]:
    """The ``<label>/`` folders, also where they sit one level down (``area/<label>/`` beside ``metadata.csv``)."""
    folders: list[Path] = []
    for folder in visible_dirs(dataset_dir):
        folders += visible_dirs(folder) if _si_score_factor(folder.name) == factor else [folder]
    return folders


def _si_score_values(metadata_file: Path, factor: str) -> dict[str, str]:
    """image_id -> the factor's value as written in metadata.csv (location: ``"(x,y)"``)."""
    columns = SI_SCORE_FACTOR_COLUMNS[factor]
    try:
        with metadata_file.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            missing = [name for name in ("image_id", *columns) if name not in (reader.fieldnames or [])]
            if missing:
                raise BenchmarkError(f"{metadata_file}: SI-Score metadata lacks the columns {missing}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BenchmarkError(f"{metadata_file}: SI-Score metadata unreadable ({error})") from error
    values: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        parts = [(row.get(name) or "").strip() for name in columns]
        if not all(parts) or not (row.get("image_id") or "").strip():
            raise BenchmarkError(f"{metadata_file}: line {line} lacks image_id or {'/'.join(columns)}")
        values[_image_id(row["image_id"])] = parts[0] if len(parts) == 1 else "(" + ",".join(parts) + ")"
    return values


def _image_id(text: str) -> str:
    text = text.strip()
    return str(int(text)) if text.isdigit() else text


def _read_si_score(root: Path) -> BenchmarkImages:
    factor_folders: dict[str, Path] = {}
    for folder in visible_dirs(root):
        factor = _si_score_factor(folder.name)
        if factor is None:
            continue  # e.g. the foregrounds/ and backgrounds/ downloads beside the datasets
        if factor in factor_folders:
            raise BenchmarkError(f"{folder}: a second SI-Score {factor} folder beside {factor_folders[factor]}")
        factor_folders[factor] = folder
    if not factor_folders:
        raise BenchmarkError(
            f"{root}: no SI-Score factor folder (expected object_size/, object_location/ or object_rotation/)"
        )
    rows: list[Row] = []
    for factor in SI_SCORE_FACTORS:
        if factor not in factor_folders:
            continue
        dataset_dir = _si_score_dataset_dir(factor_folders[factor], factor)
        labels = si_score_label_targets(dataset_dir)
        values = _si_score_values(dataset_dir / "metadata.csv", factor)
        for folder in _si_score_label_folders(dataset_dir, factor):
            if folder.name not in labels:
                raise BenchmarkError(
                    f"{folder}: folder {folder.name!r} is not an SI-Score foreground label with an ImageNet class"
                )
            for path in list_images(folder):
                value = values.get(_image_id(path.stem))
                if value is None:
                    raise BenchmarkError(f"{path}: image id {path.stem!r} has no row in {dataset_dir / 'metadata.csv'}")
                rows.append(
                    (
                        path.relative_to(root).as_posix(),
                        (labels[folder.name],),
                        {"factor": factor, "factor_value": value},
                    )
                )
    return from_rows("si_score", root, rows, None)
