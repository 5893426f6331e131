from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from pipeline.training.rrr import calibrated_weight, log_probability_input_gradient, masked_gradient_penalty, rrr_loss
from pipeline.utils.device import autocast
from tests.helpers.relevance_checks import directional_difference, spread_parameters, unit_direction

CLASSES, SIZE = 3, 4


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES)).double()


def batch(count: int = 2, size: int = SIZE, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 3, size, size, generator=generator, dtype=torch.float64)
    masks = (torch.rand(count, size, size, generator=generator) > 0.5).double()
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return x, labels, masks


# --- by hand on a linear model -------------------------------------------------------------------


def linear_by_hand(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, weight: float
) -> tuple[float, float, list[torch.Tensor]]:
    """For z = W x + b: Σ_k log p_k = Σ_k z_k − K·logsumexp(z), so its input gradient is
    Σ_k W_k − K Σ_j p_j W_j = Wᵀ(1 − K p), a (3·H·W) vector reshaped to the image."""
    linear = model[1]
    ce, penalty, gradients = 0.0, 0.0, []
    for image, label, mask in zip(x, labels, masks, strict=True):
        logits = [
            sum(w * v for w, v in zip(row.tolist(), image.flatten().tolist(), strict=True)) + b
            for row, b in zip(linear.weight, linear.bias.tolist(), strict=True)
        ]
        normaliser = math.log(sum(math.exp(z) for z in logits))
        probabilities = [math.exp(z - normaliser) for z in logits]
        ce += normaliser - logits[int(label)]
        coefficients = torch.tensor([1.0 - CLASSES * p for p in probabilities], dtype=torch.float64)
        gradient = (linear.weight.detach().T @ coefficients).view(3, SIZE, SIZE)
        gradients.append(gradient)
        penalty += sum(float(((1.0 - mask) * gradient[channel]).pow(2).sum()) for channel in range(3))
    count = len(x)
    return ce / count + weight * penalty / count, penalty / count, gradients


def test_calibrated_weight_makes_both_terms_one_size() -> None:
    """Ross et al.'s rule: λ = CE / penalty over all images, whatever the batch size."""
    model = linear_model()
    x, labels, masks = batch(count=5)
    total, penalty, _ = linear_by_hand(model, x, labels, masks, weight=0.0)
    weight = calibrated_weight(model, x, labels, masks, batch_size=2)
    assert weight == pytest.approx(total / penalty, rel=1e-12)
    assert calibrated_weight(model, x, labels, masks, batch_size=5) == pytest.approx(weight, rel=1e-12)
    _, terms = rrr_loss(model, x, labels, masks, penalty_weight=weight)
    assert weight * terms["input_gradient"] == pytest.approx(terms["classification"], rel=1e-12)
    with pytest.raises(ValueError, match="penalty_weight explicitly"):
        calibrated_weight(model, x, labels, torch.ones_like(masks), batch_size=2)


def test_linear_model_by_hand() -> None:
    model = linear_model()
    x, labels, masks = batch()
    expected_total, expected_penalty, expected_gradients = linear_by_hand(model, x, labels, masks, weight=2.5)
    _, gradient = log_probability_input_gradient(model, x)
    torch.testing.assert_close(gradient, torch.stack(expected_gradients), rtol=1e-12, atol=1e-12)
    total, terms = rrr_loss(model, x, labels, masks, penalty_weight=2.5)
    assert total.item() == pytest.approx(expected_total, rel=1e-12)
    assert terms["input_gradient"] == pytest.approx(expected_penalty, rel=1e-12)
    assert terms["classification"] == pytest.approx(expected_total - 2.5 * expected_penalty, rel=1e-12)
    assert expected_penalty > 1e-3


def test_mask_layouts() -> None:
    model = linear_model()
    x, labels, masks = batch()
    reference, _ = rrr_loss(model, x, labels, masks, 1.0)
    channel, _ = rrr_loss(model, x, labels, masks[:, None], 1.0)
    boolean, _ = rrr_loss(model, x, labels, masks.bool(), 1.0)
    assert channel.item() == reference.item() == boolean.item()
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\) or \(B, 1, H, W\)"):
        rrr_loss(model, x, labels, masks[:, None].expand(2, 3, SIZE, SIZE), 1.0)


# --- on a tiny timm ViT --------------------------------------------------------------------------

VIT_SIZE = 16


def tiny_vit(fused: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = (
        timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            num_classes=CLASSES,
            img_size=VIT_SIZE,
            patch_size=4,
            embed_dim=24,
            depth=2,
            num_heads=2,
        )
        .double()
        .eval()
    )
    spread_parameters(model, matrix_scale=0.1)
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def test_all_ones_mask_has_zero_penalty() -> None:
    model = tiny_vit()
    x, labels, _ = batch(size=VIT_SIZE)
    total, terms = rrr_loss(model, x, labels, torch.ones(2, VIT_SIZE, VIT_SIZE), penalty_weight=10.0)
    assert terms["input_gradient"] == 0.0
    assert (
        total.item()
        == terms["classification"]
        == pytest.approx(torch.nn.functional.cross_entropy(model(x), labels).item(), rel=1e-12)
    )
    _, masked_terms = rrr_loss(model, x, labels, torch.zeros(2, VIT_SIZE, VIT_SIZE), penalty_weight=10.0)
    assert masked_terms["input_gradient"] > 1e-4


PROBED = ["cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.bias", "head.weight"]


def test_parameter_gradient_matches_finite_differences() -> None:
    model = tiny_vit()
    x, labels, masks = batch(size=VIT_SIZE)
    parameters = dict(model.named_parameters())
    probed = [parameters[name] for name in PROBED]
    gradients = torch.autograd.grad(rrr_loss(model, x, labels, masks, penalty_weight=3.0)[0], probed)
    for index, (name, parameter, gradient) in enumerate(zip(PROBED, probed, gradients, strict=True)):
        direction = unit_direction(parameter.shape, 10 + index)
        numeric = directional_difference(
            lambda: rrr_loss(model, x, labels, masks, penalty_weight=3.0)[0].item(), parameter, direction
        )
        analytic = (gradient * direction).sum().item()
        assert abs(numeric) > 1e-4, f"{name}: the loss barely depends on it"
        assert analytic == pytest.approx(numeric, rel=1e-5), name


def test_fused_attention_trains_through_the_penalty() -> None:
    """The fused CPU/CUDA attention kernels have no double backward; rrr_loss must still train
    a ViT whose ``fused_attn`` is on (float32 takes the fused kernel), and agree with the unfused one."""
    x, labels, masks = (t.float() if t.is_floating_point() else t for t in batch(size=VIT_SIZE))
    grads = []
    for fused in (True, False):
        model = tiny_vit(fused).float()
        rrr_loss(model, x, labels, masks, penalty_weight=3.0)[0].backward()
        assert model.blocks[0].attn.fused_attn is fused
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
def test_runs_under_autocast(bf16: bool) -> None:
    """cft's wrapper is plain float32 on CPU; bf16 CPU autocast stands in for CUDA's bf16."""
    model = tiny_vit().float()
    x, labels, masks = (t.float() if t.is_floating_point() else t for t in batch(size=VIT_SIZE))
    expected, expected_terms = rrr_loss(model, x, labels, masks, penalty_weight=3.0)
    context = torch.autocast(device_type="cpu", dtype=torch.bfloat16) if bf16 else autocast(torch.device("cpu"))
    with context:
        total, terms = rrr_loss(model, x, labels, masks, penalty_weight=3.0)
        total.backward()
    assert total.dtype == torch.float32
    assert all(isinstance(value, float) for value in terms.values())
    assert total.item() == pytest.approx(expected.item(), rel=5e-2 if bf16 else 1e-6)
    assert terms["input_gradient"] == pytest.approx(expected_terms["input_gradient"], rel=1e-1 if bf16 else 1e-6)
    assert model.blocks[0].attn.qkv.weight.grad.isfinite().all()


def test_penalty_alone_is_lowered_by_sgd() -> None:
    """Descending only the penalty moves the input gradient out of the masked-out region."""
    model = tiny_vit().float()
    x, _, _ = batch(count=4, size=VIT_SIZE, seed=3)
    x = x.float()
    masks = torch.zeros(4, VIT_SIZE, VIT_SIZE)
    masks[:, :, : VIT_SIZE // 2] = 1.0  # the left half is allowed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    penalties = []
    for _ in range(8):
        _, gradient = log_probability_input_gradient(model, x)
        penalty = masked_gradient_penalty(gradient, masks).mean()
        penalties.append(penalty.item())
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    assert all(later < earlier for earlier, later in zip(penalties, penalties[1:])), penalties
    assert penalties[-1] < 0.5 * penalties[0], penalties
