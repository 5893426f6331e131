from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.manifest import read_manifest
from pipeline.models import load_model_artifact
from stages.cli import app
from tests.conftest import TINY_SPLITS

TINY_BASE = {
    "model": "vit_tiny_patch16_224",
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "phases": [{"split": "pretrain", "epochs": 1}, {"split": "train", "epochs": 1}],
    "batch_size": 32,
    "warmup_steps": 1,
}


def tiny_params(path: Path, **base_overrides: object) -> Path:
    params = {"data": {"seed": 0, "world": {"split_sizes": TINY_SPLITS}}, "base": {**TINY_BASE, **base_overrides}}
    path.write_text(yaml.safe_dump(params))
    return path


runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["prepare"], ["base"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output or "prepare" in result.output


def test_invalid_params_exit_with_named_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  lr: -1\n")
    result = runner.invoke(app, ["base", "--params", str(params), "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "base.lr: Input should be greater than 0" in result.output


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml")
    result = runner.invoke(app, ["base", "--params", str(params), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "manifest not found (run `cft prepare` first)" in result.output


def test_prepare_then_base(tmp_path: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml")
    data, model_dir = tmp_path / "data", tmp_path / "model"
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(data), "--metrics", str(tmp_path / "prepare.json")])
    assert result.exit_code == 0, result.output
    assert read_manifest(data / "manifest.parquet").num_rows == sum(TINY_SPLITS.values())
    result = runner.invoke(app, [
        "base", "--params", str(params), "--data", str(data), "--out", str(model_dir),
        "--metrics", str(tmp_path / "base.json"), "--plots", str(tmp_path / "plots"),
    ])
    assert result.exit_code == 0, result.output
    model, spec = load_model_artifact(model_dir)
    assert spec["class_names"][0] == "fish" and spec["create_kwargs"]["img_size"] == 32
    metrics = json.loads((tmp_path / "base.json").read_text())
    assert set(metrics["accuracy"]) == set(TINY_SPLITS) - {"pretrain", "train"}
    assert all(0.0 <= value <= 1.0 for value in metrics["accuracy"].values())
    assert "shortcut_gap" in metrics
    for name in ("training.csv", "accuracy.csv", "training.png", "accuracy.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    assert len((tmp_path / "plots" / "training.csv").read_text().splitlines()) == 1 + 2


def test_base_rejects_a_phase_on_a_missing_split(tmp_path: Path, tiny_world: Path) -> None:
    params = tiny_params(tmp_path / "params.yaml", phases=[{"split": "imagenet", "epochs": 1}])
    result = runner.invoke(app, ["base", "--params", str(params), "--data", str(tiny_world), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "split 'imagenet' is not in" in result.output
