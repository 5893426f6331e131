"""Fine-tuning is resumable: an interrupted run, rerun, ends with the same weights as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.finetune import FinetuneConfig, LabelsObjective, RelevanceObjective, RrrObjective, TrainSchedule
from pipeline.data.manifest import classes_of, read_manifest
from pipeline.models.factory import load_model_artifact
from pipeline.training import finetune as finetuning
from tests.helpers.training import Interrupted, count_steps, finetune_inputs


@pytest.fixture(scope="module")
def inputs(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> finetuning.FinetuneInputs:
    return finetune_inputs(tiny_world, tmp_path_factory.mktemp("resume"), images_per_class=2)


def config(objective: RelevanceObjective | LabelsObjective, **train: object) -> FinetuneConfig:
    # allow_chance: a random base model, a few steps on 20 images: at chance, which these tests accept
    schedule = TrainSchedule(
        **{
            "epochs": 3,
            "batch_size": 4,
            "lr": 1e-3,
            "lr_step_epochs": 1,
            "overlay_images": 2,
            "device": "cpu",
            "allow_chance": True,
            **train,
        }
    )
    return FinetuneConfig(method="test", train=schedule, objective=objective)


def interrupt_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    count_steps(monkeypatch, stop_after=steps)


CORRUPTIONS = LabelsObjective(
    objective="labels", corruptions=["gaussian_noise", "contrast", "pixelate"], severity=5, corrupted_share=0.75
)


ENERGY = RelevanceObjective(objective="relevance", loss="energy")
# the base copy must be made from the base model, not from a resumed checkpoint; weighted up so it moves the weights
KL_BASE = RelevanceObjective(objective="relevance", anchor="kl_base", classification_weight=1.0)
OPTIONS = RelevanceObjective(
    objective="relevance", normalisation="detached_max", anchor="labels", competitor_weight=1.0, competitors=2
)
ROLLOUT = RelevanceObjective(objective="relevance", relevance="rollout")
RRR = RrrObjective(objective="rrr")  # λ calibrated from the base model (Ross et al.'s rule)


@pytest.mark.parametrize(
    "objective",
    [
        RelevanceObjective(objective="relevance"),
        ENERGY,
        KL_BASE,
        OPTIONS,
        ROLLOUT,
        RRR,
        LabelsObjective(objective="labels"),
        CORRUPTIONS,
    ],
    ids=["cft", "energy", "kl_base", "options", "rollout", "rrr", "plain", "corruptions"],
)
def test_interrupted_run_resumes_to_identical_weights(
    inputs: finetuning.FinetuneInputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    objective: RelevanceObjective | LabelsObjective,
) -> None:
    run = config(objective)
    reference = finetuning.finetune(run, inputs, tmp_path / "uninterrupted", progress=False)
    steps_per_epoch = 3  # 10 images in batches of 4
    with monkeypatch.context() as patch:
        interrupt_after(patch, steps_per_epoch + 1)  # one epoch saved, then stopped inside the second
        with pytest.raises(Interrupted):
            finetuning.finetune(run, inputs, tmp_path / "interrupted", progress=False)
    resumed = finetuning.finetune(run, inputs, tmp_path / "interrupted", progress=False)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.curves == reference.curves
    assert resumed.best_epoch == reference.best_epoch


def test_checkpoint_of_another_config_is_not_resumed(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objective = LabelsObjective(objective="labels")
    finetuning.finetune(config(objective, epochs=2), inputs, tmp_path / "state", progress=False)
    calls = count_steps(monkeypatch)
    finetuning.finetune(config(objective, epochs=2), inputs, tmp_path / "state", progress=False)
    assert calls["n"] == 0  # same run, already complete: nothing is recomputed
    changed = finetuning.finetune(config(objective, epochs=2, lr=5e-4), inputs, tmp_path / "state", progress=False)
    assert calls["n"] == 2 * 3  # another lr: trained from the start
    fresh = finetuning.finetune(config(objective, epochs=2, lr=5e-4), inputs, tmp_path / "fresh", progress=False)
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(tensor, changed.model.state_dict()[name]), name


def test_cft_changes_relevance_and_plain_keeps_its_masks_out(inputs: finetuning.FinetuneInputs, tmp_path: Path) -> None:
    outcome = finetuning.finetune(
        config(RelevanceObjective(objective="relevance")), inputs, tmp_path / "c", progress=False
    )
    assert [row["epoch"] for row in outcome.curves] == [0, 1, 2, 3]
    assert {"background", "foreground", "classification", "train_background_share"} <= set(outcome.curves[1])
    assert outcome.overlay["before"].shape == outcome.overlay["after"].shape == (2, 32, 32)
    assert not torch.allclose(torch.from_numpy(outcome.overlay["before"]), torch.from_numpy(outcome.overlay["after"]))
    assert outcome.spec["finetune"]["best_epoch"] == outcome.best_epoch >= 1


def test_rollout_and_rrr_train_through_their_own_losses(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relevance: rollout shapes the rollout map (no AttnLRP pass in the step); rrr logs its input-gradient
    penalty, which its masks make non-zero, and moves the weights."""
    batches, _ = spy_on_the_step(monkeypatch)
    rolled: list[int] = []
    original = finetuning.rollout
    monkeypatch.setattr(
        finetuning,
        "rollout",
        lambda model, images, *args, **kwargs: rolled.append(len(images)) or original(model, images, *args, **kwargs),
    )
    finetuning.finetune(config(ROLLOUT, epochs=1), inputs, tmp_path / "rollout", progress=False)
    assert rolled == [4, 4, 2] and batches == []
    outcome = finetuning.finetune(config(RRR, epochs=1), inputs, tmp_path / "rrr", progress=False)
    assert outcome.curves[1]["input_gradient"] > 0 and "classification" in outcome.curves[1]
    # λ by Ross et al.'s rule: CE / penalty of the base model, so the first step's two terms are of one size
    assert outcome.summary["penalty_weight"] > 0
    fixed = finetuning.finetune(
        config(RrrObjective(objective="rrr", penalty_weight=0.5), epochs=1), inputs, tmp_path / "fixed", progress=False
    )
    assert fixed.summary["penalty_weight"] == 0.5
    assert batches == []  # RRR needs no relevance map
    base = load_model_artifact(inputs.base_model)[0].state_dict()
    assert any(not torch.equal(tensor, base[name]) for name, tensor in outcome.model.state_dict().items())


def test_summary_reports_the_last_epoch_beside_the_selected_one(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        finetuning, "_selection_score", lambda select_by, row, *splits: -float(row["epoch"])
    )  # keeps epoch 1
    outcome = finetuning.finetune(config(LabelsObjective(objective="labels")), inputs, tmp_path / "s", progress=False)
    assert outcome.best_epoch == 1
    assert outcome.summary["selected"] == outcome.curves[1] and outcome.summary["selected"]["epoch"] == 1
    assert outcome.summary["last"] == outcome.curves[-1] and outcome.summary["last"]["epoch"] == 3
    assert outcome.summary["base"] == outcome.curves[0]


def spy_on_the_step(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[tuple[object, ...]]]:
    """Record the batch size of every AttnLRP call of the training step (the monitor's maps are not
    counted) and the arguments of every ``relevance_loss`` call."""
    from pipeline.training import objective as objective_module

    batches: list[int] = []
    calls: list[tuple[object, ...]] = []
    original_attnlrp, original_loss = finetuning.attnlrp, finetuning.relevance_loss

    def counting_attnlrp(model: torch.nn.Module, images: torch.Tensor, *args: object, **kwargs: object) -> object:
        batches.append(len(images))
        return original_attnlrp(model, images, *args, **kwargs)

    def recording_loss(*args: object) -> object:
        calls.append(args)
        return original_loss(*args)

    monkeypatch.setattr(finetuning, "attnlrp", counting_attnlrp)
    monkeypatch.setattr(objective_module, "attnlrp", counting_attnlrp)
    monkeypatch.setattr(finetuning, "relevance_loss", recording_loss)
    return batches, calls


def test_competitor_pass_only_when_weighted(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """competitor_weight 0 (the default) costs nothing: one AttnLRP pass per step, no base copy;
    above 0, one more pass per step over the batch repeated ``competitors`` times."""
    batches, calls = spy_on_the_step(monkeypatch)
    plain = finetuning.finetune(
        config(RelevanceObjective(objective="relevance", competitors=3), epochs=1),
        inputs,
        tmp_path / "off",
        progress=False,
    )
    assert batches == [4, 4, 2]  # 10 images in batches of 4
    assert all(call[5] is None and call[6] is None for call in calls)  # no base logits, no competitor maps
    assert "competitor" not in plain.curves[1]
    batches.clear()
    calls.clear()
    weighted = finetuning.finetune(
        config(RelevanceObjective(objective="relevance", competitor_weight=1.0, competitors=3), epochs=1),
        inputs,
        tmp_path / "on",
        progress=False,
    )
    assert batches == [4, 12, 4, 12, 2, 6]
    assert [tuple(call[6].shape[:2]) for call in calls] == [(4, 3), (4, 3), (2, 3)]  # type: ignore[union-attr]
    assert 0 < weighted.curves[1]["competitor"] <= 1


def test_too_many_competitors_are_refused(inputs: finetuning.FinetuneInputs, tmp_path: Path) -> None:
    classes = len(classes_of(read_manifest(inputs.dataset / "manifest.parquet")))
    run = config(RelevanceObjective(objective="relevance", competitor_weight=1.0, competitors=classes))
    with pytest.raises(
        ValueError,
        match=rf"^finetune\.test\.competitors is {classes}, but the model has {classes} classes: at most {classes - 1} compete",
    ):
        finetuning.finetune(run, inputs, tmp_path / "state", progress=False)


def test_kl_base_anchors_to_the_frozen_base_model(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base logits come from a frozen copy of the starting model on the same augmented batch:
    at the first step they equal the model's own logits; later the model has moved away from them."""
    _, calls = spy_on_the_step(monkeypatch)
    finetuning.finetune(config(KL_BASE, epochs=1), inputs, tmp_path / "kl", progress=False)
    first_logits, first_base = calls[0][2], calls[0][5]
    assert isinstance(first_logits, torch.Tensor) and isinstance(first_base, torch.Tensor)
    assert not first_base.requires_grad
    torch.testing.assert_close(first_base, first_logits.detach(), rtol=1e-5, atol=1e-5)
    last_logits, last_base = calls[-1][2], calls[-1][5]
    assert not torch.allclose(last_base, last_logits.detach(), rtol=1e-5, atol=1e-5)  # type: ignore[arg-type]


def test_overlay_takes_the_classes_in_turn() -> None:
    labels = np.array([3, 3, 3, 5, 5, 7])
    assert finetuning.overlay_indices(labels, 4).tolist() == [0, 3, 5, 1]
    assert finetuning.overlay_indices(labels, 10).tolist() == [0, 3, 5, 1, 4, 2]
    assert finetuning.overlay_indices(labels, 0).tolist() == []


def test_corruption_baseline_trains_on_corrupted_images(
    inputs: finetuning.FinetuneInputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    original = finetuning.corrupt_batch

    def spying(images: torch.Tensor, *args: object) -> torch.Tensor:
        out = original(images, *args)
        seen.append((out != images).any(dim=(1, 2, 3)).float().mean().item())
        return out

    monkeypatch.setattr(finetuning, "corrupt_batch", spying)
    plain = finetuning.finetune(config(LabelsObjective(objective="labels")), inputs, tmp_path / "plain", progress=False)
    assert seen == []  # plain fine-tuning never corrupts (and draws nothing from the generator for it)
    corrupted = finetuning.finetune(config(CORRUPTIONS), inputs, tmp_path / "corrupted", progress=False)
    assert len(seen) == 3 * 3 and 0.5 < sum(seen) / len(seen) < 1.0  # about 75 % of the images, every batch
    assert any(
        not torch.equal(a, b)
        for a, b in zip(plain.model.state_dict().values(), corrupted.model.state_dict().values(), strict=True)
    )
    assert corrupted.spec["finetune"]["objective"]["corruptions"] == ["gaussian_noise", "contrast", "pixelate"]
