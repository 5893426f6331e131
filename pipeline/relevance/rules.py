"""Rule pieces shared by every model family, and the shape of a family (lxt's design: a family's
rules are one small map from module type to rule, applied by one patching function).

Every rule takes and returns the :class:`~pipeline.relevance.streams.TwoStreams` of
:mod:`pipeline.relevance.attnlrp`: the ordinary forward pass ``h`` and the linearised stream
``x̃``, whose coefficients are taken from ``h`` with their autograd history.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.relevance.streams import TwoStreams
from pipeline.utils.errors import CftError

Rule = Callable[..., torch.Tensor]


class UnsupportedModelError(CftError):
    """The model has a layer the AttnLRP rules here do not cover; the message names it."""


@dataclass(frozen=True)
class ModelFamily:
    """One model family's AttnLRP support. Callables, so timm is imported only when relevance is used.

    ``model_types``: the model classes of the family; ``rule_map``: module type -> rule, beside the
    shared rules below; ``linear_types``: modules that are affine or pure containers and run
    unchanged; ``check``: model-level conditions the per-module walk cannot see (raise
    :class:`UnsupportedModelError`).
    """

    name: str
    model_types: Callable[[], tuple[type[nn.Module], ...]]
    rule_map: Callable[[], dict[type[nn.Module], Rule]]
    linear_types: Callable[[], tuple[type[nn.Module], ...]]
    check: Callable[[nn.Module], None]


def gelu_rule(module: nn.Module, x: TwoStreams) -> TwoStreams:
    from timm.layers.activations import GELUTanh

    h, h_lin = x.normal, x.linear
    if getattr(module, "approximate", "none") == "tanh" or isinstance(module, GELUTanh):
        coefficient = 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
    else:
        coefficient = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return TwoStreams(h * coefficient, h_lin * coefficient)


def layer_norm_rule(module: nn.LayerNorm, x: TwoStreams) -> TwoStreams:
    h, h_lin = x.normal, x.linear
    dims = tuple(range(-len(module.normalized_shape), 0))
    std = torch.sqrt(h.var(dim=dims, unbiased=False, keepdim=True) + module.eps)
    normal = (h - h.mean(dim=dims, keepdim=True)) / std
    linear = (h_lin - h_lin.mean(dim=dims, keepdim=True)) / std
    return TwoStreams(_affine(module, normal), _affine(module, linear))


def _affine(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if module.weight is not None:
        x = x * module.weight
    if module.bias is not None:
        x = x + module.bias
    return x


def identity_rule(module: nn.Module, x: TwoStreams, *args: Any, **kwargs: Any) -> TwoStreams:
    # Dropout would draw different masks for the two streams; the relevance pass runs without it.
    return x


def shared_rule_map() -> dict[type[nn.Module], Rule]:
    """Rules for the modules every family uses: GELU, LayerNorm over the last dim, dropout."""
    from timm.layers import DropPath, LayerNorm, PatchDropout
    from timm.layers.activations import GELU, GELUTanh

    return {
        nn.GELU: gelu_rule,
        GELU: gelu_rule,
        GELUTanh: gelu_rule,
        nn.LayerNorm: layer_norm_rule,
        LayerNorm: layer_norm_rule,  # timm's channels-last LayerNorm: same normalisation, own forward
        nn.Dropout: identity_rule,
        DropPath: identity_rule,
        PatchDropout: identity_rule,
    }
