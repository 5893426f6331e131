"""Model artifacts load with plain timm (hub layout: config.json + model.safetensors), same logits,
and carry a model card saying how they were made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config.base import BaseConfig
from pipeline.models.factory import (
    create_model,
    load_model_artifact,
    preprocessing_of,
    save_model_artifact,
    write_model_artifact,
)

FAMILIES = {
    "vit": BaseConfig(
        model="vit_tiny_patch16_224", model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    ),
    "convnextv2": BaseConfig(model="convnextv2_atto", model_kwargs={"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}),
}

# Runs in a fresh interpreter that never imports cft: only timm reads the artifact.
TIMM_ALONE = """
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
assert not any(name == "pipeline" or name.startswith("pipeline.") for name in sys.modules), "cft was imported"
x = torch.load(sys.argv[2])
torch.save({"logits": model(x), "data_config": timm.data.resolve_model_data_config(model),
            "label_names": model.pretrained_cfg.get("label_names")}, sys.argv[3])
"""


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_alone_loads_the_artifact_with_the_same_logits(tmp_path: Path, family: str) -> None:
    torch.manual_seed(0)
    config = FAMILIES[family]
    model = create_model(config, num_classes=3, image_size=32).eval()
    save_model_artifact(tmp_path / "model", model, config, ["cat", "dog", "owl"], preprocessing_of(model, 32))
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", TIMM_ALONE, str(tmp_path / "model"), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        check=True,
    )
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
    rebuilt, spec = load_model_artifact(tmp_path / "model")  # cft's own reader still reads it
    assert out["label_names"] == spec["class_names"] == ["cat", "dog", "owl"]
    data_config = out["data_config"]
    assert list(data_config["input_size"]) == spec["preprocessing"]["input_size"] == [3, 32, 32]
    assert list(data_config["mean"]) == spec["preprocessing"]["mean"] and data_config["crop_pct"] == 1.0
    config_json = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config_json["architecture"] == config.model and config_json["pretrained_cfg"]["tag"] == "cft"


def test_the_model_card_says_how_the_model_was_made(tmp_path: Path) -> None:
    config = FAMILIES["vit"]
    model = create_model(config, num_classes=3, image_size=32).eval()
    save_model_artifact(
        tmp_path / "base",
        model,
        config,
        ["cat", "dog", "owl"],
        preprocessing_of(model, 32),
        metrics={"test accuracy": 0.91234},
    )
    base_card = (tmp_path / "base" / "README.md").read_text()
    assert base_card.startswith("---\n") and "library_name: timm" in base_card
    assert "vit_tiny_patch16_224, cft base model" in base_card and "test accuracy: 0.9123" in base_card
    _, spec = load_model_artifact(tmp_path / "base")
    spec["finetune"] = {
        "method": "cft",
        "objective": {"objective": "relevance", "loss": "energy", "anchor": "kl_base"},
        "best_epoch": 4,
        "seen_classes": ["cat", "owl"],
        "unseen_classes": ["dog"],
    }
    write_model_artifact(
        tmp_path / "tuned", model, spec, {"validation accuracy, unseen classes (base model)": "0.8000 (0.9000)"}
    )
    card = (tmp_path / "tuned" / "README.md").read_text()
    for expected in (
        "fine-tuned by cft (cft)",
        "loss: energy",
        "anchor: kl_base",
        "the seen classes cat, owl",
        "**Not fine-tuned on (unseen):** dog",
        "**Selected epoch:** 4",
        "0.8000 (0.9000)",
        "local-dir:",
    ):
        assert expected in card, expected
