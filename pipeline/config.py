"""Typed, validated configuration: one model per ``params.yaml`` section (one per stage).

Unknown keys and out-of-range values are errors that name the file and the dotted key, so a typo
such as ``base.learning_rte`` fails loudly instead of silently running with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

WORLD_SPLITS = (
    "pretrain",
    "train",
    "val",
    "test",
    "random_bg",
    "swapped_bg",
    "rendition",
    "sketch",
    "pose_sweep",
    "scene",
)


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the offending key."""


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(StrictConfig):
    """The built-in spurious-correlation world (see ``pipeline.world``)."""

    image_size: int = Field(32, ge=16, le=256, description="side of the square images, pixels")
    classes: list[str] | None = Field(None, description="subset of the world's classes; all when null")
    spurious_p: float = Field(0.95, ge=0.0, le=1.0, description="P(background style = the class's own) in biased splits")
    hue_jitter: float = Field(0.06, ge=0.0, le=0.5, description="per-image jitter of the class-typical part hues")
    supersample: int = Field(3, ge=1, le=8, description="anti-aliasing: sub-pixels per pixel side")
    split_sizes: dict[str, int] = Field(
        default_factory=lambda: {
            "pretrain": 2000,
            "train": 5000,
            "val": 500,
            "test": 1000,
            "random_bg": 1000,
            "swapped_bg": 1000,
            "rendition": 1000,
            "sketch": 1000,
            "pose_sweep": 1000,
            "scene": 1000,
        }
    )

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
        return self


class PrepareConfig(StrictConfig):
    """``data`` section: where the images come from."""

    source: Literal["world"] = "world"
    seed: int = Field(0, ge=0)
    world: WorldConfig = Field(default_factory=WorldConfig)


class TrainPhase(StrictConfig):
    split: str = Field(description="manifest split to train on")
    epochs: int = Field(ge=0)


class BaseConfig(StrictConfig):
    """``base`` section: the model every later stage starts from."""

    model: str = Field("vit_tiny_patch16_224", description="timm model name")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to timm.create_model")
    pretrained: bool = Field(False, description="load timm's pretrained weights (HF hub, or `checkpoint`)")
    checkpoint: str | None = Field(None, description="local weights file (safetensors or torch) instead of the hub")
    phases: list[TrainPhase] = Field(default_factory=list, description="training phases run in order")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    augment: bool = True
    eval_batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check_checkpoint(self) -> BaseConfig:
        if self.checkpoint is not None and not self.pretrained:
            raise ValueError("`checkpoint` is set but `pretrained` is false; set pretrained: true to load it")
        return self


Config = TypeVar("Config", bound=StrictConfig)


def _format_error(path: Path, section: str, error: ValidationError) -> str:
    lines = [f"{path}: invalid section '{section}':"]
    for item in error.errors():
        key = ".".join([section, *(str(part) for part in item["loc"])])
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_section(path: str | Path, section: str, config_type: type[Config]) -> Config:
    """Load and validate one section of a params file; a missing section means all defaults."""
    path = Path(path)
    raw = read_params(path).get(section, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: section '{section}' must be a mapping, got {type(raw).__name__}")
    try:
        return config_type.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, section, exc)) from None
