from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.finetune import RelevanceObjective
from pipeline.relevance.attnlrp import attnlrp
from pipeline.training.loop import joint_augment
from pipeline.training.objective import (
    BCE_MARGIN,
    alignment_terms,
    background_share,
    normalise_relevance,
    relevance_loss,
    self_label_cross_entropy,
)
from tests.helpers.objective import PROBED, cross_entropy_by_hand, fd_inputs, objective, tiny_vit
from tests.helpers.relevance_checks import directional_difference, unit_direction

# --- normalisation and alignment terms --------------------------------------------------------


def test_normalise_relevance() -> None:
    relevance = torch.tensor([[[2.0, -1.0], [0.5, 4.0]], [[-3.0, 0.25], [0.5, 0.0]]])
    normalised = normalise_relevance(relevance)
    expected = torch.tensor([[[0.5, 0.0], [0.125, 1.0]], [[0.0, 0.5], [1.0, 0.0]]])
    torch.testing.assert_close(normalised, expected)
    assert normalised.min() >= 0 and normalised.max() <= 1
    assert normalised.flatten(1).amax(dim=1).tolist() == [1.0, 1.0]


def test_normalise_random_maps_are_in_unit_interval() -> None:
    relevance = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    normalised = normalise_relevance(relevance)
    assert normalised.min().item() == 0.0
    assert normalised.flatten(1).amax(dim=1).tolist() == [1.0] * 5
    assert torch.equal(normalised == 0, relevance <= 0)


def test_zero_and_negative_maps_stay_zero() -> None:
    relevance = torch.stack([torch.zeros(3, 3), -torch.ones(3, 3), torch.eye(3)])
    normalised = normalise_relevance(relevance)
    assert not normalised.isnan().any()
    assert torch.equal(normalised[:2], torch.zeros(2, 3, 3))
    assert torch.equal(normalised[2], torch.eye(3))


RELEVANCE = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]], dtype=torch.float64)
MASK = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)


def test_alignment_terms_mse_by_hand() -> None:
    background, foreground = alignment_terms(RELEVANCE, MASK, "mse")
    assert background.item() == pytest.approx((0.5**2 + 0.25**2) / 4, rel=1e-12)
    assert foreground.item() == pytest.approx(1.0 / 4, rel=1e-12)


def test_alignment_terms_bce_by_hand() -> None:
    assert BCE_MARGIN == 1e-6
    low, high = BCE_MARGIN, 1 - BCE_MARGIN
    # off-mask values [0, 0.5, 0.25, 0] -> clamped [low, 0.5, 0.25, low], target 0
    expected_background = -(2 * math.log(1 - low) + math.log(0.5) + math.log(0.75)) / 4
    # on-mask values [1, 0, 0, 0] -> clamped [high, low, low, low], target [1, 0, 0, 1]
    expected_foreground = -(math.log(high) + 2 * math.log(1 - low) + math.log(low)) / 4
    background, foreground = alignment_terms(RELEVANCE, MASK, "bce")
    assert background.item() == pytest.approx(expected_background, rel=1e-9)
    assert foreground.item() == pytest.approx(expected_foreground, rel=1e-9)


def test_bce_gradient_is_finite_at_the_peak() -> None:
    relevance = RELEVANCE.clone().requires_grad_(True)
    background, foreground = alignment_terms(relevance, MASK, "bce")
    (gradient,) = torch.autograd.grad(background + foreground, relevance)
    assert gradient.isfinite().all()
    assert gradient.abs().max() < 10


def test_unknown_alignment_loss() -> None:
    with pytest.raises(ValueError, match="unknown alignment loss 'l1'"):
        alignment_terms(RELEVANCE, MASK, "l1")


def test_energy_by_hand() -> None:
    """Share of positive relevance off the mask: (0.5 + 0.25) / (1 + 0.5 + 0.25); no foreground term."""
    background, foreground = alignment_terms(RELEVANCE, MASK, "energy")
    assert background.item() == pytest.approx(0.75 / 1.75, abs=1e-12)
    assert foreground.item() == 0.0
    two = torch.cat([RELEVANCE, torch.zeros_like(RELEVANCE)])  # an all-zero map counts as share 0
    assert alignment_terms(two, torch.cat([MASK, MASK]), "energy")[0].item() == pytest.approx(
        0.75 / 1.75 / 2, abs=1e-12
    )


def test_energy_ignores_the_scale_of_a_map() -> None:
    relevance = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.3
    masks = (torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    scaled = relevance * torch.tensor([7.0, 0.01, 3.0], dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(
        alignment_terms(normalise_relevance(relevance), masks, "energy")[0],
        alignment_terms(normalise_relevance(scaled), masks, "energy")[0],
    )


def test_energy_gradient_lowers_an_off_mask_peak() -> None:
    """The case where max normalisation goes wrong: the peak sits off the mask. The energy's
    gradient w.r.t. the raw map is positive there (descent lowers it) and negative on the mask."""
    relevance = torch.tensor([[[0.2, 1.0], [0.5, 0.1]]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    (gradient,) = torch.autograd.grad(alignment_terms(normalise_relevance(relevance), mask, "energy")[0], relevance)
    assert gradient[0, 0, 1] > 0 and gradient[0, 1, 1] > 0  # off the mask, the peak included
    assert gradient[0, 0, 0] < 0 and gradient[0, 1, 0] < 0  # on the mask


@pytest.mark.parametrize("loss", ["bce", "mse", "energy"])
def test_relevance_inside_mask_has_smaller_background_term(loss: str) -> None:
    mask = torch.zeros(1, 6, 6)
    mask[:, 1:4, 2:5] = 1.0
    inside, _ = alignment_terms(mask.clone(), mask, loss)
    outside, _ = alignment_terms(1.0 - mask, mask, loss)
    assert inside.item() < 1e-5
    assert outside.item() > 0.1
    assert inside < outside


# --- weights and the full loss ---------------------------------------------------------------


def test_reference_weights() -> None:
    assert objective(loss="bce").weights() == (1.2, 0.5)
    assert objective(loss="mse").weights() == (2.0, 0.3)
    assert objective(loss="energy").weights() == (1.0, 0.0)
    assert objective().weights() == (1.2, 0.5)
    assert objective(loss="mse", background_weight=0.7).weights() == (0.7, 0.3)
    assert objective(loss="bce", foreground_weight=0.0).weights() == (1.2, 0.0)
    assert objective(loss="mse", background_weight=1.5, foreground_weight=4.0).weights() == (1.5, 4.0)


def test_self_label_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.1, 3.0, -1.0], [-0.5, -0.2, -0.4]], dtype=torch.float64)
    for temperature in (1.0, 2.5, 0.5):
        assert self_label_cross_entropy(logits, temperature).item() == pytest.approx(
            cross_entropy_by_hand(logits, temperature), rel=1e-12
        )
    assert self_label_cross_entropy(logits, 2.5).item() != pytest.approx(
        self_label_cross_entropy(logits, 1.0).item(), rel=1e-3
    )
    labels = torch.tensor([2, 0, 1])
    assert self_label_cross_entropy(logits, 1.0).item() != pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-3
    )


def test_self_label_gradient_does_not_flow_through_target() -> None:
    logits = torch.tensor([[1.0, 3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(self_label_cross_entropy(logits, 2.0), logits)
    expected = (
        torch.softmax(logits.detach() / 2.0, dim=1) - torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    ) / 2.0
    torch.testing.assert_close(gradient, expected)


@pytest.mark.parametrize(
    "values",
    [
        {"loss": "bce"},
        {"loss": "mse"},
        {
            "loss": "bce",
            "relevance_weight": 1.7,
            "background_weight": 0.4,
            "foreground_weight": 2.5,
            "classification_weight": 0.9,
            "temperature": 3.0,
        },
        {"loss": "mse", "relevance_weight": 0.0, "classification_weight": 1.0},
    ],
)
def test_relevance_loss_total_by_hand(values: dict[str, object]) -> None:
    generator = torch.Generator().manual_seed(2)
    relevance = torch.randn(3, 5, 5, generator=generator)
    masks = (torch.rand(3, 5, 5, generator=generator) > 0.5).float()
    logits = torch.randn(3, 4, generator=generator)
    config = objective(**values)
    total, terms = relevance_loss(relevance, masks, logits, config)
    normalised = normalise_relevance(relevance)
    background, foreground = alignment_terms(normalised, masks, config.loss)
    w_bg, w_fg = config.weights()
    classification = cross_entropy_by_hand(logits, config.temperature)
    expected = (
        config.relevance_weight * (w_bg * background.item() + w_fg * foreground.item())
        + config.classification_weight * classification
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms == pytest.approx(
        {"background": background.item(), "foreground": foreground.item(), "classification": classification}, rel=1e-5
    )
    assert terms["background"] > 0 and terms["foreground"] > 0


def test_background_share_by_hand() -> None:
    relevance = torch.tensor(
        [
            [[2.0, -1.0], [1.0, 1.0]],
            [[0.0, 0.0], [0.0, 0.0]],
            [[3.0, -5.0], [0.0, 0.0]],
            [[0.5, 0.5], [1.0, 2.0]],
        ]
    )
    masks = torch.tensor(
        [
            [[1, 0], [0, 0]],
            [[1, 1], [0, 0]],
            [[1, 0], [0, 0]],
            [[0, 0], [0, 1]],
        ],
        dtype=torch.bool,
    )
    torch.testing.assert_close(background_share(relevance, masks), torch.tensor([0.5, 0.0, 0.0, 0.5]))


# --- gradient of the full CFT objective through AttnLRP --------------------------------------


def cft_loss_float64(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, config: RelevanceObjective
) -> torch.Tensor:
    """relevance_loss's formula kept in float64 (relevance_loss itself computes in float32)."""
    relevance = attnlrp(model, x, targets, create_graph=True)
    background, foreground = alignment_terms(normalise_relevance(relevance.upsampled()), masks, config.loss)
    w_bg, w_fg = config.weights()
    classification = self_label_cross_entropy(relevance.logits, config.temperature)
    return (
        config.relevance_weight * (w_bg * background + w_fg * foreground)
        + config.classification_weight * classification
    )


def cft_loss(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, config: RelevanceObjective
) -> torch.Tensor:
    relevance = attnlrp(model, x, targets, create_graph=True)
    return relevance_loss(relevance.upsampled(), masks, relevance.logits, config)[0]


@pytest.mark.parametrize("loss", ["mse", "bce", "energy"])
def test_cft_loss_gradient_matches_finite_differences(loss: str) -> None:
    model = tiny_vit()
    x, masks, targets = fd_inputs()
    config = objective(loss=loss)
    parameters = dict(model.named_parameters())
    probed = [parameters[name] for name in PROBED]
    exact = cft_loss_float64(model, x, targets, masks, config)
    assert exact.dtype == torch.float64
    gradients = torch.autograd.grad(exact, probed)
    float32_gradients = torch.autograd.grad(cft_loss(model, x, targets, masks, config), probed)
    # float32 rounds 1 - BCE_MARGIN to 1 - 1.013e-6, which shifts the BCE of saturated pixels.
    assert cft_loss(model, x, targets, masks, config).item() == pytest.approx(
        exact.item(), rel=1e-3 if loss == "bce" else 1e-5
    )
    for index, (name, parameter, gradient) in enumerate(zip(PROBED, probed, gradients, strict=True)):
        direction = unit_direction(parameter.shape, 10 + index)
        numeric = directional_difference(
            lambda: cft_loss_float64(model, x, targets, masks, config).item(), parameter, direction
        )
        analytic = (gradient * direction).sum().item()
        assert abs(numeric) > 1e-5, f"{name}: the loss barely depends on it"
        assert analytic == pytest.approx(numeric, rel=1e-4), name
        torch.testing.assert_close(
            float32_gradients[index], gradient, rtol=1e-4, atol=1e-6 * gradient.abs().max().item()
        )


def test_bce_loss_gradients_are_finite_and_nonzero() -> None:
    model = tiny_vit()
    x, masks, targets = fd_inputs()
    parameters = dict(model.named_parameters())
    names = ["cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "patch_embed.proj.bias", "head.bias"]
    gradients = torch.autograd.grad(
        cft_loss(model, x, targets, masks, objective(loss="bce")), [parameters[n] for n in names]
    )
    for name, gradient in zip(names, gradients, strict=True):
        assert gradient.isfinite().all(), name
        assert gradient.abs().max() > 1e-6, name


# --- joint augmentation ---------------------------------------------------------------------

SIZE = 24


def blob_batch(count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (N, 2, H, W): a disc and a half plane; images whose channel 0 is the disc mask."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cx, cy = torch.randint(6, 18, (count,), generator=generator), torch.randint(6, 18, (count,), generator=generator)
    radius = torch.randint(3, 7, (count,), generator=generator)
    disc = ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2 <= radius[:, None, None] ** 2).float()
    half = (xx[None] < cx[:, None, None]).float()
    masks = torch.stack([disc, half], dim=1)
    images = torch.cat([disc[:, None], torch.rand(count, 2, SIZE, SIZE, generator=generator)], dim=1)
    return images, masks


def test_flip_only_moves_image_and_mask_together() -> None:
    images, masks = blob_batch()
    warped_images, warped_masks = joint_augment(
        images, masks, torch.Generator().manual_seed(3), flip=True, min_crop_scale=1.0
    )
    assert torch.equal(warped_images[:, 0].round(), warped_masks[:, 0])
    assert (warped_images[:, 0] - warped_masks[:, 0]).abs().max() < 1e-5
    flipped = [bool(torch.equal(warped_masks[i], masks[i].flip(-1))) for i in range(len(masks))]
    kept = [bool(torch.equal(warped_masks[i], masks[i])) for i in range(len(masks))]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)
    for i in range(len(masks)):
        expected = images[i].flip(-1) if flipped[i] else images[i]
        torch.testing.assert_close(warped_images[i], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_moves_image_and_mask_together(seed: int) -> None:
    images, masks = blob_batch()
    warped_images, warped_masks = joint_augment(
        images, masks, torch.Generator().manual_seed(seed), flip=True, min_crop_scale=0.6
    )
    agreement = ((warped_images[:, 0] > 0.5).float() == warped_masks[:, 0]).float().mean(dim=(1, 2))
    assert agreement.min() >= 0.95
    assert not torch.equal(warped_masks, masks) and not torch.equal(warped_masks, masks.flip(-1))
    assert set(warped_masks.unique().tolist()) <= {0.0, 1.0}
    assert warped_masks.shape == masks.shape and warped_images.shape == images.shape
    zoomed = warped_masks[:, 0].sum(dim=(1, 2)) >= masks[:, 0].sum(dim=(1, 2))
    assert zoomed.float().mean() >= 0.75


def test_same_seed_same_output() -> None:
    images, masks = blob_batch()
    first = joint_augment(images, masks, torch.Generator().manual_seed(5), flip=True, min_crop_scale=0.6)
    second = joint_augment(images, masks, torch.Generator().manual_seed(5), flip=True, min_crop_scale=0.6)
    other = joint_augment(images, masks, torch.Generator().manual_seed(6), flip=True, min_crop_scale=0.6)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_no_flip_full_crop_is_identity() -> None:
    images, masks = blob_batch()
    warped_images, warped_masks = joint_augment(
        images, masks.bool(), torch.Generator().manual_seed(0), flip=False, min_crop_scale=1.0
    )
    assert torch.equal(warped_masks, masks)
    torch.testing.assert_close(warped_images, images, rtol=0, atol=1e-5)


def test_relevance_loss_runs_under_autocast() -> None:
    """BCE raises under CUDA autocast (bf16 training); the loss must switch autocast off itself.
    On a CPU-only machine this checks the dtype and value only: CPU autocast lets BCE through."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    relevance = torch.rand(2, 4, 4, device=device)
    masks = (torch.rand(2, 4, 4, device=device) > 0.5).float()
    logits = torch.randn(2, 3, device=device)
    objective = RelevanceObjective(objective="relevance")
    expected, _ = relevance_loss(relevance, masks, logits, objective)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        loss, _ = relevance_loss(relevance.bfloat16(), masks, logits.bfloat16(), objective)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=2e-2)
