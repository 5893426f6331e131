"""``analyze`` section (stage analyze): what fine-tuning changed inside each model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import ConfigError, StrictConfig, load_section
from pipeline.config.models import resolve_models
from pipeline.corruptions.families import FAMILIES, KNOWN_CORRUPTIONS


class SaeSettings(StrictConfig):
    """The top-k sparse autoencoder trained on the base model's tokens at one layer."""

    layer: int = Field(-1, description="layer index (negative: from the end) whose output tokens the SAE reads")
    expansion: int = Field(4, ge=1, description="features = expansion × the layer's width")
    k: int = Field(8, ge=1, description="active features per token")
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    max_tokens: int = Field(
        65536, ge=16, description="tokens sampled (seeded) from the probe images to train and test on"
    )


class AnalyzeConfig(StrictConfig):
    """``analyze`` section: the probe images, their corrupted copies and the SAE."""

    models: list[str] | None = Field(
        None,
        min_length=1,
        description="models to analyse, base first; null = base and every method of finetune.methods",
    )
    split: str = Field("test", description="split of the prepared dataset the probe images come from")
    images: int = Field(500, ge=2, description="probe images: the split's first N")
    corruptions: list[str] = Field(
        default_factory=lambda: list(FAMILIES),
        min_length=1,
        description="corruptions or families (high, low); probe image i gets the (i mod n)-th, spelled out",
    )
    severity: int = Field(3, ge=1, le=5)
    seed: int = Field(0, description="seeds the corrupted copies and the SAE")
    batch_size: int = Field(100, ge=1)
    sae: SaeSettings = Field(default_factory=SaeSettings)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _known_corruptions(self) -> AnalyzeConfig:
        unknown = sorted(set(self.applied_corruptions()) - KNOWN_CORRUPTIONS)
        if unknown:
            raise ValueError(
                f"corruptions {unknown}: neither a corruption {sorted(KNOWN_CORRUPTIONS)} nor a family {sorted(FAMILIES)}"
            )
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a model twice: {self.models}")
        return self

    def applied_corruptions(self) -> list[str]:
        return list(dict.fromkeys(name for entry in self.corruptions for name in FAMILIES.get(entry, (entry,))))


def load_analyze(path: str | Path) -> AnalyzeConfig:
    """The ``analyze`` section, with ``models`` checked against ``finetune.methods`` (base first)."""
    config = load_section(path, "analyze", AnalyzeConfig)
    models = resolve_models(path, "analyze", config.models)
    if models[0] != "base":
        raise ConfigError(f"{path}: analyze.models must start with 'base' (every comparison is against it)")
    return config.model_copy(update={"models": models})
