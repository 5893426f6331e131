"""Tiny benchmark folders in the real layouts (ObjectNet, SI-Score, ImageNet-9) for protocol and runner tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

AMBULANCE, KOALA = 407, 105  # ImageNet class indices
# The released bg_challenge class folders (ImageFolder order = super-class)
IN9_FOLDERS = (
    "00_dog",
    "01_bird",
    "02_wheeled vehicle",
    "03_reptile",
    "04_carnivore",
    "05_insect",
    "06_musical instrument",
    "07_primate",
    "08_fish",
)

SI_SCORE_HEADER = "image_id,x_coord,y_coord,area,rotation,foreground_class,foreground_instance,background,bg_resolution_width,bg_resolution_height,pct_inside_image\n"


def write_image(path: Path, color: tuple[int, int, int] = (180, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def write_objectnet(root: Path) -> None:
    for name in ("alarm_clock/1.png", "alarm_clock/2.png", "banana/3.png", "squeegee/4.png", "squeegee/5.png"):
        write_image(root / "images" / name)


def write_si_score(root: Path) -> None:
    """The S3 layout (object_size/, object_rotation/) and a TFDS-zip one (location/location20_area02_min0pc/)."""
    size = root / "object_size"
    for name in ("ambulance/0.jpg", "ambulance/1.jpg", "koala/2.jpg"):
        write_image(size / name)
    (size / "metadata.csv").write_text(
        SI_SCORE_HEADER + "0,0.5,0.5,0.2,0,0,0,3,500,500,1.0\n1,0.5,0.5,0.5,0,0,1,2,500,500,1.0\n"
        "2,0.5,0.5,0.2,0,1,0,1,500,500,1.0\n"
    )
    (size / "foreground_classes.csv").write_text(f"int,label\n{AMBULANCE},ambulance\n{KOALA},koala\n")
    rotation = root / "object_rotation"
    for name in ("koala/0.jpg", "koala/1.jpg", "ambulance/2.jpg"):
        write_image(rotation / name)
    (rotation / "metadata.csv").write_text(
        SI_SCORE_HEADER + "0,0.5,0.5,0.2,1,1,0,0,500,500,1.0\n1,0.5,0.5,0.2,181,1,0,1,500,500,1.0\n"
        "2,0.5,0.5,0.2,21,0,0,2,500,500,1.0\n"
    )
    location = root / "location" / "location20_area02_min0pc"
    for name in ("koala/7.jpg", "koala/8.jpg"):
        write_image(location / name)
    (location / "metadata.csv").write_text(
        SI_SCORE_HEADER + "7,0.05,0.95,0.2,0,0,0,0,500,500,0.97\n8,0.25,0.5,0.2,0,0,0,1,500,500,1.0\n"
    )
    write_image(root / "backgrounds" / "beach2.jpg")  # a download beside the datasets, not a factor


def write_imagenet9(root: Path, variants: tuple[str, ...], images_per_class: int = 1) -> None:
    """``<variant>/val/<class folder>/<image>.JPEG`` for each variant, and the ``fg_mask`` folder the
    release also holds (not a variant)."""
    for v, variant in enumerate((*variants, "fg_mask")):
        for k, folder in enumerate(IN9_FOLDERS):
            for index in range(images_per_class):
                color = (25 * k, 30 * v, 60 * index)  # images differ, so a model's predictions can too
                write_image(root / variant / "val" / folder / f"n0000_{index}.JPEG", color)


def write_waterbirds(root: Path, rows: list[tuple[str, int, int, int]]) -> None:
    """``metadata.csv`` (img_id, img_filename, y, split, place) and an image per row; rows are
    (file, y, split, place)."""
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for number, (file, y, split, place) in enumerate(rows, start=1):
        write_image(root / file, (40 * y, 90, 200 * place))
        lines.append(f"{number},{file},{y},{split},{place},/b/bamboo_forest/00000{number}.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def write_hard_imagenet(root: Path, imagenet: Path, wnids: dict[int, str], split: str, per_class: int = 2) -> None:
    """``meta/idx_to_wnid.pkl``, ``meta/hard_imagenet_idx.pkl`` (the indices of ``wnids``) and, per
    class, ``per_class`` images ``<imagenet>/<split>/<wnid>/<file>`` (unless there) with their masks
    ``<root>/<split>/<wnid>_<file>`` (a centred square)."""
    import pickle

    import numpy as np

    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "idx_to_wnid.pkl").write_bytes(pickle.dumps(dict(wnids)))
    (root / "meta" / "hard_imagenet_idx.pkl").write_bytes(pickle.dumps(list(wnids)))
    (root / split).mkdir(parents=True, exist_ok=True)
    for wnid in wnids.values():
        folder = imagenet / split / wnid
        existing = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
        names = [path.name for path in existing[:per_class]]
        for index in range(len(names), per_class):
            names.append(write_image(folder / f"{wnid}_{index}.JPEG", (30 * index, 120, 60)).name)
        for name in names:
            with Image.open(folder / name) as image:
                width, height = image.size
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
            Image.fromarray(mask).save(root / split / f"{wnid}_{name}", format="PNG")
