"""Runs that cannot give a usable model stop with an error instead of exiting 0 with a bad model:
a loss that is not finite, a kept model at chance (unless allowed, then a warning in the metrics),
a mask store with a missing shard."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.concepts.store import catalog_concepts
from pipeline.config.base import BaseConfig
from pipeline.config.concepts import ConceptsConfig
from pipeline.config.data import SubsetConfig
from pipeline.config.finetune import FinetuneConfig, LabelsObjective, RelevanceObjective, TrainSchedule
from pipeline.data.manifest import classes_of, read_manifest
from pipeline.data.subset import select_subset, subset_ids, write_subset
from pipeline.masks.annotated import annotated_masks
from pipeline.masks.store import STORE_NAME, write_mask_store
from pipeline.models.factory import save_model_artifact
from pipeline.reports.base import base_metrics
from pipeline.training import base as base_training
from pipeline.training import finetune as finetuning
from pipeline.training.loop import TrainingError, chance_test
from stages.cli import app
from tests.helpers.tiny import TINY_BASE
from tests.helpers.training import count_steps

runner = CliRunner()
NOT_AT_CHANCE = {**{k: v for k, v in TINY_BASE.items() if k != "allow_chance"}, "device": "cpu"}
# Long enough (about two seconds on CPU) to learn the tiny world well above chance: 0.85 on its val
# split on an AMD EPYC (seeds 0 and 1). 20 epochs per phase were on the edge: 0.7 on an Intel CPU,
# 0.35-0.55 on the AMD one, whose kernels round differently.
LEARNT_BASE = {
    **NOT_AT_CHANCE,
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "phases": [{"split": "pretrain", "epochs": 30}, {"split": "train", "epochs": 30}],
    "lr": 3e-3,
    "batch_size": 16,
}


def test_chance_rule() -> None:
    """Chance = the most frequent class's share; learnt = more than 2 standard errors above it."""
    labels = np.repeat(np.arange(10), 10)  # the world's 100 validation images
    test = chance_test(0.16, labels)
    assert test is not None and test.chance == 0.1 and test.threshold == pytest.approx(0.16)
    assert test.at_chance and chance_test(0.0, labels).at_chance and chance_test(math.nan, labels).at_chance
    assert not chance_test(0.17, labels).at_chance and not chance_test(0.99, labels).at_chance
    skewed = chance_test(0.5, np.array([0] * 8 + [1] * 2))  # always predicting class 0 gets 0.8
    assert skewed.chance == 0.8 and skewed.at_chance
    assert chance_test(1.0, np.zeros(5, dtype=int)) is None  # one class: cannot tell
    assert chance_test(0.0, np.zeros(0, dtype=int)) is None


# --- base ---------------------------------------------------------------------------------------


def test_base_at_chance_is_an_error_unless_allowed(tiny_world: Path) -> None:
    manifest = tiny_world / "manifest.parquet"
    with pytest.raises(
        TrainingError,
        match=r"base: the trained model is at chance on split 'val': accuracy 0\.\d+ on 20 held-out images, not above chance 0\.100 \+ 2 standard errors = 0\.234; .*lower base\.lr .*base\.allow_chance: true",
    ):
        base_training.train_base(BaseConfig(**NOT_AT_CHANCE), manifest, progress=False)
    kept = base_training.train_base(BaseConfig(**NOT_AT_CHANCE, allow_chance=True), manifest, progress=False)
    assert len(kept.warnings) == 1 and "kept because base.allow_chance is true" in kept.warnings[0]
    assert base_metrics(kept)["warnings"] == kept.warnings
    untrained = base_training.train_base(BaseConfig(**{**NOT_AT_CHANCE, "phases": []}), manifest, progress=False)
    assert untrained.warnings == [] and "warnings" not in base_metrics(untrained)  # no training, nothing to blame


def test_base_stops_at_once_on_a_loss_that_is_not_finite(tiny_world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def diverging(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * math.inf if calls["n"] == 3 else loss

    monkeypatch.setattr(base_training, "F", SimpleNamespace(cross_entropy=diverging))
    with pytest.raises(
        TrainingError,
        match=r"^base: epoch 2 \(phase train\), step 1 of 2: the loss is not finite \(inf\); the training diverged: lower base\.lr \(now 0\.002\)$",
    ):
        base_training.train_base(BaseConfig(**NOT_AT_CHANCE), tiny_world / "manifest.parquet", progress=False)
    assert calls["n"] == 3


# --- fine-tuning --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> finetuning.FinetuneInputs:
    """The tiny world's subset (2 validation images per class), its masks, and a base model that
    learnt the world (checked without allow_chance: the rule does not fire on a working model)."""
    root = tmp_path_factory.mktemp("guards")
    manifest = read_manifest(tiny_world / "manifest.parquet")
    subset = select_subset(manifest, SubsetConfig(images_per_class=2, val_images_per_class=2))
    write_subset(root / "subset" / "subset.parquet", subset)
    concepts, _ = catalog_concepts(ConceptsConfig(), tiny_world, classes_of(manifest))
    results, size = annotated_masks(
        tiny_world, manifest, subset_ids(subset, "finetune"), concepts, None, progress=False
    )
    write_mask_store(root / "masks", results, size, "annotated")
    config = BaseConfig(**LEARNT_BASE)
    outcome = base_training.train_base(config, tiny_world / "manifest.parquet", progress=False)
    assert outcome.warnings == [] and outcome.accuracy["val"] >= 0.5
    save_model_artifact(root / "base", outcome.model, config, outcome.class_names, outcome.preprocessing)
    return finetuning.FinetuneInputs(
        base_model=root / "base", dataset=tiny_world, subset=root / "subset" / "subset.parquet", masks=root / "masks"
    )


def nan_loss(loss: torch.Tensor) -> torch.Tensor:
    return loss * math.nan


@pytest.mark.parametrize(
    "objective", [RelevanceObjective(objective="relevance"), LabelsObjective(objective="labels")], ids=["cft", "plain"]
)
def test_finetune_stops_at_once_on_a_loss_that_is_not_finite(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: Any
) -> None:
    if isinstance(objective, RelevanceObjective):
        original = finetuning.relevance_loss
        monkeypatch.setattr(finetuning, "relevance_loss", lambda *args: (nan_loss(original(*args)[0]), {}))
    else:
        monkeypatch.setattr(
            finetuning,
            "F",
            SimpleNamespace(cross_entropy=lambda logits, y: nan_loss(torch.nn.functional.cross_entropy(logits, y))),
        )
    steps = count_steps(monkeypatch)
    run = FinetuneConfig(
        method="test",
        train=TrainSchedule(epochs=2, batch_size=4, lr=1e-3, overlay_images=0, device="cpu"),
        objective=objective,
    )
    with pytest.raises(
        TrainingError,
        match=r"^finetune/test: epoch 1, step 1 of 3: the loss is not finite \(nan\); the training diverged: lower finetune\.train\.lr \(now 0\.001\)$",
    ):
        finetuning.finetune(run, inputs, tmp_path / "state", progress=False)
    assert steps["n"] == 1


def params(path: Path, **train: Any) -> Path:
    schedule = {
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-4,
        "lr_step_epochs": 1,
        "overlay_images": 2,
        "device": "cpu",
        **train,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "finetune": {
                    "methods": ["cft", "plain"],
                    "train": schedule,
                    "cft": {"objective": "relevance"},
                    "plain": {"objective": "labels"},
                }
            }
        )
    )
    return path


def finetune_cli(
    inputs: finetuning.FinetuneInputs, root: Path, method: str, params_path: Path, masks: Path | None = None
) -> Any:
    return runner.invoke(
        app,
        [
            "finetune",
            method,
            "--params",
            str(params_path),
            "--base",
            str(inputs.base_model),
            "--data",
            str(inputs.dataset),
            "--subset",
            str(inputs.subset.parent),
            "--masks",
            str(masks or inputs.masks),
            "--out",
            str(root / "model"),
            "--checkpoints",
            str(root / "state"),
            "--metrics",
            str(root / "metrics.json"),
            "--plots",
            str(root / "plots"),
        ],
    )


def test_finetune_cli_keeps_a_working_model_without_warning(inputs: finetuning.FinetuneInputs, tmp_path: Path) -> None:
    result = finetune_cli(inputs, tmp_path, "plain", params(tmp_path / "params.yaml"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        "warnings" not in metrics
        and metrics["selected"]["val_unseen_accuracy"] + metrics["selected"]["val_seen_accuracy"] > 2 * 0.234
    )
    assert metrics["last"]["epoch"] == 2 and set(metrics["last"]) == set(
        metrics["selected"]
    )  # the final epoch, beside the kept one


def test_finetune_cli_at_chance_exits_2_unless_allowed(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported case: lr 1.0 kept an epoch at 0.0 (unseen) / 0.2 (seen) and exited 0."""
    result = finetune_cli(inputs, tmp_path, "plain", params(tmp_path / "params.yaml", lr=1.0))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert "error: finetune/plain: the kept model (epoch " in errors[0] and "is at chance: accuracy 0." in errors[0]
    assert "lower finetune.train.lr (now 1), or set finetune.train.allow_chance: true to keep it" in errors[0]
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()

    steps = count_steps(monkeypatch)
    result = finetune_cli(inputs, tmp_path, "plain", params(tmp_path / "params.yaml", lr=1.0, allow_chance=True))
    assert result.exit_code == 0, result.output
    assert steps["n"] == 0  # allow_chance does not change the run: the finished checkpoint is reused
    assert (
        "warning: finetune/plain: the kept model" in result.output
        and "kept because finetune.train.allow_chance is true" in result.output
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 1 and "is at chance" in metrics["warnings"][0]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_finetune_cli_with_a_deleted_mask_shard_stops_before_training(
    inputs: finetuning.FinetuneInputs, tmp_path: Path
) -> None:
    masks = shutil.copytree(inputs.masks, tmp_path / "masks")
    shard = masks / STORE_NAME / "masks" / "c" / "0" / "0" / "0" / "0"
    shard.unlink()
    result = finetune_cli(inputs, tmp_path, "cft", params(tmp_path / "params.yaml"), masks=masks)
    assert result.exit_code == 2, result.output
    assert f"error: {shard}: shard file missing (1 of 1 in {masks / STORE_NAME / 'masks'})" in result.output
    assert not (tmp_path / "state").exists()  # stopped at open, before any training
