from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pipeline.relevance.attnlrp import UnsupportedModelError, attnlrp
from tests.helpers.lrp_reference import explicit_attnlrp
from tests.helpers.relevance_checks import (
    assert_alignment_gradients_match_finite_differences,
    assert_untouched_outside_the_context,
    spread_parameters,
)

VARIANTS = {
    "vit": {},
    "deit3_layerscale": {"init_values": 0.3},
    "dinov2_registers": {"reg_tokens": 2, "no_embed_class": True, "init_values": 0.3},
    "avg_pool_fc_norm": {"global_pool": "avg", "fc_norm": True, "class_token": False},
}


def tiny_vit(seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    model = (
        timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            num_classes=5,
            img_size=16,
            patch_size=4,
            embed_dim=16,
            depth=2,
            num_heads=2,
            qkv_bias=True,
            **kwargs,
        )
        .double()
        .eval()
    )
    spread_parameters(model)
    return model


def images(seed: int = 1, count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_explicit_layer_by_layer_lrp(variant: str) -> None:
    model = tiny_vit(**VARIANTS[variant])
    x, target = images(), torch.tensor([0, 3, 4])
    ours = attnlrp(model, x, target).pixels
    reference = explicit_attnlrp(model, x, target)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9 * reference.abs().max().item())


def zero_bias_model() -> nn.Module:
    model = tiny_vit(global_pool="avg", fc_norm=True, class_token=False, pos_embed="none")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    return model


def test_exact_conservation_without_attention() -> None:
    """Linear, LayerNorm, GELU, residual and pooling rules conserve relevance exactly with zero biases.

    The attention branch is switched off (zero output projection): through attention AttnLRP is
    conservative only up to the softmax rule's Taylor bias term (next test).
    """
    model = zero_bias_model()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight.zero_()
    x, target = images(), torch.tensor([1, 2, 0])
    relevance = attnlrp(model, x, target)
    logits = model(x).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(relevance.pixels.sum((1, 2)), logits, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(relevance.tokens.sum((1, 2)), logits, rtol=1e-9, atol=1e-12)


def test_approximate_conservation_with_attention() -> None:
    model = zero_bias_model()
    x, target = images(count=8), torch.arange(8) % 5
    total = attnlrp(model, x, target).pixels.sum((1, 2))
    logits = model(x).gather(1, target[:, None])[:, 0]
    relative_error = ((total - logits).abs() / logits.abs()).median()
    assert relative_error < 0.2, f"median relative conservation error {relative_error:.3f}"


PROBED = [
    ("cls_token", (0, 0, 3)),
    ("pos_embed", (0, 2, 5)),
    ("patch_embed.proj.bias", (1,)),
    ("blocks.0.attn.qkv.bias", (4,)),
    ("blocks.0.attn.qkv.weight", (20, 3)),
    ("blocks.1.norm1.weight", (2,)),
    ("blocks.1.norm2.bias", (7,)),
    ("blocks.0.mlp.fc1.bias", (9,)),
    ("blocks.1.mlp.fc2.weight", (3, 11)),
    ("blocks.1.ls1.gamma", (6,)),
    ("blocks.0.norm1.bias", (1,)),
    ("head.weight", (3, 4)),
]


def test_relevance_gradient_matches_finite_differences() -> None:
    model = tiny_vit(init_values=0.3)
    assert_alignment_gradients_match_finite_differences(model, images(count=2), torch.tensor([3, 1]), PROBED)


def test_model_is_untouched_outside_the_context() -> None:
    model = tiny_vit(init_values=0.3).float()
    assert_untouched_outside_the_context(model, images().float())


def test_relevance_logits_are_the_model_logits() -> None:
    model = tiny_vit()
    x = images()
    torch.testing.assert_close(attnlrp(model, x, torch.tensor([0, 1, 2])).logits, model(x), rtol=1e-12, atol=1e-12)


def test_unsupported_models_are_named() -> None:
    convnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    with pytest.raises(UnsupportedModelError, match="timm ConvNeXt and VisionTransformer models, not ResNet"):
        attnlrp(convnet, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    swiglu = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=3,
        img_size=16,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        act_layer=nn.SiLU,
    )
    with pytest.raises(UnsupportedModelError, match=r"no AttnLRP rule for module 'blocks\.0\.mlp\.act' \(SiLU\)"):
        attnlrp(swiglu, torch.randn(1, 3, 16, 16), torch.tensor([0]))
