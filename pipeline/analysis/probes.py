"""What `cft analyze` reads out of a timm model during one forward pass: each block's output
tokens, its MLP's hidden activations and (ViTs) its attention probabilities; and the logit lens,
the model's own final norm and head applied to an earlier block's output.

A ViT's layers are its transformer blocks; a ConvNeXt's are its blocks across all stages (its
feature maps read as tokens, one per position). The hooks are registered for one pass and removed
after it (``capture`` is a context manager), so the model is left as it was.

Attention is recomputed from the attention module's input with its own ``qkv`` projection,
q/k norms and scale, because timm's fused attention never materialises the probabilities. The logit
lens exists where a block's width is the head's input width (every ViT block; a ConvNeXt's last
stage); DINOv2's linear classifier reads several blocks' class tokens at once, so it has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.utils.errors import CftError


class AnalysisError(CftError):
    """A model the analysis cannot read (not a timm ViT or ConvNeXt)."""


@dataclass
class Capture:
    """One forward pass: per layer, output tokens (B, T, D), MLP hidden units (B, ..., H), and
    attention probabilities (B, heads, T, T) for ViTs."""

    tokens: list[Tensor] = field(default_factory=list)
    hidden: list[Tensor] = field(default_factory=list)
    attention: list[Tensor] = field(default_factory=list)
    maps: list[tuple[int, int]] = field(default_factory=list)  # ConvNeXt: each layer's (H, W)


class ModelProbe:
    """A timm ViT or ConvNeXt, its layers and token geometry."""

    def __init__(self, model: nn.Module) -> None:
        from timm.models.convnext import ConvNeXt
        from timm.models.vision_transformer import VisionTransformer

        self.model = model
        if isinstance(model, VisionTransformer):
            self.kind = "vit"
            self.layers: list[nn.Module] = list(model.blocks)
            self.prefix_tokens = int(model.num_prefix_tokens)
            self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
            self.patch_pixels = int(model.patch_embed.patch_size[0])
            self.lens_layers = [] if hasattr(model, "cls_layers") else list(range(len(self.layers)))
        elif isinstance(model, ConvNeXt):
            self.kind = "convnext"
            self.layers = [block for stage in model.stages for block in stage.blocks]
            self.prefix_tokens, self.grid, self.patch_pixels = 0, (0, 0), 0
            last = len(model.stages[-1].blocks)
            self.lens_layers = list(range(len(self.layers) - last, len(self.layers)))
        else:
            raise AnalysisError(f"cft analyze reads timm ViTs and ConvNeXts; {type(model).__name__} is neither")

    @property
    def has_attention(self) -> bool:
        return self.kind == "vit"

    @contextmanager
    def capture(self) -> Iterator[Capture]:
        """Hooks recording every layer's tokens, MLP activations and attention for the passes run inside."""
        captured = Capture()
        handles = []
        for layer in self.layers:
            handles.append(layer.register_forward_hook(lambda _m, _i, out: self._record(captured, out)))
            handles.append(
                layer.mlp.act.register_forward_hook(lambda _m, _i, out: captured.hidden.append(out.detach().float()))
            )
            if self.has_attention:
                handles.append(
                    layer.attn.register_forward_pre_hook(
                        lambda module, args: captured.attention.append(attention_probabilities(module, args[0]))
                    )
                )
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _record(self, captured: Capture, out: Tensor) -> None:
        out = out.detach().float()
        if self.kind == "convnext":
            captured.maps.append((int(out.shape[-2]), int(out.shape[-1])))
            out = out.flatten(2).transpose(1, 2)
        captured.tokens.append(out)

    def logit_lens(self, layer: int, captured: Capture) -> Tensor | None:
        """Logits from layer ``layer``'s output through the model's final norm and head; None where
        the layer's width is not the head's input width."""
        if layer not in self.lens_layers:
            return None
        model, tokens = self.model, captured.tokens[layer]
        with torch.no_grad():
            if self.kind == "vit":
                return model.forward_head(model.norm(tokens))
            height, width = captured.maps[layer]
            feature_map = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
            return model.forward_head(model.norm_pre(feature_map))


def attention_probabilities(module: nn.Module, x: Tensor) -> Tensor:
    """(B, heads, T, T) softmax attention of a timm ``Attention`` module on its input ``x``."""
    batch, tokens, _ = x.shape
    with torch.no_grad():
        qkv = module.qkv(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        scores = (q.float() * module.scale) @ k.float().transpose(-2, -1)
        return scores.softmax(dim=-1)
