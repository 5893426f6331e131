"""AttnLRP for timm ConvNeXt (V1 and V2), on the two streams of :mod:`pipeline.relevance.attnlrp`.

ConvNeXt needs only two rules beyond the ViT ones: LayerNorm over the *channel* dimension of an
NCHW tensor (``LayerNorm2d``), and ConvNeXt-V2's GlobalResponseNorm. Everything else in these
models is affine (convolutions, depthwise convolutions, 1×1 convolutions or Linear layers in the
MLP, layer-scale ``gamma``, average pooling, residual adds) or a GELU, which the shared rules
cover (:mod:`pipeline.relevance.rules`).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.relevance.rules import ModelFamily, Rule, UnsupportedModelError, layer_norm_rule
from pipeline.relevance.streams import TwoStreams


def layer_norm_2d_rule(module: nn.LayerNorm, x: TwoStreams) -> TwoStreams:
    """timm ``LayerNorm2d``: the shared LayerNorm rule (std held constant) over channels of NCHW."""
    return layer_norm_rule(module, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def global_response_norm_rule(module: nn.Module, x: TwoStreams) -> TwoStreams:
    """GRN ``x + γ·(x·Nx) + β`` with ``Nx`` held constant: ``x̃ ↦ x̃ + γ·x̃·Nx + β``.

    ``Nx = Gx / (mean_c Gx + eps)`` with ``Gx = ‖x‖₂`` over the spatial dims is homogeneous of
    degree 0 in ``x`` (a per-sample, per-channel gain, like LayerNorm's 1/σ); holding it constant
    makes GRN a per-channel scaling, which passes relevance unchanged apart from the bias ``β``.
    ``Nx`` comes from the first stream with its autograd history, so the map stays differentiable.
    The module's own ``spatial_dim``/``channel_dim``/``wb_shape`` give the layout (timm uses
    channels-last GRN in Linear MLPs and channels-first GRN in 1×1-conv MLPs).
    """
    norm = x.normal.norm(p=2, dim=module.spatial_dim, keepdim=True)
    gain = norm / (norm.mean(dim=module.channel_dim, keepdim=True) + module.eps)
    bias, weight = module.bias.view(module.wb_shape), module.weight.view(module.wb_shape)
    # Same expression as timm's forward, so the first stream reproduces the model's output exactly.
    return TwoStreams(*(s + torch.addcmul(bias, weight, s * gain) for s in (x.normal, x.linear)))


def model_types() -> tuple[type[nn.Module], ...]:
    from timm.models.convnext import ConvNeXt

    return (ConvNeXt,)


def rule_map() -> dict[type[nn.Module], Rule]:
    from timm.layers import LayerNorm2d
    from timm.layers.grn import GlobalResponseNorm

    return {LayerNorm2d: layer_norm_2d_rule, GlobalResponseNorm: global_response_norm_rule}


def linear_types() -> tuple[type[nn.Module], ...]:
    """ConvNeXt modules that are affine or pure containers of covered modules (forwards read in timm)."""
    from timm.layers import ClassifierHead, GlobalResponseNormMlp, Mlp, NormMlpClassifierHead, SelectAdaptivePool2d
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage, Downsample

    containers = (
        ConvNeXt,
        ConvNeXtStage,
        ConvNeXtBlock,
        Downsample,
        Mlp,
        GlobalResponseNormMlp,
        NormMlpClassifierHead,
        ClassifierHead,
        SelectAdaptivePool2d,
    )
    # Average pools have fixed weights (count_include_pad=False only changes the divisor per window).
    pools = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, FastAdaptiveAvgPool)
    return (*containers, *pools, nn.Conv2d, nn.Linear, nn.Flatten, nn.Identity, nn.Sequential)


def check(model: nn.Module) -> None:
    """Model-level conditions the per-module walk cannot see."""
    pool = getattr(model.head, "global_pool", None)
    if pool is None or pool.is_identity():
        raise UnsupportedModelError(
            "ConvNeXt without global pooling has spatial logits; AttnLRP here needs (B, classes) logits"
        )
    if getattr(model.head, "use_conv", False):
        raise UnsupportedModelError("ConvNeXt with a 1x1-conv classifier is not covered by the AttnLRP rules")


FAMILY = ModelFamily(
    name="ConvNeXt", model_types=model_types, rule_map=rule_map, linear_types=linear_types, check=check
)
