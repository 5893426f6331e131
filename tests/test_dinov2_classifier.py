"""DINOv2 classifiers (timm backbone + Meta's linear head): the head's features against Meta's
formulation, AttnLRP verified like the ViT rules, and every weight-loading route."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import pipeline.models.dinov2_classifier as dinov2
from pipeline.config.base import BaseConfig, TrainPhase
from pipeline.models.dinov2_classifier import Dinov2LinearClassifier, head_url
from pipeline.models.factory import ModelError, create_model, load_model_artifact, preprocessing_of, save_model_artifact
from pipeline.relevance.attnlrp import attnlrp, relevance_cell
from tests.helpers.lrp_reference import explicit_attnlrp
from tests.helpers.relevance_checks import (
    assert_alignment_gradients_match_finite_differences,
    assert_fine_tuning_steps_move_the_map,
    assert_untouched_outside_the_context,
)

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 5, "num_heads": 2, "init_values": 0.3}
VARIANTS = {
    "linear4": ("dinov2_vits14_lc", {"cls_layers": 4}),
    "linear1": ("dinov2_vits14_lc", {"cls_layers": 1}),
    "registers_linear4": ("dinov2_vits14_reg_lc", {"cls_layers": 4}),
}


def tiny_classifier(name: str = "dinov2_vits14_lc", seed: int = 0, **kwargs: object) -> Dinov2LinearClassifier:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{"num_classes": 5, **TINY, **kwargs}).double().eval()
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            parameter.add_(
                torch.randn_like(parameter)
                * (0.3 if parameter.ndim == 1 or "token" in parameter_name or "pos" in parameter_name else 0.05)
            )
    return model


def images(seed: int = 1, count: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def metas_linear_probe(model: Dinov2LinearClassifier, x: torch.Tensor) -> torch.Tensor:
    """Meta's ``_LinearClassifierWrapper``, written from its definition: the normed class tokens
    of the last n blocks, then the last block's mean normed patch token (registers excluded)."""
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    normed = []
    for block in model.blocks:
        tokens = block(tokens)
        normed.append(model.norm(tokens))
    last_n = normed[-model.cls_layers :]
    features = torch.cat(
        [*(layer[:, 0] for layer in last_n), normed[-1][:, model.num_prefix_tokens :].mean(dim=1)], dim=1
    )
    return model.head(features)


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_are_metas_linear_probe(variant: str) -> None:
    name, kwargs = VARIANTS[variant]
    model = tiny_classifier(name, **kwargs)
    assert model.head.in_features == (1 + kwargs["cls_layers"]) * TINY["embed_dim"]
    x = images()
    torch.testing.assert_close(model(x), metas_linear_probe(model, x), rtol=0, atol=0)


def test_full_size_architectures_match_metas_heads() -> None:
    for name, (embed_dim, prefix) in {"dinov2_vitb14_lc": (768, 1), "dinov2_vitl14_reg_lc": (1024, 5)}.items():
        model = timm.create_model(name, pretrained=False, depth=1)
        assert (model.head.in_features, model.head.out_features) == (5 * embed_dim, 1000)
        assert model.patch_embed.patch_size == (14, 14) and model.num_prefix_tokens == prefix
        assert relevance_cell(model) == (14, 14)
    assert (
        head_url("dinov2_vitb14_lc", 4)
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_linear4_head.pth"
    )
    assert (
        head_url("dinov2_vits14_reg_lc", 1)
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_linear_head.pth"
    )


def test_meta_evaluation_transform_is_the_preprocessing() -> None:
    model = timm.create_model("dinov2_vitb14_lc", pretrained=False, depth=1)
    preprocessing = preprocessing_of(model, None)
    assert preprocessing["input_size"] == [3, 224, 224]
    assert (preprocessing["crop_pct"], preprocessing["interpolation"], preprocessing["crop_mode"]) == (
        0.875,
        "bicubic",
        "center",
    )


def test_cls_layers_is_checked() -> None:
    with pytest.raises(ValueError, match="cls_layers must be 1 or 4"):
        timm.create_model("dinov2_vits14_lc", pretrained=False, cls_layers=2, **TINY)


# --- relevance: verified like the ViT and ConvNeXt rules -----------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_explicit_layer_by_layer_lrp(variant: str) -> None:
    name, kwargs = VARIANTS[variant]
    model = tiny_classifier(name, **kwargs)
    x, target = images(), torch.tensor([0, 3, 4])
    ours = attnlrp(model, x, target).pixels
    reference = explicit_attnlrp(model, x, target)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9 * reference.abs().max().item())


def test_exact_conservation_without_attention_or_biases() -> None:
    """With zero biases, no attention output and a zero class token (so no relevance is absorbed
    by prefix parameters), pixel relevance sums to the logit: the concat-and-mean head conserves."""
    model = tiny_classifier(pos_embed="none")
    with torch.no_grad():
        model.cls_token.zero_()
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        for block in model.blocks:
            block.attn.proj.weight.zero_()
    x, target = images(), torch.tensor([1, 2, 0])
    relevance = attnlrp(model, x, target)
    logits = model(x).gather(1, target[:, None])[:, 0]
    assert logits.abs().min() > 1e-3
    torch.testing.assert_close(relevance.pixels.sum((1, 2)), logits, rtol=1e-9, atol=1e-12)


PROBED = [
    ("cls_token", (0, 0, 3)),
    ("pos_embed", (0, 2, 5)),
    ("blocks.1.attn.qkv.weight", (20, 3)),
    ("blocks.2.ls2.gamma", (6,)),
    ("blocks.3.norm1.weight", (2,)),
    ("norm.weight", (4,)),  # the final norm, applied to four block outputs
    ("blocks.4.norm2.bias", (9,)),
    ("head.weight", (3, 4)),  # reads block 2's class token
    ("head.weight", (3, 70)),  # reads the mean patch token
]


def test_relevance_gradient_matches_finite_differences() -> None:
    assert_alignment_gradients_match_finite_differences(
        tiny_classifier(), images(count=2), torch.tensor([3, 1]), PROBED
    )


def test_model_is_untouched_outside_the_context() -> None:
    assert_untouched_outside_the_context(tiny_classifier().float(), images().float())


def test_fine_tuning_steps_move_the_map() -> None:
    model = tiny_classifier(seed=3, drop_path_rate=0.1).float().train()
    assert_fine_tuning_steps_move_the_map(model, images(count=4).float(), torch.tensor([0, 1, 2, 3]))


# --- loading: local backbone + head files, Meta's raw backbone, the hub route, artifacts ----------

BACKBONE = {"img_size": 28, "patch_size": 14, "embed_dim": 16, "depth": 5, "num_heads": 2}
CLASSIFIER_KWARGS = dict(BACKBONE)


def backbone_and_head(tmp_path: Path, registers: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor], Path]:
    """A random DINOv2 backbone as timm stores it (no head) and a head file as Meta stores it."""
    torch.manual_seed(7)
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    backbone = timm.create_model(name, pretrained=False, num_classes=0, **BACKBONE).eval()
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    head = {"weight": torch.randn(1000, 5 * 16) * 0.1, "bias": torch.randn(1000) * 0.1}
    head_path = tmp_path / "dinov2_vits14_linear4_head.pth"
    torch.save(head, head_path)
    return backbone, head, head_path


def expected_logits(backbone: nn.Module, head: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """From the backbone alone, through timm's own intermediate-feature API."""
    layers = backbone.forward_intermediates(
        x, indices=4, norm=True, return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
    )
    features = torch.cat([*(prefix[:, 0] for _, prefix in layers), layers[-1][0].mean(dim=1)], dim=1)
    return features @ head["weight"].T + head["bias"]


def config(model: str = "dinov2_vits14_lc", **overrides: object) -> BaseConfig:
    return BaseConfig(**{"model": model, "model_kwargs": CLASSIFIER_KWARGS, "pretrained": True, **overrides})


def test_local_backbone_and_meta_head_file(tmp_path: Path) -> None:
    backbone, head, head_path = backbone_and_head(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    model = create_model(config(checkpoint=str(weights), classifier_checkpoint=str(head_path)), num_classes=1000).eval()
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(model(x), expected_logits(backbone, head, x), rtol=1e-5, atol=1e-5)


def test_metas_raw_backbone_file_with_registers(tmp_path: Path) -> None:
    """Meta's ``*_reg4_pretrain.pth`` layout (mask token, register tokens, class position folded
    into pos_embed) goes through timm's DINOv2 conversion."""
    backbone, head, head_path = backbone_and_head(tmp_path, registers=True)
    state = backbone.state_dict()
    meta = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    meta["mask_token"] = torch.zeros(1, 16)
    meta["register_tokens"] = state["reg_token"]
    meta["cls_token"] = state["cls_token"] - 0.5  # Meta adds pos_embed[:, 0] to the class token
    meta["pos_embed"] = torch.cat([torch.full((1, 1, 16), 0.5), state["pos_embed"]], dim=1)
    weights = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(meta, weights)
    model = create_model(
        config("dinov2_vits14_reg_lc", checkpoint=str(weights), classifier_checkpoint=str(head_path)), num_classes=1000
    ).eval()
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(model(x), expected_logits(backbone, head, x), rtol=1e-5, atol=1e-5)


def test_backbone_without_head_is_refused_for_imagenet(tmp_path: Path) -> None:
    backbone, _, _ = backbone_and_head(tmp_path)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    with pytest.raises(
        ModelError,
        match=r"backbone.safetensors: a backbone without the ImageNet linear head.*dinov2_vits14_linear4_head\.pth",
    ):
        create_model(config(checkpoint=str(weights)), num_classes=1000)
    # Training a new head (base phases) or another class set: a fresh head, as timm does.
    assert (
        create_model(
            config(checkpoint=str(weights), phases=[TrainPhase(split="pretrain", epochs=1)]), num_classes=1000
        ).head.out_features
        == 1000
    )
    assert create_model(config(checkpoint=str(weights)), num_classes=10).head.out_features == 10


def test_head_file_errors_name_the_file(tmp_path: Path) -> None:
    backbone, _, head_path = backbone_and_head(tmp_path)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    one_layer = config(
        checkpoint=str(weights),
        classifier_checkpoint=str(head_path),
        model_kwargs={**CLASSIFIER_KWARGS, "cls_layers": 1},
    )
    with pytest.raises(ModelError, match=r"linear4_head.pth: head weight \(1000, 80\) does not fit.*cls_layers"):
        create_model(one_layer, num_classes=1000)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="garbage.pth: not a readable torch file"):
        create_model(config(checkpoint=str(weights), classifier_checkpoint=str(garbage)), num_classes=1000)
    with pytest.raises(ModelError, match="classifier_checkpoint is for DINOv2 classifiers"):
        create_model(
            BaseConfig(model="vit_tiny_patch16_224", pretrained=True, classifier_checkpoint=str(head_path)),
            num_classes=1000,
        )


@pytest.fixture()
def local_weights_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A stand-in for dl.fbaipublicfiles.com on 127.0.0.1, serving ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def test_hub_route_downloads_metas_head(
    tmp_path: Path, local_weights_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pretrained=True`` without a local file: backbone through timm (here an in-memory state
    instead of the hub), then Meta's head through torch.hub from its URL, cached in TORCH_HOME."""
    url, served = local_weights_server
    monkeypatch.setattr(dinov2, "_META_URL", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    backbone, head, head_path = backbone_and_head(tmp_path)
    (served / "dinov2_vits14").mkdir()
    head_path.rename(served / "dinov2_vits14" / "dinov2_vits14_linear4_head.pth")
    model = timm.create_model(
        "dinov2_vits14_lc",
        pretrained=True,
        pretrained_cfg_overlay={"state_dict": backbone.state_dict()},
        **CLASSIFIER_KWARGS,
    ).eval()
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(model(x), expected_logits(backbone, head, x), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "dinov2_vits14_linear4_head.pth").is_file()


def test_artifact_round_trip(tmp_path: Path) -> None:
    backbone, head, head_path = backbone_and_head(tmp_path)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    base = config(checkpoint=str(weights), classifier_checkpoint=str(head_path))
    model = create_model(base, num_classes=1000).eval()
    save_model_artifact(
        tmp_path / "artifact", model, base, [f"c{i}" for i in range(1000)], preprocessing_of(model, None)
    )
    rebuilt, spec = load_model_artifact(tmp_path / "artifact")
    assert spec["timm_name"] == "dinov2_vits14_lc" and spec["preprocessing"]["input_size"] == [3, 28, 28]
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)
    # The artifact's weights hold the head, so they also load whole as a checkpoint, with no head file.
    again = create_model(config(checkpoint=str(tmp_path / "artifact" / "model.safetensors")), num_classes=1000).eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
