"""The base model: a classifier that knows the object but leans on the background.

On the world it is trained in phases, e.g. a short phase on unbiased images (``pretrain``: any
background) and then a longer one on the biased ``train`` split, which stands in for "a
pretrained model that picked up a dataset bias". With no phases it is the (pretrained) model as
built, the route for real data.

A diverged run (a loss that is not finite) stops at once; a trained model at chance on the
held-out ``val`` split (else ``test``) is an error unless ``base.allow_chance`` keeps it, with a
warning in the metrics. A model with no phases is not trained here and not checked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data.datasets import ArraySplit, has_image_files, load_split
from pipeline.data.manifest import classes_of, read_manifest
from pipeline.data.preprocess import InputTransform
from pipeline.models.factory import create_model, preprocessing_of
from pipeline.training.loop import (
    TrainingError,
    accuracy,
    augment,
    chance_test,
    shuffled_batches,
    train_epoch,
    warmup_cosine,
)
from pipeline.utils.device import Normalizer, autocast, resolve_device, seed_everything
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.base import BaseConfig

MONITORED_SPLITS = ("val", "swapped_bg")  # accuracy per epoch, for the training curves only
CHANCE_SPLITS = ("val", "test")  # the first held-out one present tells a trained model from one at chance


@dataclass
class BaseOutcome:
    model: torch.nn.Module
    class_names: list[str]
    preprocessing: dict[str, Any]
    accuracy: dict[str, float]
    curves: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def train_base(config: BaseConfig, manifest_path: str | Path, progress: bool = True) -> BaseOutcome:
    manifest_path = Path(manifest_path)
    table = read_manifest(manifest_path)
    class_names = classes_of(table)
    splits = sorted(set(table.column("split").to_pylist()))
    for phase in config.phases:
        if phase.split not in splits:
            raise CftError(f"base.phases: split '{phase.split}' is not in {manifest_path} (splits: {splits})")

    generator = seed_everything(config.seed)
    device = resolve_device(config.device)
    cache: dict[str, ArraySplit] = {}
    transform: InputTransform | None = None

    def split_data(name: str) -> ArraySplit:
        if name not in cache:
            cache[name] = load_split(manifest_path, name, table, transform)
        return cache[name]

    # Image files are fed as the model's pretrained_cfg says; array datasets set the model's size.
    files = has_image_files(table)
    image_size = None if files else split_data("test" if "test" in splits else splits[0]).images.shape[1]
    model = create_model(config, len(class_names), image_size=image_size).to(device)
    preprocessing = preprocessing_of(model, image_size)
    if files:
        transform = InputTransform.from_preprocessing(preprocessing)
    normalizer = Normalizer(preprocessing["mean"], preprocessing["std"]).to(device)

    steps_per_phase = [math.ceil(len(split_data(p.split)) / config.batch_size) * p.epochs for p in config.phases]
    total_steps = sum(steps_per_phase)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, config.warmup_steps)
    )
    monitored = [name for name in MONITORED_SPLITS if name in splits]
    curves: list[dict[str, Any]] = []
    started = time.perf_counter()
    epoch_number = 0
    with tqdm(total=total_steps, desc="base", unit="step", disable=not progress) as bar:
        for phase in config.phases:
            data = split_data(phase.split)
            images = torch.from_numpy(data.images)
            labels = torch.from_numpy(data.labels)

            def forward(
                batch: torch.Tensor, share: slice
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
                x = normalizer(images[batch].to(device))
                if config.augment:
                    x = augment(x, generator)
                x, y = x[share], labels[batch][share].to(device)
                with autocast(device):
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                return loss, logits, y, {}

            steps = math.ceil(len(data) / config.batch_size)
            for _ in range(phase.epochs):
                where = f"base: epoch {epoch_number + 1} (phase {phase.split})"
                totals = train_epoch(
                    model,
                    optimizer,
                    shuffled_batches(len(data), config.batch_size, generator),
                    forward,
                    lambda step, where=where, steps=steps: f"{where}, step {step} of {steps}",
                    "base.lr",
                    config.lr,
                    bar,
                    after_step=scheduler.step,
                    phase=phase.split,
                )
                epoch_number += 1
                row: dict[str, Any] = {
                    "epoch": epoch_number,
                    "phase": phase.split,
                    "loss": float(np.mean(totals.losses)),
                    "train_accuracy": totals.correct / len(data),
                }
                for name in monitored:
                    row[f"{name}_accuracy"] = accuracy(
                        model, normalizer, split_data(name), device, config.eval_batch_size
                    )
                curves.append(row)
    train_seconds = time.perf_counter() - started

    trained_on = {phase.split for phase in config.phases}
    evaluated = {
        name: accuracy(model, normalizer, split_data(name), device, config.eval_batch_size)
        for name in tqdm(splits, desc="base/evaluate", disable=not progress)
        if name not in trained_on
    }
    warnings = _check_not_at_chance(config, evaluated, split_data) if config.phases else []
    return BaseOutcome(model.cpu(), class_names, preprocessing, evaluated, curves, train_seconds, warnings)


def _check_not_at_chance(config: BaseConfig, evaluated: dict[str, float], split_data: Any) -> list[str]:
    """Stop when the trained model is at chance on the first held-out split of CHANCE_SPLITS (the
    in-distribution one: shifted splits such as swapped_bg are meant to be hard for it); with
    ``allow_chance``, the warning to record instead."""
    split = next((name for name in CHANCE_SPLITS if name in evaluated), None)
    test = None if split is None else chance_test(evaluated[split], split_data(split).labels)
    if test is None or not test.at_chance:
        return []
    message = f"base: the trained model is at chance on split '{split}': {test.describe()}; the training diverged or collapsed"
    if not config.allow_chance:
        raise TrainingError(
            f"{message}: lower base.lr (now {config.lr:g}) or train longer, or set base.allow_chance: true to keep it"
        )
    warning = f"{message}; kept because base.allow_chance is true"
    return [warning]
