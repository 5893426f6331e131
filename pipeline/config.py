"""Typed, validated configuration: one model per ``params.yaml`` section (one per stage).

Unknown keys and out-of-range values are errors that name the file and the dotted key, so a typo
such as ``base.learning_rte`` fails loudly instead of silently running with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

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
    "cue_removed",
    "cue_swapped",
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
    cue_size: float = Field(0.16, ge=0.0, le=0.4, description="side of the class-coloured square cue on the object, as a share of the image side; 0 = no cue")
    cue_p: float | None = Field(None, ge=0.0, le=1.0, description="P(the cue is the class's own) in biased splits; null = spurious_p")
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
            "cue_removed": 1000,
            "cue_swapped": 1000,
        }
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
    val_split: str = Field("val", description="split the validation images are drawn from (world; image folders: other images of the same folders)")
    seen_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of the classes fine-tuned on")
    images_per_class: int = Field(3, ge=1, description="fine-tuning images per seen class")
    val_images_per_class: int = Field(10, ge=1, description="validation images per class (seen and unseen)")
    seed: int = Field(0, ge=0)


class ImageFolderConfig(StrictConfig):
    """A ``root/<class_id>/<image>`` tree: ImageNet train, or a user's own data (nothing is copied)."""

    root: str = Field(description="folder of class folders; relative paths are relative to the project")
    class_names: str | None = Field(
        None, description="class id -> readable name file (JSON object, or lines '<id> <name>'); null = ImageNet names for WordNet ids, else the folder names"
    )
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".webp"], description="image files, case-insensitive")
    min_side: int = Field(32, ge=1, description="images with a shorter side are replaced (reported as tiny)")


class PrepareConfig(StrictConfig):
    """``data`` section: where the images come from, and the fine-tuning subset."""

    source: Literal["world", "imagefolder"] = "world"
    seed: int = Field(0, ge=0)
    world: WorldConfig = Field(default_factory=WorldConfig)
    imagefolder: ImageFolderConfig | None = Field(None, description="used with source: imagefolder")
    subset: SubsetConfig = Field(default_factory=SubsetConfig)

    @model_validator(mode="after")
    def _imagefolder_needs_root(self) -> PrepareConfig:
        if self.source == "imagefolder" and self.imagefolder is None:
            raise ValueError("source imagefolder needs data.imagefolder.root (README: Real data: ImageNet and the OOD benchmarks)")
        return self


class TrainPhase(StrictConfig):
    split: str = Field(description="manifest split to train on")
    epochs: int = Field(ge=0)


class BaseConfig(StrictConfig):
    """``base`` section: the model every later stage starts from."""

    model: str = Field("vit_tiny_patch16_224", description="timm model name")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to timm.create_model")
    pretrained: bool = Field(False, description="load timm's pretrained weights (HF hub, or `checkpoint`)")
    checkpoint: str | None = Field(None, description="local weights file (safetensors or torch) instead of the hub")
    classifier_checkpoint: str | None = Field(None, description="DINOv2 classifiers (dinov2_*_lc): Meta's linear head file, e.g. dinov2_vitb14_linear4_head.pth, on top of `checkpoint`")
    phases: list[TrainPhase] = Field(default_factory=list, description="training phases run in order")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    augment: bool = True
    eval_batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_chance: bool = Field(
        False, description="keep a trained model whose accuracy on the held-out val (or test) split is not above chance, with a warning in the metrics; false: an error"
    )

    @model_validator(mode="after")
    def _check_checkpoint(self) -> BaseConfig:
        if self.checkpoint is not None and not self.pretrained:
            raise ValueError("`checkpoint` is set but `pretrained` is false; set pretrained: true to load it")
        if self.classifier_checkpoint is not None and not self.pretrained:
            raise ValueError("`classifier_checkpoint` is set but `pretrained` is false; set pretrained: true to load it")
        return self


DEFAULT_CONTEXT_TERMS = [
    "background", "habitat", "environment", "surroundings", "scene", "setting", "water", "sky", "ground",
    "grass", "sand", "soil", "forest", "field", "road", "street", "weather", "ocean", "sea", "river",
    "lake", "snow", "cloud", "clouds", "indoors", "outdoors", "owner", "person", "people", "hand",
]


class ConceptFilterConfig(StrictConfig):
    """``concepts.filters``: applied to every proposed list, each drop reported per class."""

    max_chars: int = Field(30, ge=3, description="drop concepts longer than this")
    max_concepts: int = Field(8, ge=1, description="keep at most this many per class (first proposed first)")
    drop_class_name: bool = Field(True, description="drop concepts that contain a word of the class's name")
    context_terms: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTEXT_TERMS), description="a concept with one of these words is context, not a part")


class LlmConfig(StrictConfig):
    """``concepts.llm``: any litellm model; keys come from the provider's usual environment variable."""

    model: str = Field("openai/gpt-4o-mini", description="litellm model name, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest, ollama_chat/llama3.1")
    api_base: str | None = Field(None, description="OpenAI-compatible server URL (vLLM, Ollama, a proxy); null = the provider's")
    api_key_env: str | None = Field(None, description="environment variable holding the key; null = litellm's default for the provider")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    samples: int = Field(1, ge=1, le=20, description="answers per class, merged in order (samples > 1 needs temperature > 0)")
    max_tokens: int = Field(400, ge=16)
    json_schema: bool = Field(True, description="ask for a JSON-schema answer (response_format); answers are validated either way")
    few_shot: bool = Field(True, description="show two worked examples in the prompt")
    timeout_s: float = Field(60.0, gt=0.0)
    max_retries: int = Field(4, ge=0, description="retries of transient errors (timeout, rate limit, connection, 5xx) and invalid answers")
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubled after each retry")
    concurrency: int = Field(8, ge=1, description="classes asked at the same time")
    cache_dir: str | None = Field(".cache/llm", description="litellm disk cache: reruns and colleagues reuse answers; null = off")
    on_invalid: Literal["fail", "fallback"] = Field("fail", description="a class with no valid answer: fail listing the classes, or use the fallback concept")
    fallback_concept: str = Field("{class}", description="fallback: this concept ({class} = the class name)")


class ConceptsConfig(StrictConfig):
    """``concepts`` section: the visual parts that identify each class."""

    source: Literal["catalog", "llm"] = Field("catalog", description="catalog: a YAML file or the dataset's own catalog; llm: ask a language model")
    catalog: str | None = Field(None, description="YAML file class -> list of concepts; null = the dataset's catalog")
    llm: LlmConfig = Field(default_factory=LlmConfig)
    filters: ConceptFilterConfig = Field(default_factory=ConceptFilterConfig)


class GroundingDinoConfig(StrictConfig):
    """GroundingDINO: one text prompt per concept -> boxes."""

    config: str = Field("GroundingDINO_SwinT_OGC.py", description="a config shipped with groundingdino-py (by file name) or a path to one")
    checkpoint: Path | None = Field(None, description="weights file, e.g. data/weights/groundingdino_swint_ogc.pth")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected checksum of the checkpoint; null = record it, do not check")
    text_encoder: str = Field("bert-base-uncased", description="Hugging Face id (loaded from the HF cache) or a local directory")
    image_size: int = Field(800, ge=64, le=2048, description="shorter image side fed to the detector (GroundingDINO's own: 800)")
    max_size: int = Field(1333, ge=64, le=4096, description="cap on the longer side")
    box_threshold: float = Field(0.35, ge=0.0, le=1.0, description="a box is kept if its best token score exceeds this")
    text_threshold: float = Field(0.25, ge=0.0, le=1.0, description="... and its best score on the concept's own words exceeds this")
    max_boxes: int = Field(8, ge=1, le=900, description="per concept and image: the best-scoring boxes kept")


class SamConfig(StrictConfig):
    """Segment Anything: boxes -> masks (one image embedding per image)."""

    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: Path | None = Field(None, description="weights file, e.g. data/weights/sam_vit_h_4b8939.pth")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected checksum of the checkpoint; null = record it, do not check")
    images_per_batch: int = Field(4, ge=1, le=256, description="images embedded together by SAM's encoder")
    boxes_per_batch: int = Field(64, ge=1, le=4096, description="boxes decoded together (memory knob)")


class GroundedSamConfig(StrictConfig):
    grounding: GroundingDinoConfig = Field(default_factory=GroundingDinoConfig)
    sam: SamConfig = Field(default_factory=SamConfig)
    device: str = Field("auto", description="auto = cuda when available (bf16 autocast), else cpu")
    images_per_part: int = Field(64, ge=1, description="resume granularity: results are saved after every this many images")


class AnnotatedMasksConfig(StrictConfig):
    """``masks.annotated``: degrade the data's exact part masks the way Grounded-SAM errs on real
    images (missed small parts, masks leaking into their box, jittered boundaries; see
    :mod:`pipeline.mask_noise`), to measure the method under realistic masks."""

    noise: float = Field(0.0, ge=0.0, le=1.0, description="0 = the exact masks; 1 = every found mask is its enlarged box, and the most parts missed")
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
    annotated: AnnotatedMasksConfig = Field(default_factory=AnnotatedMasksConfig, description="backend annotated: simulated Grounded-SAM errors")

    @model_validator(mode="after")
    def _grounded_sam_needs_checkpoints(self) -> MasksConfig:
        if self.backend == "grounded_sam" and self.annotated.noise > 0:
            raise ValueError("annotated.noise simulates Grounded-SAM's errors on the annotated backend's exact masks; backend grounded_sam makes real ones: set it to 0")
        if self.backend == "grounded_sam":
            missing = [f"grounded_sam.{name}.checkpoint" for name, part in (("grounding", self.grounded_sam.grounding), ("sam", self.grounded_sam.sam)) if part.checkpoint is None]
            if missing:
                raise ValueError(f"backend grounded_sam needs {' and '.join(missing)} (see README: Masks from Grounded-SAM)")
        if "{class}" not in self.object_prompt:
            raise ValueError("object_prompt must contain {class}")
        return self


class AugmentConfig(StrictConfig):
    """Applied identically to an image and its mask."""

    flip: bool = True
    min_crop_scale: float = Field(0.7, gt=0.0, le=1.0, description="random crop: smallest side, as a share of the image side")


class TrainSchedule(StrictConfig):
    """``finetune.train``: shared by every fine-tuning method, so they differ only in the objective."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
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
        False, description="keep a model whose validation accuracy is not above chance, with a warning in the metrics; false: such a run is an error"
    )


class RelevanceObjective(StrictConfig):
    """Concept-guided fine-tuning: push the AttnLRP map of the true class into the masks.

    ``L = w_rel·(w_bg·D(R⊙(1−M), 0) + w_fg·D(R⊙M, M)) + w_cls·CE(z/T, argmax z)`` with D = BCE
    (CFT) or MSE (RobustViT); ``energy`` (Model Guidance) replaces both terms by the share of
    positive relevance outside M. Unset weights take the chosen loss's reference values.

    The defaults are the paper's objective. ``normalisation``, ``anchor`` and the competitor
    penalty are options against its measured flaws (:mod:`pipeline.objective` says why each exists).
    """

    objective: Literal["relevance"]
    masks: Literal["concepts", "object"] = Field("concepts", description="concepts: union of concept masks; object: the whole object (fg/bg baseline)")
    loss: Literal["bce", "mse", "energy"] = "bce"
    relevance_weight: float = Field(0.8, ge=0.0)
    background_weight: float | None = Field(None, ge=0.0, description="null: 1.2 for bce, 2.0 for mse, 1.0 for energy")
    foreground_weight: float | None = Field(None, ge=0.0, description="null: 0.5 for bce, 0.3 for mse, 0 for energy (it has no foreground term)")
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
    competitor_weight: float = Field(0.0, ge=0.0, description="weight of the penalty on positive relevance off the mask of the top competing classes; 0: off (no extra AttnLRP pass)")
    competitors: int = Field(1, ge=1, description="how many competing classes per image (the highest logits other than the true class) the penalty covers")
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


CORRUPTION_NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "contrast", "pixelate")


class LabelsObjective(StrictConfig):
    """Plain fine-tuning: cross-entropy on the labels, same images and schedule. With
    ``corruptions``, the corruption baseline: a share of the training images is corrupted first
    (ImageNet-C corruptions, :mod:`pipeline.corruptions`)."""

    objective: Literal["labels"]
    corruptions: list[Literal[CORRUPTION_NAMES]] = Field(default_factory=list, description="ImageNet-C corruptions drawn from per image; empty: plain fine-tuning")  # type: ignore[valid-type]
    severity: int = Field(3, ge=1, le=5, description="ImageNet-C severity of every corruption")
    corrupted_share: float = Field(0.5, gt=0.0, le=1.0, description="probability that a training image is corrupted")


class RrrObjective(StrictConfig):
    """Right for the Right Reasons (Ross et al. 2017), a peer: cross-entropy on the labels plus
    ``penalty_weight`` × the squared input gradient of the summed log-probabilities outside the
    masks (:mod:`pipeline.rrr`). Needs no relevance method."""

    objective: Literal["rrr"]
    masks: Literal["concepts", "object"] = Field("concepts", description="the region the input gradient may use: concept masks, or the whole object")
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


BENCHMARK_KINDS = ("split", "imagefolder", "imagenet_v2", "imagenet_a", "imagenet_r", "objectnet", "si_score", "imagenet_segmentation")
WORLD_BENCHMARKS = ("test", "random_bg", "swapped_bg", "rendition", "sketch", "pose_sweep", "scene", "cue_removed", "cue_swapped")


class BenchmarkConfig(StrictConfig):
    """One evaluation set: a split of the prepared dataset, or a benchmark on disk (README: Real data: ImageNet and the OOD benchmarks)."""

    kind: Literal["split", "imagefolder", "imagenet_v2", "imagenet_a", "imagenet_r", "objectnet", "si_score", "imagenet_segmentation"] = Field(
        description="split: a split of the prepared dataset; the others: a dataset at `path` in its own layout"
    )
    path: str | None = Field(None, description="the benchmark's folder (gtsegs_ijcv.mat for imagenet_segmentation)")
    split: str | None = Field(None, description="kind split: the manifest split; null = the benchmark's name")
    limit: int | None = Field(None, ge=1, description="evaluate this many images, spread evenly over the benchmark (a quick look)")
    ood_mean: bool = Field(True, description="count it in the out-of-distribution means; false: reported apart (e.g. a benchmark every model fails)")

    @model_validator(mode="after")
    def _path_for_datasets(self) -> BenchmarkConfig:
        if self.kind == "split" and self.path is not None:
            raise ValueError("kind split reads the prepared dataset; `path` is for benchmarks on disk")
        if self.kind != "split" and self.path is None:
            raise ValueError(f"kind {self.kind} needs `path` (README: Real data: ImageNet and the OOD benchmarks)")
        if self.kind != "split" and self.split is not None:
            raise ValueError("`split` is only for kind split")
        return self


class EvaluateConfig(StrictConfig):
    """``evaluate`` section: settings shared by every benchmark, and the benchmarks (one DVC stage each)."""

    benchmarks: dict[str, BenchmarkConfig] = Field(
        default_factory=lambda: {name: BenchmarkConfig(kind="split") for name in WORLD_BENCHMARKS},
        description="name -> benchmark; `dvc repro` runs evaluate@<benchmark>-<model> for each benchmark and model",
    )
    models: list[str] | None = Field(
        None,
        min_length=1,
        description="models to evaluate, each read from models/<name>: base and methods of finetune.methods; null = all of them (dvc.yaml needs the list written out)",
    )
    relevance: bool = Field(True, description="also measure relevance against object masks where a benchmark has them")
    relevance_target: Literal["predicted", "label"] = Field("predicted", description="class whose relevance is measured (predicted: the segmentation protocol)")
    in_distribution: str | None = Field("test", description="benchmark whose accuracy on unseen classes measures forgetting; the others are out of distribution")
    shortcut_tests: dict[str, str] = Field(
        default_factory=dict,
        description="name -> benchmark that takes one shortcut away (e.g. cue: cue_swapped); the metrics get <name>_drop = in-distribution accuracy minus its accuracy",
    )
    batch_size: int = Field(256, ge=1)
    relevance_batch_size: int = Field(64, ge=1, description="relevance passes cost ~8 forward passes; small batches are faster on CPU")
    relevance_images: int | None = Field(500, ge=1, description="relevance metrics on the first N images of each benchmark; null = all")
    overlay_images: int = Field(8, ge=0, description="images in each benchmark's relevance overlay (benchmarks with masks)")
    workers: int | None = Field(None, ge=0, description="decoding processes; null = up to 8 CPU cores, 0 = in the main process")
    part_size: int = Field(2048, ge=1, description="resume granularity: results are saved after every this many images")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _known_in_distribution(self) -> EvaluateConfig:
        if self.in_distribution is not None and self.in_distribution not in self.benchmarks:
            raise ValueError(f"in_distribution {self.in_distribution!r} is not one of the benchmarks {sorted(self.benchmarks)}")
        unknown = {name: benchmark for name, benchmark in self.shortcut_tests.items() if benchmark not in self.benchmarks}
        if unknown:
            raise ValueError(f"shortcut_tests {unknown} name benchmark(s) not in the benchmarks {sorted(self.benchmarks)}: list only evaluated benchmarks (or none: {{}})")
        if self.shortcut_tests and self.in_distribution is None:
            raise ValueError("shortcut_tests compare with the in-distribution accuracy: set in_distribution")
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a model twice: {self.models}")
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
        return FinetuneConfig.model_validate({"method": method, "train": section.get("train") or {}, "objective": section[method]})
    except ValidationError as exc:
        message = _format_error(path, "finetune", exc)
        raise ConfigError(message.replace("finetune.objective", f"finetune.{method}")) from None


def load_evaluate(path: str | Path) -> EvaluateConfig:
    """The ``evaluate`` section, with ``evaluate.models`` checked against ``finetune.methods``."""
    config = load_section(path, "evaluate", EvaluateConfig)
    methods = (read_params(path).get("finetune") or {}).get("methods") or []
    if config.models is None:
        config = config.model_copy(update={"models": ["base", *methods]})
    assert config.models is not None
    unknown = [name for name in config.models if name != "base" and name not in methods]
    if unknown:
        raise ConfigError(f"{path}: evaluate.models {unknown} are neither 'base' nor in finetune.methods {methods}")
    return config
