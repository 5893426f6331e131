"""AttnLRP for timm ConvNeXt-V2: the rules against an explicit reference, conservation, exact
parameter gradients, model hygiene, a fine-tuning step, and refusal of uncovered models."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.relevance.attnlrp import CNN_CELL, UnsupportedModelError, attnlrp, relevance_cell
from tests.helpers.lrp_reference import explicit_convnext_lrp
from tests.helpers.relevance_checks import (
    assert_alignment_gradients_match_finite_differences,
    assert_fine_tuning_steps_move_the_map,
    assert_untouched_outside_the_context,
    spread_parameters,
)

TINY = {"num_classes": 5, "depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16)}
VARIANTS = {
    "conv_mlp": {},  # atto-pico-nano layout: LayerNorm2d and 1×1 convs, channels-first GRN
    "channels_last": {
        "conv_mlp": False,
        "depths": (2, 1, 1, 1),
    },  # tiny-huge layout: LayerNorm, Linear, channels-last GRN
    "layerscale_hidden_head": {"conv_mlp": False, "ls_init_value": 0.5, "head_hidden_size": 12},
}


def tiny_convnext(seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("convnextv2_atto", pretrained=False, **{**TINY, **kwargs}).double().eval()
    spread_parameters(model)
    return model


def images(seed: int = 1, count: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_explicit_layer_by_layer_lrp(variant: str) -> None:
    model = tiny_convnext(**VARIANTS[variant])
    x, target = images(), torch.tensor([0, 3, 4])
    ours = attnlrp(model, x, target).pixels
    reference = explicit_convnext_lrp(model, x, target)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9 * reference.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_conservation_without_biases(variant: str) -> None:
    """With every additive term zero the linearised network is linear and homogeneous in x̃ and
    equals the model at x̃ = x, so input × gradient sums to the logit exactly (Euler). The terms
    that break it are exactly the biases: convolutions and Linear layers, LayerNorm β and GRN β
    (timm names all of them ``bias``). σ, Nx and the eps inside them are coefficients, not offsets."""
    model = tiny_convnext(**VARIANTS[variant])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    x, target = images(), torch.tensor([1, 2, 0])
    relevance = attnlrp(model, x, target)
    logits = model(x).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(relevance.pixels.sum((1, 2)), logits, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(relevance.tokens.sum((1, 2)), logits, rtol=1e-9, atol=1e-12)


PROBED = [
    ("stem.0.weight", (2, 1, 0, 3)),
    ("stem.0.bias", (3,)),
    ("stem.1.weight", (1,)),
    ("stages.0.blocks.0.gamma", (2,)),
    ("stages.0.blocks.0.conv_dw.weight", (5, 0, 3, 2)),
    ("stages.0.blocks.0.norm.bias", (6,)),
    ("stages.0.blocks.0.mlp.fc1.weight", (7, 2)),
    ("stages.0.blocks.0.mlp.grn.weight", (11,)),
    ("stages.0.blocks.0.mlp.grn.bias", (6,)),
    ("stages.1.downsample.0.weight", (3,)),
    ("stages.1.downsample.1.bias", (9,)),
    ("stages.1.blocks.0.mlp.fc2.weight", (4, 20)),
    ("stages.3.blocks.0.mlp.grn.weight", (30,)),
    ("head.norm.bias", (12,)),
    ("head.pre_logits.fc.weight", (5, 13)),
    ("head.fc.weight", (3, 4)),
]


def test_relevance_gradient_matches_finite_differences() -> None:
    model = tiny_convnext(**VARIANTS["layerscale_hidden_head"])
    assert_alignment_gradients_match_finite_differences(
        model, images(count=2), torch.tensor([3, 1]), PROBED, pixel_term=True
    )


def test_model_is_untouched_outside_the_context() -> None:
    model = tiny_convnext(ls_init_value=0.5).float()
    assert_untouched_outside_the_context(model, images().float())


def test_relevance_logits_are_the_model_logits() -> None:
    model = tiny_convnext(conv_mlp=False)
    x = images()
    torch.testing.assert_close(attnlrp(model, x, torch.tensor([0, 1, 2])).logits, model(x), rtol=1e-12, atol=1e-12)


def test_relevance_grid_cells() -> None:
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=1,
        num_heads=2,
    )
    assert relevance_cell(vit) == (4, 4)
    assert relevance_cell(tiny_convnext()) == CNN_CELL == (16, 16)
    x = images(count=2, size=40).float()  # 40 px: the last row/column of cells is partial
    relevance = attnlrp(tiny_convnext().float(), x, torch.tensor([0, 1]))
    assert relevance.tokens.shape == (2, 3, 3)
    torch.testing.assert_close(relevance.tokens.sum((1, 2)), relevance.pixels.sum((1, 2)))
    upsampled = relevance.upsampled()
    assert upsampled.shape == (2, 40, 40)
    assert torch.equal(upsampled[:, 32:, 32:], relevance.tokens[:, 2:, 2:].expand(-1, 8, 8))
    vit_relevance = attnlrp(vit, images(size=16).float(), torch.tensor([0, 1, 2]))
    nearest = F.interpolate(vit_relevance.tokens[:, None], size=(16, 16), mode="nearest")[:, 0]
    assert torch.equal(vit_relevance.upsampled(), nearest)


def test_fine_tuning_steps_move_the_map() -> None:
    model = tiny_convnext(seed=3, conv_mlp=False, drop_path_rate=0.1).float().train()
    assert_fine_tuning_steps_move_the_map(model, images(count=4).float(), torch.tensor([0, 1, 2, 3]))


def test_unsupported_models_are_named() -> None:
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3, layers=(1, 1, 1, 1))
    with pytest.raises(
        UnsupportedModelError,
        match=r"not ResNet; no rule for 'bn1' \(BatchNorm2d\), 'act1' \(ReLU\), 'maxpool' \(MaxPool2d\)",
    ):
        attnlrp(resnet, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    uncovered = {
        r"'head\.global_pool\.pool' \(AdaptiveMaxPool2d\)": {"global_pool": "max"},
        r"'stages\.0\.blocks\.0\.mlp\.act' \(SiLU\)": {"act_layer": "silu"},
        r"'stem\.1' \(RmsNorm2d\)": {"norm_layer": "rmsnorm2d"},
    }
    for message, kwargs in uncovered.items():
        model = timm.create_model("convnextv2_atto", pretrained=False, **{**TINY, **kwargs})
        with pytest.raises(UnsupportedModelError, match=rf"no AttnLRP rule for module {message}"):
            attnlrp(model, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    spatial = timm.create_model("convnextv2_atto", pretrained=False, global_pool="", **TINY)
    with pytest.raises(UnsupportedModelError, match="without global pooling"):
        attnlrp(spatial, torch.randn(1, 3, 32, 32), torch.tensor([0]))
