"""Background reliance measured directly: the ImageNet-9 Backgrounds Challenge and the metrics it
shares with the world's ``backgrounds`` split.

Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR 2021),
released as ``MadryLab/backgrounds_challenge``. Its ``bg_challenge`` folder holds one folder per
variant, each in torchvision ``ImageFolder`` layout under ``val/`` (``tools/datasets.py``:
``os.path.join(data_path, 'val')``), with the 9 super-class folders ``00_dog`` ... ``08_fish``;
the sorted folder position is the super-class (``ImageFolder``'s order, which ``in9_eval.py``
relies on). The images are 224-pixel crops fed as they are (``transforms.ToTensor()`` only), so
they are resized to the model's input, never cropped again.

Two class protocols, chosen by the model's classes, as ``in9_eval.py`` does with ``--in9``:

* an ImageNet-1k classifier: 1000-way argmax, mapped to a super-class by ``in_to_in9.json``
  (370 ImageNet classes map to one of the 9, the others to -1, which is never right);
* a model of the 9 super-classes (named as the folders, ``00_dog``, or without the number,
  ``dog``): argmax over its classes.

Metrics per variant (``accuracy_<variant>``, also for seen/unseen classes), ``bg_gap`` =
mixed_same − mixed_rand (the paper's BG-Gap: how much a background of the wrong class costs when
the object is unchanged) and ``only_bg_accuracy`` (the background alone: only_bg_t on ImageNet-9,
only_bg on the world).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline.benchmarks.catalog import (
    BenchmarkError,
    BenchmarkImages,
    Row,
    from_rows,
    list_images,
    own_or_packaged,
    read_json_mapping,
    visible_dirs,
)
from pipeline.benchmarks.kinds import IN9_VARIANTS

IN9_CLASSES = (
    "dog",
    "bird",
    "wheeled vehicle",
    "reptile",
    "carnivore",
    "insect",
    "musical instrument",
    "primate",
    "fish",
)
IN9_MAP = "in_to_in9.json"
ONLY_BG_VARIANTS = ("only_bg_t", "only_bg")  # the headline background-alone accuracy, first one present


def superclass_targets(mapping_file: Path | None = None) -> tuple[tuple[int, ...], ...]:
    """Per super-class 0-8, the ImageNet-1k indices ``in_to_in9.json`` maps to it (the dataset's own
    copy when it has one, else the packaged copy of the benchmark's file)."""
    source = own_or_packaged(mapping_file, IN9_MAP)
    mapping = read_json_mapping(source, "ImageNet to ImageNet-9 mapping", int)
    if sorted(mapping, key=lambda key: int(key) if key.isdigit() else -1) != [str(i) for i in range(1000)]:
        raise BenchmarkError(f"{source}: expected the keys '0'..'999' (ImageNet-1k indices)")
    wrong = sorted({value for value in mapping.values() if not -1 <= value < len(IN9_CLASSES)})
    if wrong:
        raise BenchmarkError(f"{source}: super-classes must be -1..8, found {wrong}")
    targets = tuple(
        tuple(sorted(int(key) for key, value in mapping.items() if value == superclass))
        for superclass in range(len(IN9_CLASSES))
    )
    empty = [IN9_CLASSES[k] for k, found in enumerate(targets) if not found]
    if empty:
        raise BenchmarkError(f"{source}: no ImageNet class maps to super-class(es) {empty}")
    return targets


def _nine_class_index(folder: Path, class_names: list[str]) -> int:
    wanted = {folder.name.casefold(), folder.name.split("_", 1)[-1].casefold()}
    matches = [index for index, name in enumerate(class_names) if name.casefold() in wanted]
    if len(matches) != 1:
        raise BenchmarkError(
            f"{folder}: class folder matches {'none' if not matches else 'several'} of the model's "
            f"{len(class_names)} classes; an ImageNet-9 model names its classes as the folders ('00_dog') or "
            "without their number ('dog'), an ImageNet-1k model is mapped by in_to_in9.json"
        )
    return matches[0]


def read_imagenet9(root: Path, class_names: list[str], variants: Sequence[str] | None = None) -> BenchmarkImages:
    """``root/<variant>/val/<class folder>/<image>`` for each variant; targets in the model's classes."""
    from pipeline.data.class_names import imagenet_classes

    mapped = list(class_names) == imagenet_classes()
    own_map = root / IN9_MAP
    targets = superclass_targets(own_map if own_map.is_file() else None) if mapped else None
    rows: list[Row] = []
    for variant in variants or IN9_VARIANTS:
        folder = root / variant / "val"
        if not folder.is_dir():
            raise BenchmarkError(
                f"{folder}: ImageNet-9 variant {variant!r} not found (layout <root>/<variant>/val/<class folder>/<image>, "
                "as in the released bg_challenge folder)"
            )
        class_folders = visible_dirs(folder)
        if len(class_folders) != len(IN9_CLASSES):
            raise BenchmarkError(
                f"{folder}: expected the 9 ImageNet-9 class folders (00_dog ... 08_fish), "
                f"found {len(class_folders)}: {[path.name for path in class_folders]}"
            )
        for position, class_folder in enumerate(class_folders):
            images = list_images(class_folder)
            if not images:
                raise BenchmarkError(f"{class_folder}: no images in this ImageNet-9 class folder")
            chosen = targets[position] if targets is not None else (_nine_class_index(class_folder, class_names),)
            rows += [(path.relative_to(root).as_posix(), chosen, {"variant": variant}) for path in images]
    return from_rows("imagenet9", root, rows, None)


def variant_metrics(
    variants: Sequence[str], right: np.ndarray, groups: Mapping[str, np.ndarray], prefix: str = ""
) -> dict[str, float]:
    """Per group (suffix -> image mask): accuracy per variant, ``bg_gap`` and ``only_bg_accuracy``."""
    variant_of = np.asarray(variants, dtype=object)
    names = list(dict.fromkeys(variants))
    metrics: dict[str, float] = {}
    for suffix, chosen in groups.items():
        accuracy = {
            name: float(right[chosen & (variant_of == name)].mean())
            for name in names
            if (chosen & (variant_of == name)).any()
        }
        metrics |= {f"{prefix}accuracy_{name}{suffix}": round(value, 6) for name, value in accuracy.items()}
        if "mixed_same" in accuracy and "mixed_rand" in accuracy:
            metrics[f"{prefix}bg_gap{suffix}"] = round(accuracy["mixed_same"] - accuracy["mixed_rand"], 6)
        only_bg = next((accuracy[name] for name in ONLY_BG_VARIANTS if name in accuracy), None)
        if only_bg is not None:
            metrics[f"{prefix}only_bg_accuracy{suffix}"] = round(only_bg, 6)
    return metrics
