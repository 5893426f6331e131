"""``finetune`` section (stage finetune): the shared schedule and one objective per method."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, StrictConfig, format_validation_error, read_params
from pipeline.corruptions.families import FAMILIES
from pipeline.corruptions.ops import CORRUPTION_NAMES


class AugmentConfig(StrictConfig):
    """Applied identically to an image and its mask."""

    flip: bool = True
    min_crop_scale: float = Field(
        0.7, gt=0.0, le=1.0, description="random crop: smallest side, as a share of the image side"
    )


class TrainSchedule(StrictConfig):
    """``finetune.train``: shared by every fine-tuning method, so they differ only in the objective."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    lr_step_epochs: int = Field(5, ge=1, description="step decay: multiply the lr by lr_gamma every this many epochs")
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    select_by: Literal["val_unseen_accuracy", "val_accuracy", "last"] = Field(
        "val_unseen_accuracy", description="which epoch's weights to keep"
    )
    eval_batch_size: int = Field(256, ge=1)
    overlay_images: int = Field(8, ge=0, description="fine-tuning images shown in the relevance overlay grid")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_chance: bool = Field(
        False,
        description="keep a model whose validation accuracy is not above chance, with a warning in the metrics; false: such a run is an error",
    )


class RelevanceObjective(StrictConfig):
    """Concept-guided fine-tuning: push the AttnLRP map of the true class into the masks.

    ``L = w_rel·(w_bg·D(R⊙(1−M), 0) + w_fg·D(R⊙M, M)) + w_cls·CE(z/T, argmax z)`` with D = BCE
    (CFT) or MSE (RobustViT); ``energy`` (Model Guidance) replaces both terms by the share of
    positive relevance outside M. Unset weights take the chosen loss's reference values.

    The defaults are the paper's objective. ``normalisation``, ``anchor`` and the competitor
    penalty are options against its measured flaws (:mod:`pipeline.training.objective` says why each exists).
    """

    objective: Literal["relevance"]
    masks: Literal["concepts", "object"] = Field(
        "concepts", description="concepts: union of concept masks; object: the whole object (fg/bg baseline)"
    )
    loss: Literal["bce", "mse", "energy"] = "bce"
    relevance_weight: float = Field(0.8, ge=0.0)
    background_weight: float | None = Field(None, ge=0.0, description="null: 1.2 for bce, 2.0 for mse, 1.0 for energy")
    foreground_weight: float | None = Field(
        None, ge=0.0, description="null: 0.5 for bce, 0.3 for mse, 0 for energy (it has no foreground term)"
    )
    classification_weight: float = Field(0.2, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    normalisation: Literal["max", "detached_max"] = Field(
        "max",
        description="max: R+ / max R+ (the paper's; the peak is frozen at 1 and the divisor carries gradient); "
        "detached_max: R+ / (max R+ · 1.1) with the max held constant (no effect on energy)",
    )
    anchor: Literal["self_label", "labels", "kl_base"] = Field(
        "self_label",
        description="the classification term: self_label: CE(z/T, argmax z) (the paper's); labels: CE(z/T, y); "
        "kl_base: KL(p_base || p_model) at temperature T, p_base from the frozen base model on the same batch",
    )
    competitor_weight: float = Field(
        0.0,
        ge=0.0,
        description="weight of the penalty on positive relevance off the mask of the top competing classes; 0: off (no extra AttnLRP pass)",
    )
    competitors: int = Field(
        1,
        ge=1,
        description="how many competing classes per image (the highest logits other than the true class) the penalty covers",
    )
    relevance: Literal["attnlrp", "rollout"] = Field(
        "attnlrp",
        description="the map the loss shapes: attnlrp (the paper's text) or rollout, the gradient-weighted attention rollout "
        "of the published code (Chefer et al.; min-max normalised, ViTs only)",
    )

    @model_validator(mode="after")
    def _competitors_need_attnlrp(self) -> RelevanceObjective:
        if self.relevance == "rollout" and self.competitor_weight > 0:
            raise ValueError("competitor_weight needs relevance: attnlrp (the competitor maps are AttnLRP maps)")
        return self

    def weights(self) -> tuple[float, float]:
        reference = {"bce": (1.2, 0.5), "mse": (2.0, 0.3), "energy": (1.0, 0.0)}[self.loss]
        background = reference[0] if self.background_weight is None else self.background_weight
        foreground = reference[1] if self.foreground_weight is None else self.foreground_weight
        return background, foreground


class LabelsObjective(StrictConfig):
    """Plain fine-tuning: cross-entropy on the labels, same images and schedule. With
    ``corruptions``, the corruption baseline: a share of the training images is corrupted first
    (ImageNet-C corruptions, :mod:`pipeline.corruptions`)."""

    objective: Literal["labels"]
    corruptions: list[Literal[CORRUPTION_NAMES]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="ImageNet-C corruptions drawn from per image, or a family (high, low) for all of its corruptions; empty: plain fine-tuning",
    )
    severity: int = Field(3, ge=1, le=5, description="ImageNet-C severity of every corruption")
    corrupted_share: float = Field(0.5, gt=0.0, le=1.0, description="probability that a training image is corrupted")

    @field_validator("corruptions", mode="before")
    @classmethod
    def _families_spelled_out(cls, value: object) -> object:
        """A family name stands for its corruptions, written out so the model artifact lists what it saw."""
        if not isinstance(value, list):
            return value
        names = [
            name for entry in value for name in (FAMILIES.get(entry, (entry,)) if isinstance(entry, str) else (entry,))
        ]
        return list(dict.fromkeys(names))


class RrrObjective(StrictConfig):
    """Right for the Right Reasons (Ross et al. 2017), a peer: cross-entropy on the labels plus
    ``penalty_weight`` × the squared input gradient of the summed log-probabilities outside the
    masks (:mod:`pipeline.training.rrr`). Needs no relevance method."""

    objective: Literal["rrr"]
    masks: Literal["concepts", "object"] = Field(
        "concepts", description="the region the input gradient may use: concept masks, or the whole object"
    )
    penalty_weight: float | None = Field(
        None,
        ge=0.0,
        description="λ of the input-gradient penalty; null: Ross et al.'s rule, both terms of one size: λ = CE / penalty of the base model on the fine-tuning images",
    )


MethodConfig = Annotated[RelevanceObjective | LabelsObjective | RrrObjective, Field(discriminator="objective")]


# Objectives that read masks (relevance alignment and RRR), as opposed to label-only fine-tuning.
MASKED_OBJECTIVES = (RelevanceObjective, RrrObjective)


class FinetuneConfig(StrictConfig):
    """One fine-tuning run: the shared schedule and one method's objective."""

    method: str
    train: TrainSchedule
    objective: MethodConfig


def load_finetune(path: str | Path, method: str) -> FinetuneConfig:
    """``finetune.train`` plus the section ``finetune.<method>``, validated together."""
    path = Path(path)
    section = read_params(path).get("finetune") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: section 'finetune' must be a mapping")
    if method == "base":
        raise ConfigError(f"{path}: 'base' names the base model (models/base); call the method something else")
    if method in ("train", "methods") or method not in section:
        known = [name for name, value in section.items() if isinstance(value, dict) and "objective" in value]
        raise ConfigError(f"{path}: no fine-tuning method 'finetune.{method}'; defined: {known}")
    try:
        return FinetuneConfig.model_validate(
            {"method": method, "train": section.get("train") or {}, "objective": section[method]}
        )
    except ValidationError as exc:
        message = format_validation_error(path, "finetune", exc)
        raise ConfigError(message.replace("finetune.objective", f"finetune.{method}")) from None
