"""Checks every relevance rule set must pass, whatever the architecture (ViT, ConvNeXt)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from pipeline.relevance.attnlrp import attnlrp, attnlrp_rules

Objective = Callable[[], torch.Tensor]


def assert_gradients_match_finite_differences(model: nn.Module, objective: Objective, probed: list[tuple[str, tuple[int, ...]]], step: float = 1e-5) -> None:
    """The autograd gradient of ``objective`` (a function of the relevance map) w.r.t. each probed
    parameter entry equals float64 central differences (truncation ~1e-10, round-off ~1e-9)."""
    parameters = dict(model.named_parameters())
    gradients = dict(zip(parameters, torch.autograd.grad(objective(), list(parameters.values()), allow_unused=True), strict=True))
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
