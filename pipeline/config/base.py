"""``base`` section (stage base): the model every later stage starts from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.config import StrictConfig


class TrainPhase(StrictConfig):
    split: str = Field(description="manifest split to train on")
    epochs: int = Field(ge=0)


class BaseConfig(StrictConfig):
    """``base`` section: the model every later stage starts from."""

    model: str = Field("vit_tiny_patch16_224", description="timm model name")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to timm.create_model")
    pretrained: bool = Field(False, description="load timm's pretrained weights (HF hub, or `checkpoint`)")
    checkpoint: str | None = Field(None, description="local weights file (safetensors or torch) instead of the hub")
    classifier_checkpoint: str | None = Field(
        None,
        description="DINOv2 classifiers (dinov2_*_lc): Meta's linear head file, e.g. dinov2_vitb14_linear4_head.pth, on top of `checkpoint`",
    )
    phases: list[TrainPhase] = Field(default_factory=list, description="training phases run in order")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    augment: bool = True
    eval_batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_chance: bool = Field(
        False,
        description="keep a trained model whose accuracy on the held-out val (or test) split is not above chance, with a warning in the metrics; false: an error",
    )

    @model_validator(mode="after")
    def _check_checkpoint(self) -> BaseConfig:
        if self.checkpoint is not None and not self.pretrained:
            raise ValueError("`checkpoint` is set but `pretrained` is false; set pretrained: true to load it")
        if self.classifier_checkpoint is not None and not self.pretrained:
            raise ValueError(
                "`classifier_checkpoint` is set but `pretrained` is false; set pretrained: true to load it"
            )
        return self
