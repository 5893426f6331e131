"""``masks`` section (stage masks): the backend (annotated or Grounded-SAM) and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import StrictConfig


class GroundingDinoConfig(StrictConfig):
    """GroundingDINO: one text prompt per concept -> boxes."""

    config: str = Field(
        "GroundingDINO_SwinT_OGC.py",
        description="a config shipped with groundingdino-py (by file name) or a path to one",
    )
    checkpoint: Path | None = Field(None, description="weights file, e.g. data/weights/groundingdino_swint_ogc.pth")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="expected checksum of the checkpoint; null = record it, do not check",
    )
    text_encoder: str = Field(
        "bert-base-uncased", description="Hugging Face id (loaded from the HF cache) or a local directory"
    )
    image_size: int = Field(
        800, ge=64, le=2048, description="shorter image side fed to the detector (GroundingDINO's own: 800)"
    )
    max_size: int = Field(1333, ge=64, le=4096, description="cap on the longer side")
    box_threshold: float = Field(0.35, ge=0.0, le=1.0, description="a box is kept if its best token score exceeds this")
    text_threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="... and its best score on the concept's own words exceeds this"
    )
    max_boxes: int = Field(8, ge=1, le=900, description="per concept and image: the best-scoring boxes kept")


class SamConfig(StrictConfig):
    """Segment Anything: boxes -> masks (one image embedding per image)."""

    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: Path | None = Field(None, description="weights file, e.g. data/weights/sam_vit_h_4b8939.pth")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="expected checksum of the checkpoint; null = record it, do not check",
    )
    images_per_batch: int = Field(4, ge=1, le=256, description="images embedded together by SAM's encoder")
    boxes_per_batch: int = Field(64, ge=1, le=4096, description="boxes decoded together (memory knob)")


class GroundedSamConfig(StrictConfig):
    grounding: GroundingDinoConfig = Field(default_factory=GroundingDinoConfig)
    sam: SamConfig = Field(default_factory=SamConfig)
    device: str = Field("auto", description="auto = cuda when available (bf16 autocast), else cpu")
    images_per_part: int = Field(
        64, ge=1, description="resume granularity: results are saved after every this many images"
    )


class AnnotatedMasksConfig(StrictConfig):
    """``masks.annotated``: degrade the data's exact part masks the way Grounded-SAM errs on real
    images (missed small parts, masks leaking into their box, jittered boundaries; see
    :mod:`pipeline.masks.noise`), to measure the method under realistic masks."""

    noise: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="0 = the exact masks; 1 = every found mask is its enlarged box, and the most parts missed",
    )
    seed: int = Field(0, ge=0, description="noise draws are deterministic in (seed, image id, concept)")


class MasksConfig(StrictConfig):
    """``masks`` section: one mask per (fine-tuning image, concept of its class)."""

    backend: Literal["annotated", "grounded_sam"] = Field(
        "annotated", description="annotated: part masks that come with the data; grounded_sam: GroundingDINO + SAM"
    )
    resolution: int | None = Field(None, ge=8, le=1024, description="mask side in pixels; null = the image size")
    on_all_missing: Literal["skip", "object"] = Field(
        "object",
        description="an image none of whose concepts is found: skip it in fine-tuning, or use the whole object "
        "(grounded_sam: the prompt object_prompt; annotated: the data's object mask)",
    )
    object_prompt: str = Field("{class}", description="prompt for the whole object, {class} = the readable class name")
    grounded_sam: GroundedSamConfig = Field(default_factory=GroundedSamConfig)
    annotated: AnnotatedMasksConfig = Field(
        default_factory=AnnotatedMasksConfig, description="backend annotated: simulated Grounded-SAM errors"
    )

    @model_validator(mode="after")
    def _grounded_sam_needs_checkpoints(self) -> MasksConfig:
        if self.backend == "grounded_sam" and self.annotated.noise > 0:
            raise ValueError(
                "annotated.noise simulates Grounded-SAM's errors on the annotated backend's exact masks; backend grounded_sam makes real ones: set it to 0"
            )
        if self.backend == "grounded_sam":
            missing = [
                f"grounded_sam.{name}.checkpoint"
                for name, part in (("grounding", self.grounded_sam.grounding), ("sam", self.grounded_sam.sam))
                if part.checkpoint is None
            ]
            if missing:
                raise ValueError(f"backend grounded_sam needs {' and '.join(missing)} (see docs/grounded-sam.md)")
        if "{class}" not in self.object_prompt:
            raise ValueError("object_prompt must contain {class}")
        return self
