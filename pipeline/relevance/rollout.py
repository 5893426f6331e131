"""Gradient-weighted attention rollout (Chefer et al., CVPR 2021) for timm ViTs, usable in a loss.

This is the relevance map of RobustViT (Chefer et al., NeurIPS 2022) and of the published CFT code
(``generate_relevance`` in RobustViT's ``ViT/explainer.py``), kept here as the alternative to
AttnLRP (:mod:`pipeline.relevance.attnlrp`) for the alignment loss. For a target score
``s = Σ_b z[b, t_b]`` and each block's attention probabilities ``A`` (B, heads, N, N):

* ``cam = mean over heads of (∂s/∂A ⊙ A)⁺`` (Chefer's rule 5, heads averaged after the positive part);
* ``R = I``, then ``R ← R + cam @ R`` block by block (rule 6, the identity standing for the skip path);
* the class token's row over the patch tokens (class and register tokens, ``num_prefix_tokens``,
  are skipped) is reshaped to the patch grid, bilinearly upsampled to image size (half-pixel
  centres, RobustViT's ``interpolate(scale_factor=16, mode='bilinear')``) and min–max normalised per
  image, so every map lies in [0, 1] with minimum 0 and maximum 1 (a constant map becomes all 0).

The gradients ``∂s/∂A`` are taken with ``create_graph=False``: they are constants, exactly as in
RobustViT, where ``torch.autograd.grad(one_hot, [attn.attention_map], retain_graph=True)`` builds no
graph while ``get_attention_map()`` returns the maps with theirs. A loss on the rollout therefore
reaches the weights only through the attention maps, not through the gradients' own dependence on
the weights (which AttnLRP's exact second-order path includes).

timm's ``Attention`` normally runs fused (``scaled_dot_product_attention``), which never forms
``A``. Inside :func:`attention_capture` each block's attention instance gets an explicit forward
(``softmax(q·scale kᵀ)``, after ``attn_drop`` like RobustViT's saved map) that records ``A``; only
instance attributes are set and they are removed on exit, so ``fused_attn`` and every later forward
pass are untouched. Models without ``blocks[i].attn`` (ConvNeXt, ResNet) are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.relevance.attnlrp import relevance_cell
from pipeline.relevance.rules import UnsupportedModelError

# Range below which a map counts as constant; min–max normalisation then returns zeros instead
# of RobustViT's 0/0 = NaN.
FLAT_RANGE = 1e-12


@dataclass
class RolloutRelevance:
    """The rollout maps of a batch, with the part of :class:`~pipeline.relevance.attnlrp.Relevance`'s
    interface that makes sense for them (there is no pixel-level relevance)."""

    maps: torch.Tensor  # (B, H, W): upsampled bilinearly and min–max normalised, values in [0, 1]
    tokens: torch.Tensor  # (B, rows, cols): the raw rollout of the class token over the patch grid
    logits: torch.Tensor  # (B, classes): the model's logits from the same pass
    cell: tuple[int, int]  # (ph, pw): the patch size in pixels

    def upsampled(self) -> torch.Tensor:
        """(B, H, W) maps at image size. Unlike AttnLRP's cell maps they are already bilinearly
        upsampled and min–max normalised to [0, 1], so ``normalise_relevance`` leaves them unchanged."""
        return self.maps

    def interpolated(self) -> torch.Tensor:
        """The same maps: rollout is upsampled bilinearly from the start (the segmentation protocol's form)."""
        return self.maps


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each block's timm ``Attention``; a clear ValueError for anything rollout does not cover."""
    from timm.layers import Attention

    name = type(model).__name__
    blocks = getattr(model, "blocks", None)
    if (
        not isinstance(blocks, (nn.ModuleList, nn.Sequential))
        or len(blocks) == 0
        or not all(hasattr(block, "attn") for block in blocks)
    ):
        raise UnsupportedModelError(
            f"attention rollout needs a vision transformer with blocks[i].attn; {name} has none"
        )
    for index, block in enumerate(blocks):
        # A subclass with its own forward computes something the explicit forward below would not.
        if not isinstance(block.attn, Attention) or type(block.attn).forward is not Attention.forward:
            raise UnsupportedModelError(
                f"attention rollout covers timm's Attention; {name}.blocks[{index}].attn is {type(block.attn).__name__}"
            )
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(f"attention rollout reads the class token's row; {name} has no class token")
    return list(block.attn for block in blocks)


def _explicit_attention(
    module: nn.Module,
    record: Callable[[torch.Tensor], None],
    x: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    **_: Any,
) -> torch.Tensor:
    """timm's unfused ``Attention.forward`` that also hands the attention probabilities to ``record``."""
    if attn_mask is not None or is_causal:
        raise UnsupportedModelError("attention rollout does not support attention masks or causal attention")
    batch, tokens, _ = x.shape
    heads, head_dim = module.num_heads, module.head_dim
    gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None
    q, k, v = module.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    attention = module.attn_drop(((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    record(attention)
    out = (attention @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    out = getattr(module, "norm", nn.Identity())(out)
    if gate is not None:
        out = out * gate
    return module.proj_drop(module.proj(out))


@contextlib.contextmanager
def attention_capture(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Within the context, each forward pass fills the yielded list with the blocks' attention
    probabilities (B, heads, N, N), in block order; instance forwards are removed on exit."""
    modules = attention_modules(model)
    captured: list[torch.Tensor | None] = [None] * len(modules)
    patched: list[nn.Module] = []

    def recorder(index: int) -> Callable[[torch.Tensor], None]:
        def record(attention: torch.Tensor) -> None:
            captured[index] = attention

        return record

    try:
        for index, module in enumerate(modules):
            if "forward" in vars(module):
                raise ValueError(
                    f"{type(module).__name__} already has a patched forward; nested relevance passes are not supported"
                )
            module.forward = _bind(module, recorder(index))  # type: ignore[method-assign]
            patched.append(module)
        yield captured
    finally:
        for module in patched:
            del module.forward


def _bind(module: nn.Module, record: Callable[[torch.Tensor], None]) -> Callable[..., torch.Tensor]:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return _explicit_attention(module, record, *args, **kwargs)

    return forward


def _patch_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    ph, pw = relevance_cell(model)
    if getattr(model.patch_embed, "dynamic_img_pad", False):
        return -(-height // ph), -(-width // pw)
    return height // ph, width // pw


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    return ((flat - low[:, None]) / (high - low).clamp(min=FLAT_RANGE)[:, None]).view_as(maps)


def rollout(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
) -> RolloutRelevance:
    """Gradient-weighted attention rollout of ``targets`` (class indices) for normalised ``images``.

    With ``create_graph=True`` the maps (and logits) keep their graph through the attention maps,
    for use inside a training loss; the attention gradients are constants either way. Without it,
    everything returned is detached, and the call also works under ``torch.no_grad()``.
    """
    # The attention gradients need a graph even when a caller monitors under torch.no_grad().
    with torch.enable_grad():
        with attention_capture(model) as captured:
            logits = model(images)
        if any(attention is None for attention in captured):
            raise ValueError(
                f"{type(model).__name__}'s forward pass skipped a block; rollout needs every block's attention"
            )
        attentions = [attention for attention in captured if attention is not None]
        score = logits.gather(1, targets.view(-1, 1)).sum()
        gradients = torch.autograd.grad(score, attentions, retain_graph=create_graph, allow_unused=True)
    if not create_graph:
        attentions, logits = [attention.detach() for attention in attentions], logits.detach()

    batch, tokens = attentions[0].shape[0], attentions[0].shape[-1]
    # bf16 under autocast would round the running product at every block; float64 (tests) stays.
    dtype = torch.promote_types(attentions[0].dtype, torch.float32)
    with torch.autocast(device_type=images.device.type, enabled=False):
        relevance = torch.eye(tokens, dtype=dtype, device=images.device).expand(batch, tokens, tokens)
        for attention, gradient in zip(attentions, gradients, strict=True):
            if gradient is None:  # the block does not reach the score: its cam is zero
                continue
            cam = (gradient.to(dtype) * attention.to(dtype)).clamp(min=0).mean(dim=1)
            relevance = relevance + cam @ relevance
        (height, width), (ph, pw) = images.shape[-2:], relevance_cell(model)
        rows, cols = _patch_grid(model, height, width)
        patches = relevance[:, 0, model.num_prefix_tokens :]
        if patches.shape[1] != rows * cols or rows * ph < height or cols * pw < width:
            raise UnsupportedModelError(
                f"{patches.shape[1]} patch tokens of {ph}×{pw} px do not tile a {height}×{width} image (patch dropout, or a size that is no multiple of the patch?)"
            )
        grid = patches.reshape(batch, rows, cols)
        smooth = F.interpolate(grid[:, None], size=(rows * ph, cols * pw), mode="bilinear", align_corners=False)[
            :, 0, :height, :width
        ]
        maps = _min_max(smooth)
    return RolloutRelevance(maps=maps, tokens=grid, logits=logits, cell=(ph, pw))
