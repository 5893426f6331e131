"""Tiny benchmark folders in the real layouts (ObjectNet, SI-Score) for protocol and runner tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

AMBULANCE, KOALA = 407, 105  # ImageNet class indices

SI_SCORE_HEADER = "image_id,x_coord,y_coord,area,rotation,foreground_class,foreground_instance,background,bg_resolution_width,bg_resolution_height,pct_inside_image\n"


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (180, 40, 40)).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
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
