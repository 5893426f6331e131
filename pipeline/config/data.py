"""``data`` section (stage prepare): the built-in world or an image folder, and the fine-tuning subset."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import StrictConfig
from pipeline.data.formats import IMAGE_EXTENSIONS
from pipeline.data.world.splits import OFF_BY_DEFAULT, WORLD_SPLITS

SPLIT_SIZE = {"pretrain": 2000, "train": 5000, "val": 500, "backgrounds": 2100}  # the others: 1000


class WorldConfig(StrictConfig):
    """The built-in spurious-correlation world (see ``pipeline.data.world``)."""

    image_size: int = Field(32, ge=16, le=256, description="side of the square images, pixels")
    classes: list[str] | None = Field(None, description="subset of the world's classes; all when null")
    spurious_p: float = Field(
        0.98, ge=0.0, le=1.0, description="P(background style = the class's own) in biased splits"
    )
    hue_jitter: float = Field(0.06, ge=0.0, le=0.5, description="per-image jitter of the class-typical part hues")
    cue_size: float = Field(
        0.16,
        ge=0.0,
        le=0.4,
        description="side of the class-coloured square cue on the object, as a share of the image side; 0 = no cue",
    )
    cue_p: float | None = Field(
        None, ge=0.0, le=1.0, description="P(the cue is the class's own) in biased splits; null = spurious_p"
    )
    supersample: int = Field(3, ge=1, le=8, description="anti-aliasing: sub-pixels per pixel side")
    split_sizes: dict[str, int] = Field(
        default_factory=lambda: {
            split: 0 if split in OFF_BY_DEFAULT else SPLIT_SIZE.get(split, 1000) for split in WORLD_SPLITS
        },
        description="images per split; 0 = not drawn",
    )

    @property
    def cue_probability(self) -> float:
        return self.spurious_p if self.cue_p is None else self.cue_p

    @model_validator(mode="after")
    def _check_splits(self) -> WorldConfig:
        unknown = sorted(set(self.split_sizes) - set(WORLD_SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; known: {list(WORLD_SPLITS)}")
        for required in ("train", "test"):
            if self.split_sizes.get(required, 0) < 1:
                raise ValueError(f"split '{required}' needs at least one image")
        negative = [name for name, size in self.split_sizes.items() if size < 0]
        if negative:
            raise ValueError(f"split sizes must be >= 0: {negative}")
        cue_splits = [name for name in ("cue_removed", "cue_swapped") if self.split_sizes.get(name, 0) > 0]
        if cue_splits and self.cue_size == 0:
            raise ValueError(f"split(s) {cue_splits} need the cue: set cue_size > 0, or their sizes to 0")
        return self


class SubsetConfig(StrictConfig):
    """Which images fine-tuning sees: a seeded share of the classes ("seen"), k images each.

    The other classes are "unseen": never fine-tuned on, they measure how the method transfers
    and what plain fine-tuning forgets. A few validation images per class pick the best epoch.
    """

    split: str = Field("train", description="split the fine-tuning images are drawn from (world)")
    val_split: str = Field(
        "val",
        description="split the validation images are drawn from (world; image folders: other images of the same folders)",
    )
    seen_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the classes fine-tuned on")
    images_per_class: int = Field(10, ge=1, description="fine-tuning images per seen class (the paper: 3 on ImageNet)")
    val_images_per_class: int = Field(10, ge=1, description="validation images per class (seen and unseen)")
    seed: int = Field(0, ge=0)


class ImageFolderConfig(StrictConfig):
    """A ``root/<class_id>/<image>`` tree: ImageNet train, or a user's own data (nothing is copied)."""

    root: str = Field(description="folder of class folders; relative paths are relative to the project")
    class_names: str | None = Field(
        None,
        description="class id -> readable name file (JSON object, or lines '<id> <name>'); null = ImageNet names for WordNet ids, else the folder names",
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(IMAGE_EXTENSIONS), description="image files, case-insensitive"
    )
    min_side: int = Field(32, ge=1, description="images with a shorter side are replaced (reported as tiny)")


class WaterbirdsConfig(StrictConfig):
    """Waterbirds' released folder: fine-tuning images from its train split, validation from val."""

    root: str = Field(description="waterbird_complete95_forest2water2/ (metadata.csv and the species folders)")
    min_side: int = Field(32, ge=1, description="images with a shorter side are replaced (reported as tiny)")


class PrepareConfig(StrictConfig):
    """``data`` section: where the images come from, and the fine-tuning subset."""

    source: Literal["world", "imagefolder", "waterbirds"] = "world"
    seed: int = Field(0, ge=0)
    world: WorldConfig = Field(default_factory=WorldConfig)
    imagefolder: ImageFolderConfig | None = Field(None, description="used with source: imagefolder")
    waterbirds: WaterbirdsConfig | None = Field(None, description="used with source: waterbirds")
    subset: SubsetConfig = Field(default_factory=SubsetConfig)

    @model_validator(mode="after")
    def _sources_need_a_root(self) -> PrepareConfig:
        if self.source == "imagefolder" and self.imagefolder is None:
            raise ValueError("source imagefolder needs data.imagefolder.root (docs/real-data.md)")
        if self.source == "waterbirds" and self.waterbirds is None:
            raise ValueError("source waterbirds needs data.waterbirds.root (docs/real-data.md)")
        return self
