"""The options against the paper objective's flaws: detached max-normalisation, the anchors and
the competitor penalty (pipeline/training/objective.py), by hand and against float64 finite differences."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pipeline.config.finetune import RelevanceObjective
from pipeline.relevance.attnlrp import attnlrp
from pipeline.training import objective as objective_module
from pipeline.training.objective import (
    BCE_MARGIN,
    DETACHED_MAX_MARGIN,
    alignment_terms,
    anchor_term,
    base_kl_divergence,
    competitor_classes,
    competitor_penalty,
    competitor_relevance,
    normalise_relevance,
    relevance_loss,
)
from tests.helpers.objective import PROBED, cross_entropy_by_hand, fd_inputs, objective, tiny_vit
from tests.helpers.relevance_checks import directional_difference, unit_direction

# --- configuration -----------------------------------------------------------------------------


def test_defaults_are_the_papers_objective() -> None:
    config = objective()
    assert (config.normalisation, config.anchor, config.competitor_weight, config.competitors) == (
        "max",
        "self_label",
        0.0,
        1,
    )


@pytest.mark.parametrize(
    "values", [{"normalisation": "sum"}, {"anchor": "soft"}, {"competitor_weight": -0.1}, {"competitors": 0}]
)
def test_invalid_options_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=next(iter(values))):
        objective(**values)


# --- normalisation -----------------------------------------------------------------------------


def test_detached_max_by_hand() -> None:
    assert DETACHED_MAX_MARGIN == 0.1
    relevance = torch.tensor([[[2.0, -1.0], [0.5, 4.0]]], dtype=torch.float64)
    normalised = normalise_relevance(relevance, "detached_max")
    torch.testing.assert_close(normalised, torch.tensor([[[0.5, 0.0], [0.125, 1.0]]], dtype=torch.float64) / 1.1)
    assert normalised.max().item() == pytest.approx(1 / 1.1) and normalised.max().item() < 1 - BCE_MARGIN
    torch.testing.assert_close(normalise_relevance(torch.zeros(1, 2, 2), "detached_max"), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="unknown normalisation 'sum'"):
        normalise_relevance(relevance, "sum")


# A 3×3 map whose peak (2.0, top right) lies off the mask (the left column and the centre).
PEAKED = torch.tensor([[[0.3, 0.1, 2.0], [0.4, 0.6, 0.5], [0.2, 0.7, 0.3]]], dtype=torch.float64)
PEAKED_MASK = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
BACKGROUND_ONLY = {
    "relevance_weight": 1.0,
    "background_weight": 1.0,
    "foreground_weight": 0.0,
    "classification_weight": 0.0,
}


def map_gradient(relevance: torch.Tensor, masks: torch.Tensor, **values: object) -> torch.Tensor:
    relevance = relevance.clone().requires_grad_(True)
    logits = torch.zeros(len(relevance), 3, dtype=torch.float64)
    (gradient,) = torch.autograd.grad(relevance_loss(relevance, masks, logits, objective(**values))[0], relevance)
    return gradient


def test_max_normalisation_raises_an_off_mask_peak() -> None:
    """The flaw that detached_max exists for: under the paper's ``max``, the background term alone
    has a negative gradient at the off-mask peak, so gradient descent raises it. By hand: the peak
    is clamped (no direct gradient); through the divisor each other off-mask cell i adds
    ``−BCE'(x_i)·R_i / peak² / N`` with ``BCE'(x) = 1 / (1 − x)``."""
    gradient = map_gradient(PEAKED, PEAKED_MASK, **BACKGROUND_ONLY, normalisation="max")
    peak = 2.0
    others = [0.1, 0.5, 0.7, 0.3]
    expected = -sum(value / (1 - value / peak) / peak**2 for value in others) / 9
    assert gradient[0, 0, 2].item() == pytest.approx(expected, rel=1e-9)
    assert gradient[0, 0, 2] < 0


def test_detached_max_lowers_an_off_mask_peak() -> None:
    """Same map under detached_max: each cell gets its own BCE gradient ``1 / ((1 − x)·c·N)`` with
    ``c = 1.1·peak``; the peak's is the largest, finite and positive (descent lowers it)."""
    gradient = map_gradient(PEAKED, PEAKED_MASK, **BACKGROUND_ONLY, normalisation="detached_max")
    scale = 1.1 * 2.0
    for (row, col), value in {(0, 2): 2.0, (0, 1): 0.1, (1, 2): 0.5, (2, 1): 0.7, (2, 2): 0.3}.items():
        assert gradient[0, row, col].item() == pytest.approx(1 / ((1 - value / scale) * scale * 9), rel=1e-9)
    assert gradient[0, 0, 2].item() == pytest.approx(11 / (2.2 * 9), rel=1e-9)
    assert gradient[0, 0, 2] == gradient.max()
    assert torch.all(gradient[PEAKED_MASK.bool()] == 0)  # w_fg = 0: the mask is left alone


@pytest.mark.parametrize("seed", range(8))
def test_off_mask_peak_is_never_raised_by_detached_max(seed: int) -> None:
    """Random maps with the peak moved off the mask: under detached_max no off-mask cell is ever
    raised, by the background term alone or with the foreground term; under max the peak is."""
    generator = torch.Generator().manual_seed(seed)
    relevance = torch.randn(4, 6, 6, generator=generator, dtype=torch.float64)
    masks = (torch.rand(4, 6, 6, generator=generator) > 0.5).double()
    peaks = relevance.flatten(1).argmax(dim=1)
    masks.view(4, -1)[torch.arange(4), peaks] = 0.0
    off_mask_positive = (masks == 0) & (relevance > 0)
    for values in (BACKGROUND_ONLY, {"classification_weight": 0.0}):
        detached = map_gradient(relevance, masks, **values, normalisation="detached_max")
        assert torch.all(detached[off_mask_positive] > 0)
        assert torch.all(detached.view(4, -1)[torch.arange(4), peaks] > 0)
    paper = map_gradient(relevance, masks, **BACKGROUND_ONLY, normalisation="max")
    assert torch.all(paper.view(4, -1)[torch.arange(4), peaks] < 0)


def test_energy_is_unaffected_by_the_normalisation() -> None:
    relevance = (
        torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.3
    ).requires_grad_(True)
    masks = (torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(5)) > 0.5).double()
    values, gradients = [], []
    for normalisation in ("max", "detached_max"):
        energy = alignment_terms(normalise_relevance(relevance, normalisation), masks, "energy")[0]
        values.append(energy)
        gradients.append(torch.autograd.grad(energy, relevance)[0])
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-9, atol=1e-15)
    assert gradients[0].abs().max() > 1e-3


# --- anchors -----------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 1.0, 0.5], [0.1, 3.0, -1.0], [-0.5, -0.2, -0.4]], dtype=torch.float64)
BASE_LOGITS = torch.tensor([[0.0, 1.5, 0.5], [1.0, 1.0, 2.0], [0.3, -0.7, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([2, 0, 1])


def softmax_by_hand(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(value / temperature) for value in row]
    return [value / sum(exps) for value in exps]


def kl_by_hand(logits: torch.Tensor, base: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for row, base_row in zip(logits.tolist(), base.tolist(), strict=True):
        p, q = softmax_by_hand(base_row, temperature), softmax_by_hand(row, temperature)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))
    return total / len(logits)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_label_anchor_by_hand(temperature: float) -> None:
    expected = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        expected += math.log(sum(math.exp(v / temperature) for v in row)) - row[label] / temperature
    value = anchor_term(LOGITS, objective(anchor="labels", temperature=temperature), LABELS, None)
    assert value.item() == pytest.approx(expected / 3, rel=1e-12)
    assert value.item() != pytest.approx(cross_entropy_by_hand(LOGITS, temperature), rel=1e-3)  # not the self-label


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_base_anchor_by_hand(temperature: float) -> None:
    value = anchor_term(LOGITS, objective(anchor="kl_base", temperature=temperature), None, BASE_LOGITS)
    assert value.item() == pytest.approx(kl_by_hand(LOGITS, BASE_LOGITS, temperature), rel=1e-12)
    assert value.item() > 0.05
    assert base_kl_divergence(LOGITS, LOGITS.clone(), temperature).item() == pytest.approx(0.0, abs=1e-15)


def test_kl_base_gradient_goes_to_the_model_only() -> None:
    """d KL / d z = (p_model − p_base) / (T·B); the base logits get none."""
    logits = LOGITS.clone().requires_grad_(True)
    base = BASE_LOGITS.clone().requires_grad_(True)
    gradient, base_gradient = torch.autograd.grad(
        base_kl_divergence(logits, base, 2.0), [logits, base], allow_unused=True
    )
    expected = (torch.softmax(LOGITS / 2.0, dim=1) - torch.softmax(BASE_LOGITS / 2.0, dim=1)) / (2.0 * 3)
    torch.testing.assert_close(gradient, expected)
    assert base_gradient is None


def test_relevance_loss_uses_the_chosen_anchor() -> None:
    relevance = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = (relevance > 0.5).double()
    for anchor, expected in (
        ("self_label", cross_entropy_by_hand(LOGITS, 1.5)),
        ("labels", F.cross_entropy(LOGITS / 1.5, LABELS).item()),
        ("kl_base", kl_by_hand(LOGITS, BASE_LOGITS, 1.5)),
    ):
        config = objective(anchor=anchor, temperature=1.5, relevance_weight=0.0, classification_weight=0.7)
        total, terms = relevance_loss(relevance, masks, LOGITS, config, LABELS, BASE_LOGITS)
        assert total.item() == pytest.approx(0.7 * expected, rel=1e-12), anchor
        assert terms["classification"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="anchor labels needs the batch's labels"):
        relevance_loss(relevance, masks, LOGITS, objective(anchor="labels"))
    with pytest.raises(ValueError, match="anchor kl_base needs the base model's logits"):
        relevance_loss(relevance, masks, LOGITS, objective(anchor="kl_base"), LABELS)


# --- competitor penalty ------------------------------------------------------------------------


def test_competitor_classes_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.5, 4.0, 1.0, 2.0]])
    labels = torch.tensor([0, 3])  # image 1's label is not its argmax: its argmax competes
    assert competitor_classes(logits, labels, 1).tolist() == [[2], [1]]
    assert competitor_classes(logits, labels, 2).tolist() == [[2, 1], [1, 2]]
    assert competitor_classes(logits, labels, 3).tolist() == [[2, 1, 3], [1, 2, 0]]
    with pytest.raises(ValueError, match="4 competing classes asked for, but the model has 4 classes"):
        competitor_classes(logits, labels, 4)


def test_competitor_penalty_by_hand() -> None:
    """Image 0: S = 1 + 2 = 3; competitor 0 has 1 + 3 = 4 positive off the mask (5 is on it, −2
    is negative): 4 / 7; competitor 1 has only negative relevance: 0. Image 1: S = 0; competitor 0
    has A = 0.5: 0.5 / 0.5 = 1; competitor 1 has A = S = 0 exactly: 0, not NaN, and no gradient."""
    relevance = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.0, -1.0], [0.0, 0.0]]], dtype=torch.float64)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    competitors = torch.tensor(
        [
            [[[5.0, 1.0], [-2.0, 3.0]], [[-1.0, -1.0], [-0.5, -2.0]]],
            [[[0.5, -1.0], [-1.0, -1.0]], [[0.0, 0.0], [0.0, -3.0]]],
        ],
        dtype=torch.float64,
    )
    assert competitor_penalty(relevance, competitors, masks).item() == pytest.approx((4 / 7 + 0 + 1 + 0) / 4, rel=1e-12)
    relevance.requires_grad_(True)
    competitors.requires_grad_(True)
    penalty = competitor_penalty(relevance, competitors, masks)
    true_gradient, gradient = torch.autograd.grad(penalty, [relevance, competitors], allow_unused=True)
    assert true_gradient is None  # S is held: raising the true class cannot pay the penalty
    expected = torch.zeros_like(competitors)
    expected[0, 0, 0, 1] = expected[0, 0, 1, 1] = 1 / 7 / 4  # positive and off the mask only
    expected[1, 0, 0, 0] = 1 / 0.5 / 4
    torch.testing.assert_close(gradient, expected)


def test_competitor_penalty_is_scale_free() -> None:
    generator = torch.Generator().manual_seed(7)
    relevance = torch.randn(3, 5, 5, generator=generator, dtype=torch.float64)
    competitors = torch.randn(3, 2, 5, 5, generator=generator, dtype=torch.float64)
    masks = (torch.rand(3, 5, 5, generator=generator) > 0.5).double()
    penalty = competitor_penalty(relevance, competitors, masks)
    assert 0 < penalty.item() < 1
    assert competitor_penalty(relevance * 13.0, competitors * 13.0, masks).item() == pytest.approx(
        penalty.item(), rel=1e-12
    )


def test_competitor_weight_zero_ignores_the_maps() -> None:
    generator = torch.Generator().manual_seed(8)
    relevance = torch.randn(2, 4, 4, generator=generator, dtype=torch.float64)
    masks = (torch.rand(2, 4, 4, generator=generator) > 0.5).double()
    competitors = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    logits = LOGITS[:2]
    plain_total, plain_terms = relevance_loss(relevance, masks, logits, objective())
    with_maps_total, with_maps_terms = relevance_loss(
        relevance, masks, logits, objective(), LABELS[:2], None, competitors
    )
    assert with_maps_total.item() == plain_total.item() and with_maps_terms == plain_terms
    assert "competitor" not in plain_terms
    weighted_total, weighted_terms = relevance_loss(
        relevance, masks, logits, objective(competitor_weight=0.6), LABELS[:2], None, competitors
    )
    penalty = competitor_penalty(relevance, competitors, masks).item()
    assert weighted_terms["competitor"] == pytest.approx(penalty, rel=1e-12) and penalty > 0.01
    assert weighted_total.item() == pytest.approx(plain_total.item() + 0.6 * penalty, rel=1e-12)
    with pytest.raises(ValueError, match="competitor_weight > 0 needs the competitors' relevance maps"):
        relevance_loss(relevance, masks, logits, objective(competitor_weight=0.6), LABELS[:2])


def test_competitor_relevance_is_one_pass_of_the_per_class_maps() -> None:
    model = tiny_vit()
    x, _, targets = fd_inputs()
    logits = model(x)
    maps = competitor_relevance(model, x, logits, targets, 2)
    classes = competitor_classes(logits, targets, 2)
    assert maps.shape == (2, 2, 8, 8) and maps.requires_grad
    for j in range(2):
        torch.testing.assert_close(maps[:, j], attnlrp(model, x, classes[:, j]).upsampled(), rtol=1e-10, atol=1e-12)


# --- gradients through AttnLRP -----------------------------------------------------------------


def perturbed_copy(model: nn.Module) -> nn.Module:
    """A 'base model' that differs from the one trained, so KL(p_base ‖ p_model) is not at its minimum."""
    base = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(
                torch.randn(
                    parameter.shape, generator=torch.Generator().manual_seed(parameter.numel()), dtype=parameter.dtype
                )
                * 0.2
            )
    return base.requires_grad_(False)


def full_loss(
    model: nn.Module,
    base: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
    config: RelevanceObjective,
) -> torch.Tensor:
    """The fine-tuning step's loss (pipeline/training/finetune.py), in float64."""
    relevance = attnlrp(model, x, targets, create_graph=True)
    competitors = (
        competitor_relevance(model, x, relevance.logits, targets, config.competitors)
        if config.competitor_weight > 0
        else None
    )
    with torch.no_grad():
        base_logits = base(x)
    return relevance_loss(relevance.upsampled(), masks, relevance.logits, config, targets, base_logits, competitors)[0]


OPTIONS = {
    "detached_max_bce": {"normalisation": "detached_max", "classification_weight": 0.0},
    "detached_max_mse": {"normalisation": "detached_max", "loss": "mse", "classification_weight": 0.0},
    "labels": {"anchor": "labels", "relevance_weight": 0.0, "classification_weight": 1.0, "temperature": 2.0},
    "kl_base": {"anchor": "kl_base", "relevance_weight": 0.0, "classification_weight": 1.0, "temperature": 2.0},
    "competitor": {"competitor_weight": 1.0, "competitors": 2, "relevance_weight": 0.0, "classification_weight": 0.0},
    "all": {"normalisation": "detached_max", "anchor": "kl_base", "competitor_weight": 0.5},
}


def held_constants(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, config: RelevanceObjective
) -> dict[str, Callable[..., torch.Tensor]]:
    """Stand-ins for the objective's functions with their ``sg(·)`` parts fixed at the current
    parameters: detached_max's divisor, the competitor penalty's denominator. The gradients the
    objective computes are, by design, the true gradients of these functions."""
    relevance = attnlrp(model, x, targets)
    maps = relevance.upsampled().detach()
    stand_ins: dict[str, Callable[..., torch.Tensor]] = {}
    if config.normalisation == "detached_max":
        peaks = maps.clamp(min=0).flatten(1).amax(dim=1)

        def normalise(relevance: torch.Tensor, normalisation: str = "max") -> torch.Tensor:
            return relevance.clamp(min=0) / (peaks * (1.0 + DETACHED_MAX_MARGIN)).view(-1, 1, 1)

        stand_ins["normalise_relevance"] = normalise
    if config.competitor_weight > 0:
        competitors = competitor_relevance(model, x, relevance.logits, targets, config.competitors).detach()
        off_mask = (competitors.clamp(min=0) * (1.0 - masks[:, None])).flatten(2).sum(dim=2)
        evidence = off_mask + maps.clamp(min=0).flatten(1).sum(dim=1)[:, None]

        def penalty(relevance: torch.Tensor, competitors: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return ((competitors.clamp(min=0) * (1.0 - masks[:, None])).flatten(2).sum(dim=2) / evidence).mean()

        stand_ins["competitor_penalty"] = penalty
    return stand_ins


@pytest.mark.parametrize("values", OPTIONS.values(), ids=OPTIONS.keys())
def test_option_gradients_match_finite_differences(values: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Analytic gradients against central differences. Where the objective holds a part constant
    (detached_max's divisor, the competitor penalty's denominator) the differences are taken with
    that part fixed at the unperturbed parameters (:func:`held_constants`); the differences of the
    loss with it moving must then disagree, or holding it does nothing."""
    model = tiny_vit()
    base = perturbed_copy(model)
    x, masks, targets = fd_inputs()
    config = objective(**values)
    parameters = dict(model.named_parameters())
    probed = [parameters[name] for name in PROBED]
    exact = full_loss(model, base, x, targets, masks, config)
    assert exact.dtype == torch.float64
    gradients = torch.autograd.grad(exact, probed)
    stand_ins = held_constants(model, x, targets, masks, config)

    def loss_with(held: bool) -> float:
        with monkeypatch.context() as patch:
            for name, function in stand_ins.items() if held else ():
                patch.setattr(objective_module, name, function)
            return full_loss(model, base, x, targets, masks, config).item()

    assert loss_with(held=True) == pytest.approx(exact.item(), rel=1e-12)

    def difference(parameter: torch.Tensor, direction: torch.Tensor, held: bool) -> float:
        return directional_difference(lambda: loss_with(held), parameter, direction)

    moving_disagrees = []
    for index, (name, parameter, gradient) in enumerate(zip(PROBED, probed, gradients, strict=True)):
        direction = unit_direction(parameter.shape, 20 + index)
        numeric = difference(parameter, direction, held=True)
        analytic = (gradient * direction).sum().item()
        assert abs(numeric) > 1e-5, f"{name}: the loss barely depends on it"
        assert analytic == pytest.approx(numeric, rel=1e-4), name
        if stand_ins:
            moving_disagrees.append(analytic != pytest.approx(difference(parameter, direction, held=False), rel=1e-2))
    assert not stand_ins or any(moving_disagrees)
