"""Checks every relevance rule set must pass, whatever the architecture (ViT, ConvNeXt)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from pipeline.config.finetune import RelevanceObjective
from pipeline.relevance.attnlrp import attnlrp, attnlrp_rules
from pipeline.training.objective import relevance_loss

Objective = Callable[[], torch.Tensor]


def spread_parameters(model: nn.Module, matrix_scale: float = 0.05) -> nn.Module:
    """Add seeded-by-the-caller noise to every parameter, in place: timm's init leaves biases,
    norm affines, layer scales, GRN γ and β at 0 or 1 and tokens tiny, so without it some paths of
    a relevance rule would carry no weight and a test could not see them. Vectors, tokens and
    position embeddings get σ 0.3, matrices ``matrix_scale``."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            vector_like = parameter.ndim == 1 or "token" in name or "pos" in name
            parameter.add_(torch.randn_like(parameter) * (0.3 if vector_like else matrix_scale))
    return model


def directional_difference(
    loss: Callable[[], float], parameter: torch.Tensor, direction: torch.Tensor, step: float = 1e-6
) -> float:
    """Central difference of ``loss`` along ``direction`` in ``parameter`` (restored afterwards)."""
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            parameter.add_(sign * step * direction)
        values.append(loss())
        with torch.no_grad():
            parameter.sub_(sign * step * direction)
    return (values[0] - values[1]) / (2 * step)


def unit_direction(shape: torch.Size, seed: int) -> torch.Tensor:
    """A seeded random float64 direction of norm 1."""
    direction = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return direction / direction.norm()


def assert_gradients_match_finite_differences(
    model: nn.Module, objective: Objective, probed: list[tuple[str, tuple[int, ...]]], step: float = 1e-5
) -> None:
    """The autograd gradient of ``objective`` (a function of the relevance map) w.r.t. each probed
    parameter entry equals float64 central differences (truncation ~1e-10, round-off ~1e-9)."""
    parameters = dict(model.named_parameters())
    gradients = dict(
        zip(parameters, torch.autograd.grad(objective(), list(parameters.values()), allow_unused=True), strict=True)
    )
    for name, index in probed:
        parameter = parameters[name]
        original = parameter[index].item()
        values = []
        for shifted in (original + step, original - step):
            with torch.no_grad():
                parameter[index] = shifted
            values.append(objective().item())  # relevance needs autograd for its input gradient
        with torch.no_grad():
            parameter[index] = original
        numeric = (values[0] - values[1]) / (2 * step)
        gradient = gradients[name]
        analytic = 0.0 if gradient is None else gradient[index].item()
        assert abs(numeric) > 1e-8, f"{name}: objective does not depend on it; pick another entry"
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), name


def assert_alignment_gradients_match_finite_differences(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    probed: list[tuple[str, tuple[int, ...]]],
    pixel_term: bool = False,
) -> None:
    """:func:`assert_gradients_match_finite_differences` for a loss of the kind fine-tuning uses:
    random weights times the cell map plus a squared distance to a random mask (and, with
    ``pixel_term``, the weights times the pixel map, for rules whose pixel detail matters)."""
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(len(x), *x.shape[-2:], generator=generator, dtype=torch.float64)
    mask = (torch.rand(len(x), *x.shape[-2:], generator=generator) > 0.5).double()

    def objective() -> torch.Tensor:
        relevance = attnlrp(model, x, target, create_graph=True)
        upsampled = relevance.upsampled()
        loss = (weights * upsampled).sum() + 0.5 * ((upsampled - mask) ** 2).sum()
        return loss + (weights * relevance.pixels).sum() if pixel_term else loss

    assert_gradients_match_finite_differences(model, objective, probed)


def assert_untouched_outside_the_context(model: nn.Module, x: torch.Tensor) -> None:
    """After a relevance pass, and after one interrupted by an error, the model computes exactly what it did."""
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attnlrp(model, x, torch.arange(len(x)) % 3)
    with pytest.raises(RuntimeError), attnlrp_rules(model):
        raise RuntimeError("interrupted relevance pass")
    assert not any("forward" in vars(module) for module in model.modules())
    assert torch.equal(model(x), before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def assert_fine_tuning_steps_move_the_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """Three AdamW steps on the CFT objective (masks: the left half) give finite gradients for every
    trainable parameter, lower the loss and change the relevance map."""
    masks = torch.zeros(len(x), *x.shape[-2:])
    masks[:, :, : x.shape[-1] // 2] = 1.0
    before = attnlrp(model, x, target).upsampled()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        relevance = attnlrp(model, x, target, create_graph=True)
        loss, _ = relevance_loss(
            relevance.upsampled(), masks, relevance.logits, RelevanceObjective(objective="relevance")
        )
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.allclose(before, attnlrp(model, x, target).upsampled())
    assert losses[-1] < losses[0]
