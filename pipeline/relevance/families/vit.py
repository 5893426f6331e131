"""AttnLRP for timm VisionTransformer (ViT, DeiT-III, DINOv2 backbones): the attention rule.

q·kᵀ and A·v take the uniform rule ``½ (q̃ kᵀ + q k̃ᵀ)`` (each operand gets half the relevance);
the softmax takes its Jacobian at the scores, ``A ⊙ (s̃ − Σ A s̃)``. Pooling must be the class
token or the token mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.relevance.rules import ModelFamily, Rule, UnsupportedModelError
from pipeline.relevance.streams import TwoStreams


def attention_rule(
    module: nn.Module, x: TwoStreams, attn_mask: torch.Tensor | None = None, is_causal: bool = False, **_: Any
) -> TwoStreams:
    if attn_mask is not None or is_causal:
        raise UnsupportedModelError("AttnLRP here does not support attention masks or causal attention")
    if getattr(module, "gate", None) is not None:
        raise UnsupportedModelError("AttnLRP here does not support gated attention")
    batch, tokens, _ = x.shape
    qkv = module.qkv(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    q, q_lin, k, k_lin = q.normal * module.scale, q.linear * module.scale, k.normal, k.linear
    v, v_lin = v.normal, v.linear
    scores = q @ k.transpose(-2, -1)
    scores_lin = 0.5 * (q_lin @ k.transpose(-2, -1) + q @ k_lin.transpose(-2, -1))
    attention = scores.softmax(dim=-1)
    attention_lin = attention * (scores_lin - (attention * scores_lin).sum(dim=-1, keepdim=True))
    out = attention @ v
    out_lin = 0.5 * (attention_lin @ v + attention @ v_lin)
    merged = TwoStreams(out, out_lin).transpose(1, 2).reshape(batch, tokens, module.num_heads * module.head_dim)
    return module.proj(getattr(module, "norm", nn.Identity())(merged))


def model_types() -> tuple[type[nn.Module], ...]:
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformer,)


def rule_map() -> dict[type[nn.Module], Rule]:
    from timm.layers import Attention

    return {Attention: attention_rule}


def linear_types() -> tuple[type[nn.Module], ...]:
    """Modules that are affine (or pure containers) and run unchanged on both streams."""
    from timm.layers import LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    return (
        nn.Linear,
        nn.Conv2d,
        nn.Identity,
        nn.Sequential,
        nn.ModuleList,
        LayerScale,
        Mlp,
        PatchEmbed,
        Block,
        VisionTransformer,
    )


def check(model: nn.Module) -> None:
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg", ""):
        raise UnsupportedModelError(f"pooling {model.global_pool!r} is not covered by the AttnLRP rules (token or avg)")


FAMILY = ModelFamily(
    name="VisionTransformer", model_types=model_types, rule_map=rule_map, linear_types=linear_types, check=check
)
