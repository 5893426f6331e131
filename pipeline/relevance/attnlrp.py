"""AttnLRP (Achtibat et al., ICML 2024) for timm Vision Transformers: exact and differentiable.

Relevance is input × modified gradient (lxt's "efficient" form). The AttnLRP rules turn each
non-linear operation into a linear map whose coefficients depend on the input:

==================  ============================================================================
operation           rule, as a linear map of the second stream ``x̃``
==================  ============================================================================
GELU                identity rule: ``x̃ ↦ Φ(h) x̃`` (GELU(h) = h Φ(h), so relevance passes unchanged)
LayerNorm           std treated as constant: ``x̃ ↦ γ (x̃ − mean x̃) / σ(h) + β``
q·kᵀ, A·v           uniform rule: ``½ (q̃ kᵀ + q k̃ᵀ)`` (each operand gets half the relevance)
softmax             AttnLRP softmax rule = its Jacobian at the scores: ``A ⊙ (s̃ − Σ A s̃)``
Linear, Conv, add   ε-rule (ε → 0) = the plain gradient, so these run unchanged
==================  ============================================================================

To make the relevance map *exactly* differentiable w.r.t. the parameters, the batch is doubled:
the first half runs the model normally, the second half ("linearised stream") runs the linear
maps above with coefficients taken from the first half *with their autograd history*. The
modified gradient is then the true gradient of the linearised stream's target logit w.r.t. its
input, and autograd differentiates it exactly, including through ``cls_token``, ``pos_embed``
and every bias (which a rule implemented as a custom backward with constant coefficients would
miss). Rules are applied by patching module ``forward`` methods inside a context manager and are
restored on exit, so the model is never copied and ordinary forward passes are untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Rule = Callable[..., torch.Tensor]


class UnsupportedModelError(ValueError):
    """The model has a layer the AttnLRP rules here do not cover; the message names it."""


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    normal, linear = x.chunk(2, dim=0)
    return normal, linear


def _gelu_rule(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from timm.layers.activations import GELUTanh

    h, h_lin = _halves(x)
    if getattr(module, "approximate", "none") == "tanh" or isinstance(module, GELUTanh):
        coefficient = 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
    else:
        coefficient = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return torch.cat([h * coefficient, h_lin * coefficient])


def _layer_norm_rule(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    h, h_lin = _halves(x)
    dims = tuple(range(-len(module.normalized_shape), 0))
    std = torch.sqrt(h.var(dim=dims, unbiased=False, keepdim=True) + module.eps)
    normal = (h - h.mean(dim=dims, keepdim=True)) / std
    linear = (h_lin - h_lin.mean(dim=dims, keepdim=True)) / std
    out = torch.cat([normal, linear])
    if module.weight is not None:
        out = out * module.weight
    if module.bias is not None:
        out = out + module.bias
    return out


def _attention_rule(module: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False, **_: Any) -> torch.Tensor:
    if attn_mask is not None or is_causal:
        raise UnsupportedModelError("AttnLRP here does not support attention masks or causal attention")
    if getattr(module, "gate", None) is not None:
        raise UnsupportedModelError("AttnLRP here does not support gated attention")
    batch2, tokens, _ = x.shape
    qkv = module.qkv(x).reshape(batch2, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    (q, q_lin), (k, k_lin), (v, v_lin) = _halves(q * module.scale), _halves(k), _halves(v)
    scores = q @ k.transpose(-2, -1)
    scores_lin = 0.5 * (q_lin @ k.transpose(-2, -1) + q @ k_lin.transpose(-2, -1))
    attention = scores.softmax(dim=-1)
    attention_lin = attention * (scores_lin - (attention * scores_lin).sum(dim=-1, keepdim=True))
    out = attention @ v
    out_lin = 0.5 * (attention_lin @ v + attention @ v_lin)
    merged = torch.cat([out, out_lin]).transpose(1, 2).reshape(batch2, tokens, module.num_heads * module.head_dim)
    return module.proj(getattr(module, "norm", nn.Identity())(merged))


def _identity_rule(module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    # Dropout would draw different masks for the two streams; the relevance pass runs without it.
    return x


def _rule_map() -> dict[type[nn.Module], Rule]:
    from timm.layers import Attention, DropPath, PatchDropout
    from timm.layers.activations import GELU, GELUTanh

    return {
        nn.GELU: _gelu_rule,
        GELU: _gelu_rule,
        GELUTanh: _gelu_rule,
        nn.LayerNorm: _layer_norm_rule,
        Attention: _attention_rule,
        nn.Dropout: _identity_rule,
        DropPath: _identity_rule,
        PatchDropout: _identity_rule,
    }


def _linear_types() -> tuple[type[nn.Module], ...]:
    """Modules that are affine (or pure containers) and run unchanged on both streams."""
    from timm.layers import LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Block, VisionTransformer

    return (nn.Linear, nn.Conv2d, nn.Identity, nn.Sequential, nn.ModuleList, LayerScale, Mlp, PatchEmbed, Block, VisionTransformer)


def _check_supported(model: nn.Module, rules: dict[type[nn.Module], Rule]) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"AttnLRP rules cover timm VisionTransformer models, not {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in ("token", "avg", ""):
        raise UnsupportedModelError(f"pooling {model.global_pool!r} is not covered by the AttnLRP rules (token or avg)")
    linear = _linear_types()
    for name, module in model.named_modules():
        if not isinstance(module, (*linear, *rules)):
            raise UnsupportedModelError(f"no AttnLRP rule for module '{name}' ({type(module).__name__})")


@contextlib.contextmanager
def attnlrp_rules(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context, ``model`` expects a doubled batch ``[x; x̃]`` and runs the two streams.

    Only instance-level ``forward`` attributes are set, and all are removed on exit (also on
    error), so outside the context the model computes exactly what it computed before.
    """
    rules = _rule_map()
    _check_supported(model, rules)
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            rule = next((rule for kind, rule in rules.items() if isinstance(module, kind)), None)
            if rule is None:
                continue
            if "forward" in vars(module):
                raise UnsupportedModelError(f"{type(module).__name__} already has a patched forward; nested relevance passes are not supported")
            module.forward = _bind(rule, module)  # type: ignore[method-assign]
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def _bind(rule: Rule, module: nn.Module) -> Callable[..., torch.Tensor]:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return rule(module, *args, **kwargs)

    return forward


@dataclass
class Relevance:
    pixels: torch.Tensor  # (B, H, W): input × modified gradient, summed over colour channels
    tokens: torch.Tensor  # (B, H/p, W/p): pixel relevance summed within each patch
    logits: torch.Tensor  # (B, classes): the model's ordinary logits from the same pass

    def upsampled(self) -> torch.Tensor:
        """Token relevance at image size (nearest), the map the fine-tuning loss compares to masks."""
        return F.interpolate(self.tokens[:, None], size=self.pixels.shape[-2:], mode="nearest")[:, 0]


def attnlrp(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False) -> Relevance:
    """AttnLRP relevance of ``targets`` (class indices) for normalised ``images`` (B, 3, H, W).

    With ``create_graph=True`` the result is differentiable w.r.t. the model's parameters (the
    exact gradient of the relevance map), for use inside a training loss.
    """
    linear_input = images.detach().clone().requires_grad_(True)
    with attnlrp_rules(model):
        both = model(torch.cat([images, linear_input]))
    logits, logits_lin = _halves(both)
    selected = logits_lin.gather(1, targets.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(selected, linear_input, create_graph=create_graph)
    pixels = (linear_input * gradient).sum(dim=1)
    patch = model.patch_embed.patch_size
    tokens = F.avg_pool2d(pixels[:, None], kernel_size=patch)[:, 0] * (patch[0] * patch[1])
    return Relevance(pixels=pixels, tokens=tokens, logits=logits)
