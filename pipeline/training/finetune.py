"""Fine-tuning the base model on the subset: concept-guided (relevance), Right for the Right
Reasons (input gradients), or on the labels (plain, or on a share of corrupted images: the
corruption baseline).

Both methods share the schedule (``finetune.train``): same images, augmentation, optimiser
(AdamW), step decay and epoch selection, so they differ only in the objective. After every epoch
the full training state is checkpointed; a rerun with the same inputs resumes from it and ends
with the same weights as an uninterrupted run.

A run stops with an error (a ValueError: the stage prints one line and exits 2) when its loss
stops being finite, and when the kept model is at chance on the validation images
(:func:`pipeline.training.loop.chance_test`) unless ``finetune.train.allow_chance`` keeps it, with a
warning in the summary.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.config.finetune import (
    MASKED_OBJECTIVES,
    AugmentConfig,
    FinetuneConfig,
    LabelsObjective,
    MethodConfig,
    RelevanceObjective,
    RrrObjective,
)
from pipeline.corruptions.ops import corrupt_batch
from pipeline.data.array_store import StoreError
from pipeline.data.datasets import ArraySplit, has_image_files, load_images, object_masks, rows_by_id
from pipeline.data.manifest import read_manifest
from pipeline.data.preprocess import InputTransform
from pipeline.data.subset import read_subset, subset_ids
from pipeline.masks.annotated import resize_masks
from pipeline.masks.store import MaskStore
from pipeline.models.factory import load_model_artifact
from pipeline.relevance.attnlrp import attnlrp
from pipeline.relevance.maps import relevance_maps
from pipeline.relevance.rollout import rollout
from pipeline.training.loop import TrainingError, accuracy, chance_test, joint_augment, shuffled_batches, train_epoch
from pipeline.training.objective import background_share, competitor_relevance, relevance_loss
from pipeline.training.rrr import calibrated_weight, log_probability_input_gradient, rrr_objective
from pipeline.training.state import TrainingState
from pipeline.utils.checkpoint import fingerprint, source_digest
from pipeline.utils.device import Normalizer, autocast, resolve_device, seed_everything
from pipeline.utils.distributed import Ranks
from pipeline.utils.errors import CftError


@dataclass
class FinetuneInputs:
    base_model: Path
    dataset: Path  # the prepared dataset directory (manifest.parquet)
    subset: Path  # subset.parquet
    masks: Path | None  # mask store directory; needed by relevance objectives with concept masks


@dataclass
class FinetuneOutcome:
    model: torch.nn.Module
    spec: dict[str, Any]
    curves: list[dict[str, Any]]
    best_epoch: int
    overlay: dict[str, Any]  # images, masks, relevance before and after, class names: for the picture
    summary: dict[str, Any] = field(default_factory=dict)


def _training_masks(
    config: FinetuneConfig,
    inputs: FinetuneInputs,
    data: ArraySplit,
    whole_objects: np.ndarray | None,
    manifest: Any,
    transform: InputTransform | None,
) -> np.ndarray:
    """(N, H, W) bool at image size: the masks relevance is pulled into (all-ones for plain runs)."""
    size = data.images.shape[1:3]
    objective = config.objective
    if not isinstance(objective, MASKED_OBJECTIVES):
        return np.ones((len(data), *size), dtype=bool)
    if objective.masks == "object":
        if whole_objects is None:
            raise CftError(
                f"finetune.{config.method}: masks: object needs a part-annotated dataset; {inputs.dataset} has no object masks"
            )
        return whole_objects
    if inputs.masks is None:
        raise CftError(f"finetune.{config.method}: concept masks are needed; pass the mask store (--masks)")
    return align_masks(
        MaskStore(inputs.masks).union(data.image_ids), rows_by_id(manifest, data.image_ids), transform, size
    )


def align_masks(masks: np.ndarray, rows: Any, transform: InputTransform | None, size: tuple[int, int]) -> np.ndarray:
    """Stored masks -> the model's input geometry: image files go through their image's own
    resize and crop (the store keeps them stretched to a square); array images are resized."""
    if transform is None:
        return resize_masks(masks, size)
    heights, widths = rows.column("height").to_pylist(), rows.column("width").to_pylist()
    return np.stack(
        [transform.mask(mask, height, width) for mask, height, width in zip(masks, heights, widths, strict=True)]
    )


def _with_masks(config: FinetuneConfig, inputs: FinetuneInputs, data: ArraySplit) -> ArraySplit:
    """The images that have a usable concept mask (QC in `cft masks`); the others cannot guide relevance."""
    objective = config.objective
    if not isinstance(objective, MASKED_OBJECTIVES) or objective.masks != "concepts" or inputs.masks is None:
        return data
    keep = MaskStore(inputs.masks).usable(data.image_ids)
    if keep.all():
        return data
    if not keep.any():
        raise CftError(f"{inputs.masks}: no fine-tuning image has a usable concept mask (see masks.parquet)")
    tqdm.write(
        f"finetune/{config.method}: {int((~keep).sum())} image(s) without a usable concept mask are left out (see {inputs.masks}/masks.parquet)"
    )
    return ArraySplit(data.images[keep], data.labels[keep], [i for i, k in zip(data.image_ids, keep, strict=True) if k])


def _object_masks(inputs: FinetuneInputs, data: ArraySplit, manifest: Any) -> np.ndarray | None:
    """Whole-object masks when the dataset is part-annotated (the world), else None."""
    try:
        return object_masks(inputs.dataset, rows_by_id(manifest, data.image_ids))
    except StoreError:
        return None


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The base model as the ``kl_base`` anchor's reference: a copy in eval mode, without gradients."""
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


def _shown(names: list[str]) -> str:
    return str(names) if len(names) <= 6 else f"[{', '.join(names[:3])}, ... {len(names)} in all]"


def overlay_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` image indices taking the classes in turn, so the picture shows every class."""
    per_class = [np.flatnonzero(labels == label).tolist() for label in dict.fromkeys(labels.tolist())]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for indices in per_class:
            if indices and len(chosen) < count:
                chosen.append(indices.pop(0))
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class ObjectiveStep:
    """One fine-tuning step's forward pass with the method's objective: (global batch indices, this
    rank's share) -> (loss, logits, labels, loss terms) over the share. Corruptions, then
    normalisation, then the same random crop and flip for images and masks; all randomness from
    ``generator``, drawn for the whole global batch."""

    objective: MethodConfig
    model: torch.nn.Module
    base_model: torch.nn.Module | None  # the frozen anchor of ``anchor: kl_base``
    normalizer: Normalizer
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    generator: torch.Generator
    augment: AugmentConfig
    device: torch.device
    penalty_weight: float | None  # RRR's λ

    def __call__(
        self, batch: torch.Tensor, share: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        objective, model = self.objective, self.model
        raw = self.images[batch].to(self.device)
        if isinstance(objective, LabelsObjective) and objective.corruptions:
            raw = corrupt_batch(
                raw, objective.corruptions, objective.severity, objective.corrupted_share, self.generator
            )
        x = self.normalizer(raw)
        m = self.masks[batch][:, None].to(self.device)
        x, m = joint_augment(x, m, self.generator, self.augment.flip, self.augment.min_crop_scale)
        # drawn for the global batch above (the same draws on every rank); the model sees this rank's share
        x, m, y = x[share], m[share], self.labels[batch][share].to(self.device)
        with autocast(self.device):
            if isinstance(objective, RelevanceObjective):
                relevance = (rollout if objective.relevance == "rollout" else attnlrp)(model, x, y, create_graph=True)
                logits = relevance.logits
                # the competitor pass costs a second AttnLRP pass over k copies of the batch: only when weighted
                competitors = (
                    competitor_relevance(model, x, logits, y, objective.competitors)
                    if objective.competitor_weight > 0
                    else None
                )
                base_logits = None
                if self.base_model is not None:
                    with torch.no_grad():
                        base_logits = self.base_model(x)
                loss, terms = relevance_loss(
                    relevance.upsampled(), m[:, 0], logits, objective, y, base_logits, competitors
                )
            elif isinstance(objective, RrrObjective):
                logits, input_gradient = log_probability_input_gradient(model, x)
                loss, terms = rrr_objective(logits, input_gradient, y, m, self.penalty_weight)
            else:
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                terms = {}
        return loss, logits, y, terms


def finetune(
    config: FinetuneConfig,
    inputs: FinetuneInputs,
    checkpoint_dir: str | Path,
    progress: bool = True,
    ranks: Ranks | None = None,
    device: torch.device | None = None,
) -> FinetuneOutcome:
    """Fine-tune, resuming from ``checkpoint_dir`` when it holds this run's state. Under torchrun,
    ``ranks`` and ``device`` come from :func:`pipeline.utils.distributed.session`: every rank
    trains on its share of each batch and ends with the same model; only the main rank reports
    progress and saves the resumable state."""
    train = config.train
    ranks = ranks or Ranks()
    progress = progress and ranks.main
    device = device or resolve_device(train.device)
    manifest_path = inputs.dataset / "manifest.parquet"
    manifest = read_manifest(manifest_path)
    subset, subset_info = read_subset(inputs.subset)
    model, spec = load_model_artifact(inputs.base_model)
    if spec["class_names"] != subset_info["classes"]:
        raise CftError(
            f"{inputs.base_model}: the model's classes {_shown(spec['class_names'])} differ from the dataset's {_shown(subset_info['classes'])}"
        )
    objective = config.objective
    if (
        isinstance(objective, RelevanceObjective)
        and objective.competitor_weight > 0
        and objective.competitors >= len(spec["class_names"])
    ):
        classes = len(spec["class_names"])
        raise CftError(
            f"finetune.{config.method}.competitors is {objective.competitors}, but the model has {classes} classes: at most {classes - 1} compete with the true one"
        )
    transform = InputTransform.from_preprocessing(spec["preprocessing"]) if has_image_files(manifest) else None
    data = _with_masks(config, inputs, load_images(manifest_path, subset_ids(subset, "finetune"), manifest, transform))
    val_unseen = load_images(manifest_path, subset_ids(subset, "val", seen=False), manifest, transform)
    val_seen = load_images(manifest_path, subset_ids(subset, "val", seen=True), manifest, transform)
    whole_objects = _object_masks(inputs, data, manifest)
    masks = _training_masks(config, inputs, data, whole_objects, manifest, transform)
    model = model.to(device)
    # made before a checkpoint is loaded: a resumed run anchors to the same base model
    base_model = (
        _frozen_copy(model) if isinstance(objective, RelevanceObjective) and objective.anchor == "kl_base" else None
    )
    normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"]).to(device)
    penalty_weight = None
    if isinstance(
        objective, RrrObjective
    ):  # from the base model, before a checkpoint is loaded: a resumed run gets the same λ
        penalty_weight = objective.penalty_weight
        if penalty_weight is None:
            x_all = normalizer(torch.from_numpy(data.images).to(device))
            penalty_weight = calibrated_weight(
                model,
                x_all,
                torch.from_numpy(data.labels).to(device),
                torch.from_numpy(masks).to(device),
                train.eval_batch_size,
            )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step_epochs, gamma=train.lr_gamma)
    generator = seed_everything(train.seed)

    shown = overlay_indices(data.labels, train.overlay_images)
    overlay = {
        "images": data.images[shown],
        "masks": masks[shown],
        "captions": [spec["class_names"][int(label)] for label in data.labels[shown]],
    }
    overlay["before"] = relevance_maps(
        model, normalizer, data.images[shown], data.labels[shown], device, train.eval_batch_size
    )
    mask_tensor = torch.from_numpy(masks)
    monitor_masks = torch.from_numpy(whole_objects if whole_objects is not None else masks)

    run_fingerprint = fingerprint(
        # allow_chance decides only what happens after training: flipping it reuses a finished run
        {
            "config": config.model_dump(exclude={"train": {"allow_chance"}}),
            "torch": torch.__version__,
            "device": device.type,
            "code": source_digest(),
        },
        [p for p in (inputs.base_model, inputs.subset, inputs.masks, manifest_path) if p is not None],
    )
    state = TrainingState(checkpoint_dir, run_fingerprint, model, optimizer, scheduler, generator, saves=ranks.main)
    if state.restore() and progress:
        tqdm.write(f"finetune/{config.method}: resuming after epoch {state.epoch} from {checkpoint_dir}")

    def monitor() -> dict[str, float]:
        """How far the relevance has moved (fine-tuning images, un-augmented; share outside the object
        when the data has object masks, else outside the training masks) and what is kept."""
        maps = relevance_maps(model, normalizer, data.images, data.labels, device, train.eval_batch_size)
        return {
            "train_background_share": float(background_share(torch.from_numpy(maps), monitor_masks).mean()),
            "val_unseen_accuracy": accuracy(model, normalizer, val_unseen, device, train.eval_batch_size),
            "val_seen_accuracy": accuracy(model, normalizer, val_seen, device, train.eval_batch_size),
        }

    if not state.curves:
        state.curves.append({"epoch": 0, **monitor()})  # the base model, for reference; never selected
    forward = ObjectiveStep(
        config.objective,
        model,
        base_model,
        normalizer,
        torch.from_numpy(data.images),
        torch.from_numpy(data.labels),
        mask_tensor,
        generator,
        train.augment,
        device,
        penalty_weight,
    )
    steps_per_epoch = math.ceil(len(data) / train.batch_size)
    started = time.perf_counter()
    with tqdm(
        total=steps_per_epoch * train.epochs,
        initial=steps_per_epoch * state.epoch,
        desc=f"finetune/{config.method}",
        unit="step",
        disable=not progress,
    ) as bar:
        for epoch in range(state.epoch + 1, train.epochs + 1):
            where = f"finetune/{config.method}: epoch {epoch}"
            totals = train_epoch(
                model,
                optimizer,
                shuffled_batches(len(data), train.batch_size, generator),
                forward,
                lambda step, where=where: f"{where}, step {step} of {steps_per_epoch}",
                "finetune.train.lr",
                train.lr,
                bar,
                ranks=ranks,
                epoch=epoch,
            )
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            row: dict[str, Any] = {
                "epoch": epoch,
                "lr": lr,
                **{key: value / len(data) for key, value in totals.sums.items()},
            }
            row["train_accuracy"] = totals.correct / len(data)
            row.update(monitor())
            state.finish_epoch(row, _selection_score(train.select_by, row, val_unseen, val_seen))
    curves, best = state.curves, state.best
    warnings = _check_not_at_chance(config, best["epoch"], curves, val_unseen, val_seen)
    state.load_best()
    overlay["after"] = relevance_maps(
        model, normalizer, data.images[shown], data.labels[shown], device, train.eval_batch_size
    )
    spec = {
        **spec,
        "finetune": {
            "method": config.method,
            "objective": config.objective.model_dump(),
            "best_epoch": best["epoch"],
            "seen_classes": subset_info["seen_classes"],
            "unseen_classes": subset_info["unseen_classes"],
        },
    }
    summary = {
        "method": config.method,
        "best_epoch": best["epoch"],
        "images": len(data),
        "steps": steps_per_epoch * train.epochs,
        "train_seconds_this_run": time.perf_counter() - started,
        "selected": next(row for row in curves if row["epoch"] == best["epoch"]),
        "base": curves[0],
        "last": curves[-1],  # beside the selected epoch: what selection changed
        **({"penalty_weight": penalty_weight} if penalty_weight is not None else {}),
    }
    if warnings:
        summary["warnings"] = warnings
    return FinetuneOutcome(model.cpu(), spec, curves, best["epoch"], overlay, summary)


def _selection_score(select_by: str, row: dict[str, Any], val_unseen: ArraySplit, val_seen: ArraySplit) -> float:
    if select_by == "last":
        return float(row["epoch"])
    if select_by == "val_unseen_accuracy":
        return row["val_unseen_accuracy"]
    total = len(val_unseen) + len(val_seen)
    return (row["val_unseen_accuracy"] * len(val_unseen) + row["val_seen_accuracy"] * len(val_seen)) / total


def _check_not_at_chance(
    config: FinetuneConfig, epoch: int, curves: list[dict[str, Any]], val_unseen: ArraySplit, val_seen: ArraySplit
) -> list[str]:
    """Stop when the kept model is at chance on all validation images (seen and unseen classes
    together: forgetting the unseen classes alone is a result to report, not a broken run); with
    ``allow_chance``, the warning to record instead. Returns the warnings."""
    row = next(row for row in curves if row["epoch"] == epoch)
    labels = np.concatenate([val_unseen.labels, val_seen.labels])
    total = len(val_unseen) + len(val_seen)
    combined = sum(
        row[key] * len(split)
        for key, split in (("val_unseen_accuracy", val_unseen), ("val_seen_accuracy", val_seen))
        if len(split)
    ) / max(1, total)
    test = chance_test(combined, labels)
    if test is None or not test.at_chance:
        return []
    message = (
        f"finetune/{config.method}: the kept model (epoch {epoch}) is at chance: {test.describe()} "
        f"(unseen {row['val_unseen_accuracy']:.3f}, seen {row['val_seen_accuracy']:.3f}); the training diverged or collapsed"
    )
    if not config.train.allow_chance:
        raise TrainingError(
            f"{message}: lower finetune.train.lr (now {config.train.lr:g}), or set finetune.train.allow_chance: true to keep it"
        )
    warning = f"{message}; kept because finetune.train.allow_chance is true"
    return [warning]
