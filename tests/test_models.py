from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.config.base import BaseConfig
from pipeline.models.factory import ModelError, create_model, load_model_artifact, preprocessing_of, save_model_artifact

SMALL_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def saved_random_model(tmp_path: Path, suffix: str) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **SMALL_VIT)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_route(tmp_path: Path, suffix: str) -> None:
    path, state = saved_random_model(tmp_path, suffix)
    config = BaseConfig(model="vit_tiny_patch16_224", model_kwargs=SMALL_VIT, pretrained=True, checkpoint=str(path))
    model = create_model(config, num_classes=5)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    config = BaseConfig(pretrained=True, checkpoint=str(tmp_path / "absent.safetensors"))
    with pytest.raises(ModelError, match="absent.safetensors: checkpoint file not found"):
        create_model(config, num_classes=5)


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="unknown timm model 'vit_imaginary'"):
        create_model(BaseConfig(model="vit_imaginary"), num_classes=5)


def test_artifact_round_trip(tmp_path: Path) -> None:
    config = BaseConfig(
        model="vit_tiny_patch16_224", model_kwargs={k: v for k, v in SMALL_VIT.items() if k != "img_size"}
    )
    model = create_model(config, num_classes=3, image_size=32).eval()
    save_model_artifact(tmp_path, model, config, ["a", "b", "c"], preprocessing_of(model, 32))
    rebuilt, spec = load_model_artifact(tmp_path)
    assert spec["class_names"] == ["a", "b", "c"] and spec["preprocessing"]["input_size"] == [3, 32, 32]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)


def test_corrupt_artifact_is_reported(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="model.json: not valid JSON"):
        load_model_artifact(tmp_path)


def test_checkpoint_with_other_head_keeps_backbone(tmp_path: Path) -> None:
    """Like a 1000-class hub checkpoint used for a 5-class dataset: backbone loaded, new head."""
    torch.manual_seed(2)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, **SMALL_VIT)
    path = tmp_path / "seven.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = BaseConfig(model="vit_tiny_patch16_224", model_kwargs=SMALL_VIT, pretrained=True, checkpoint=str(path))
    model = create_model(config, num_classes=5)
    assert model.head.weight.shape == (5, 32)
    torch.testing.assert_close(model.patch_embed.proj.weight, source.patch_embed.proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight, rtol=0, atol=0)


def test_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00" * 64)
    config = BaseConfig(model="vit_tiny_patch16_224", model_kwargs=SMALL_VIT, pretrained=True, checkpoint=str(path))
    with pytest.raises(ModelError, match="garbage.safetensors: not a readable weights file"):
        create_model(config, num_classes=5)
