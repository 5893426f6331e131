from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import pipeline.models.dinov2_classifier  # noqa: F401  (registers dinov2_*_lc with timm)
from pipeline.relevance.rollout import attention_capture, rollout
from pipeline.training.objective import normalise_relevance
from tests.helpers.relevance_checks import directional_difference, spread_parameters, unit_direction

SIZE, PATCH = 32, 8
TINY = dict(pretrained=False, num_classes=5, img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=2, num_heads=3)


def tiny_vit(registers: int = 0, fused: bool = True) -> nn.Module:
    torch.manual_seed(0)
    extra = dict(reg_tokens=registers, no_embed_class=True) if registers else {}
    model = (
        timm.create_model("vit_small_patch16_224" if registers else "vit_tiny_patch16_224", **TINY, **extra)
        .double()
        .eval()
    )
    spread_parameters(model, matrix_scale=0.1)
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def images(count: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- an independent reference: hooks and explicit loops, one image -----------------------------


def reference(
    model: nn.Module, image: torch.Tensor, target: int, gradients: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rollout of one image (1, 3, H, W) without touching the attention forward.

    The attention probabilities are rebuilt per head from the hooked ``qkv`` output, and ∂s/∂A
    comes from the chain rule through the heads' output ``O_h = A_h V_h``: ∂s/∂A_h = (∂s/∂O_h) V_hᵀ,
    with ∂s/∂O read at the input of ``proj``. ``gradients`` replaces ∂s/∂A (held fixed), for finite
    differences of the function the training loss differentiates. Returns (map, ∂s/∂A per block)."""
    qkv_outputs: list[torch.Tensor] = []
    head_outputs: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        hooks.append(block.attn.qkv.register_forward_hook(lambda module, args, out: qkv_outputs.append(out[0])))
        hooks.append(block.attn.proj.register_forward_pre_hook(lambda module, args: head_outputs.append(args[0])))
    try:
        score = model(image)[0, target]
    finally:
        for hook in hooks:
            hook.remove()
    output_gradients = torch.autograd.grad(score, head_outputs, retain_graph=True)
    heads, tokens = model.blocks[0].attn.num_heads, qkv_outputs[0].shape[0]
    width = qkv_outputs[0].shape[1] // 3
    dim = width // heads
    relevance = torch.eye(tokens, dtype=image.dtype)
    used: list[torch.Tensor] = []
    for layer, (qkv, output_gradient) in enumerate(zip(qkv_outputs, output_gradients, strict=True)):
        cam = torch.zeros(tokens, tokens, dtype=image.dtype)
        layer_gradients = []
        for head in range(heads):
            q, k, v = (qkv[:, part * width + head * dim : part * width + (head + 1) * dim] for part in range(3))
            attention = torch.softmax(q @ k.T / math.sqrt(dim), dim=-1)
            gradient = (output_gradient[0, :, head * dim : (head + 1) * dim] @ v.T).detach()
            if gradients is not None:
                gradient = gradients[layer][head]
            layer_gradients.append(gradient)
            cam = cam + (gradient * attention).clamp(min=0) / heads
        used.append(torch.stack(layer_gradients))
        relevance = relevance + cam @ relevance
    row = relevance[0, model.num_prefix_tokens :].reshape(1, 1, SIZE // PATCH, SIZE // PATCH)
    smooth = F.interpolate(row, scale_factor=PATCH, mode="bilinear")[0, 0]  # RobustViT's call
    return (smooth - smooth.min()) / (smooth.max() - smooth.min()), used


@pytest.mark.parametrize("registers", [0, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_independent_reference(registers: int, fused: bool) -> None:
    model = tiny_vit(registers, fused)
    assert model.num_prefix_tokens == 1 + registers
    x, targets = images(), torch.tensor([1, 4])
    maps = rollout(model, x, targets).upsampled()
    assert maps.shape == (2, SIZE, SIZE)
    for index in range(2):
        expected, _ = reference(model, x[index : index + 1], int(targets[index]))
        torch.testing.assert_close(maps[index], expected, rtol=1e-9, atol=1e-12)
    other = rollout(model, x, torch.tensor([2, 0])).upsampled()
    assert (other - maps).abs().max() > 0.05  # the map depends on the target class


def test_dinov2_linear_classifier_with_registers() -> None:
    """cft's own DINOv2 classifier (class tokens of the last blocks + mean patch token, 4 registers)."""
    torch.manual_seed(0)
    model = timm.create_model(
        "dinov2_vits14_reg_lc",
        pretrained=False,
        num_classes=5,
        img_size=28,
        patch_size=14,
        embed_dim=48,
        depth=2,
        num_heads=3,
        cls_layers=1,
    ).eval()
    result = rollout(model, torch.randn(2, 3, 28, 28), torch.tensor([0, 3]))
    assert model.num_prefix_tokens == 5
    assert result.tokens.shape == (2, 2, 2) and result.maps.shape == (2, 28, 28)
    assert result.maps.flatten(1).amax(dim=1).tolist() == [1.0, 1.0]


# --- the patch is reversible ---------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_patch_restores_forward_exactly(fused: bool) -> None:
    model = tiny_vit(fused=fused).float()
    x = images().float()
    before = model(x)
    with attention_capture(model) as captured:
        inside = model(x)
    assert all(attention is not None and attention.shape == (2, 3, 17, 17) for attention in captured)
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-6)  # explicit = fused, up to rounding
    rollout(model, x, torch.tensor([0, 1]), create_graph=True)
    with pytest.raises(RuntimeError, match="boom"), attention_capture(model):
        raise RuntimeError("boom")
    assert torch.equal(model(x), before)
    for block in model.blocks:
        assert block.attn.fused_attn is fused
        assert "forward" not in vars(block.attn)


def test_nested_capture_is_refused() -> None:
    model = tiny_vit()
    with (
        attention_capture(model),
        pytest.raises(ValueError, match="already has a patched forward"),
        attention_capture(model),
    ):
        pass
    assert all("forward" not in vars(block.attn) for block in model.blocks)


# --- values --------------------------------------------------------------------------------------


def test_values_span_unit_interval_per_image() -> None:
    model = tiny_vit().float()
    maps = rollout(model, images(4, seed=3).float(), torch.tensor([0, 1, 2, 3])).upsampled()
    assert maps.dtype == torch.float32
    assert maps.flatten(1).amin(dim=1).tolist() == [0.0] * 4
    assert maps.flatten(1).amax(dim=1).tolist() == [1.0] * 4
    assert torch.equal(normalise_relevance(maps), maps)  # the objective's normalisation is a no-op on them
    with torch.no_grad():  # monitoring code may hold no graph; the attention gradients still need one
        assert torch.equal(rollout(model, images(4, seed=3).float(), torch.tensor([0, 1, 2, 3])).upsampled(), maps)


def test_a_map_without_signal_is_zero_not_nan() -> None:
    """A zero head gives zero attention gradients: cam = 0, R = I, a constant map (RobustViT: 0/0)."""
    model = tiny_vit()
    with torch.no_grad():
        model.head.weight.zero_()
    maps = rollout(model, images(), torch.tensor([0, 1])).upsampled()
    assert torch.equal(maps, torch.zeros_like(maps))


def test_runs_under_cpu_autocast() -> None:
    model = tiny_vit().float()
    x = images().float()
    expected = rollout(model, x, torch.tensor([0, 1])).upsampled()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        maps = rollout(model, x, torch.tensor([0, 1])).upsampled()
    assert maps.dtype == torch.float32
    assert (maps - expected).abs().max() < 0.1


# --- gradients -----------------------------------------------------------------------------------

MASK = (torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(7)) > 0.5).double()
PROBED = ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.bias", "pos_embed", "blocks.0.mlp.fc1.weight"]


def reference_loss(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, gradients: list[list[torch.Tensor]] | None = None
) -> torch.Tensor:
    maps = [
        reference(model, x[i : i + 1], int(targets[i]), None if gradients is None else gradients[i])[0]
        for i in range(len(x))
    ]
    return (torch.stack(maps) * MASK).sum()


def test_gradient_flows_through_attention_maps_only() -> None:
    model = tiny_vit()
    x, targets = images(), torch.tensor([1, 4])
    detached = rollout(model, x, targets)
    assert not detached.maps.requires_grad and not detached.logits.requires_grad
    parameters = dict(model.named_parameters())
    result = rollout(model, x, targets, create_graph=True)
    loss = (result.upsampled() * MASK).sum()
    qkv, head = torch.autograd.grad(
        loss, [parameters["blocks.0.attn.qkv.weight"], parameters["head.weight"]], allow_unused=True
    )
    assert qkv is not None and qkv.abs().max() > 1e-3
    assert head is None  # the head only enters through ∂s/∂A, which is held constant
    assert result.logits.requires_grad  # for the classification term of the same loss


def test_gradient_matches_finite_differences_of_the_detached_function() -> None:
    """Autograd of the rollout loss = central differences of the reference with ∂s/∂A frozen at θ₀;
    it differs from the differences of the full function (∂s/∂A recomputed), so they really are constants."""
    model = tiny_vit()
    x, targets = images(), torch.tensor([1, 4])
    parameters = dict(model.named_parameters())
    probed = [parameters[name] for name in PROBED]
    gradients = torch.autograd.grad((rollout(model, x, targets, create_graph=True).upsampled() * MASK).sum(), probed)
    frozen = [reference(model, x[i : i + 1], int(targets[i]))[1] for i in range(len(x))]
    frozen = [[layer.detach() for layer in image] for image in frozen]
    for index, (name, parameter, gradient) in enumerate(zip(PROBED, probed, gradients, strict=True)):
        direction = unit_direction(parameter.shape, 20 + index)
        analytic = (gradient * direction).sum().item()
        numeric = directional_difference(lambda: reference_loss(model, x, targets, frozen).item(), parameter, direction)
        numeric_full = directional_difference(lambda: reference_loss(model, x, targets).item(), parameter, direction)
        assert abs(numeric) > 1e-3, f"{name}: the loss barely depends on it"
        assert analytic == pytest.approx(numeric, rel=1e-5), name
        assert abs(numeric_full - analytic) > 1e-2 * abs(analytic), (
            f"{name}: frozen and full gradients agree, the check proves nothing"
        )


# --- refusals ------------------------------------------------------------------------------------


def test_convnext_is_refused() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=5)
    with pytest.raises(ValueError, match=r"needs a vision transformer with blocks\[i\]\.attn; ConvNeXt has none"):
        rollout(model, torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_vit_without_class_token_is_refused() -> None:
    model = timm.create_model("vit_tiny_patch16_224", **{**TINY, "class_token": False, "global_pool": "avg"})
    with pytest.raises(ValueError, match="VisionTransformer has no class token"):
        rollout(model, torch.randn(1, 3, SIZE, SIZE), torch.tensor([0]))


def test_other_attention_forward_is_refused() -> None:
    from timm.layers import Attention

    class Talking(Attention):
        def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            return super().forward(x)

    model = tiny_vit()
    model.blocks[1].attn = Talking(48, num_heads=3)
    with pytest.raises(ValueError, match=r"covers timm's Attention; VisionTransformer\.blocks\[1\]\.attn is Talking"):
        rollout(model, images(), torch.tensor([0, 1]))


def test_skipped_block_is_refused() -> None:
    model = tiny_vit()
    model.forward = lambda x: model.forward_head(model.norm(model.blocks[0](model._pos_embed(model.patch_embed(x)))))
    with pytest.raises(ValueError, match="skipped a block"):
        rollout(model, images(), torch.tensor([0, 1]))


def test_dropped_patches_are_refused() -> None:
    model = timm.create_model("vit_tiny_patch16_224", **TINY, patch_drop_rate=0.5).train()
    with pytest.raises(ValueError, match="do not tile a 32×32 image"):
        rollout(model, torch.randn(1, 3, SIZE, SIZE), torch.tensor([0]))
