"""An explicit, layer-by-layer AttnLRP for timm ViTs, written for the tests in *relevance* form.

It shares no code with ``pipeline.relevance``: every rule is the textbook formula that divides
output relevance by activations (ε = 0), which is slow but obviously the rule itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _linear(x: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, r_z: torch.Tensor) -> torch.Tensor:
    """ε-rule for z = x Wᵀ + b."""
    return x * ((r_z / z) @ weight)


def _layer_norm(norm: nn.Module, x: torch.Tensor, y: torch.Tensor, r_y: torch.Tensor) -> torch.Tensor:
    """ε-rule for the linear map x ↦ γ (x − mean x) / σ + β, σ held constant."""
    if isinstance(norm, nn.Identity):
        return r_y
    std = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    u = (r_y / y) * norm.weight
    return x * (u - u.mean(-1, keepdim=True)) / std


def _split(r: torch.Tensor, parts: list[torch.Tensor], total: torch.Tensor) -> list[torch.Tensor]:
    """ε-rule for a sum: each summand gets its share of the relevance."""
    return [part / total * r for part in parts]


def _attention_backward(attn: nn.Module, n1: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    b, n, _ = n1.shape
    qkv = F.linear(n1, attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    qs = q * attn.scale
    s = qs @ k.transpose(-2, -1)
    a = s.softmax(-1)
    o = a @ v
    merged = o.transpose(1, 2).reshape(b, n, -1)
    p = F.linear(merged, attn.proj.weight, attn.proj.bias)
    r_merged = _linear(merged, attn.proj.weight, p, r_out)
    r_o = r_merged.reshape(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
    t = r_o / o
    r_a = 0.5 * a * (t @ v.transpose(-2, -1))
    r_v = 0.5 * v * (a.transpose(-2, -1) @ t)
    r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))  # AttnLRP softmax rule (Prop. 3.1)
    u = r_s / s
    r_q = 0.5 * qs * (u @ k)
    r_k = 0.5 * k * (u.transpose(-2, -1) @ qs)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)
    return _linear(n1, attn.qkv.weight, qkv, r_qkv)


def _block_backward(block: nn.Module, h_in: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    n1 = block.norm1(h_in)
    a_out = block.ls1(block.attn(n1))
    h_mid = h_in + a_out
    n2 = block.norm2(h_mid)
    f1 = block.mlp.fc1(n2)
    g = F.gelu(f1)
    f2 = block.mlp.fc2(g)
    m_out = block.ls2(f2)
    h_out = h_mid + m_out
    r_mid, r_m = _split(r_out, [h_mid, m_out], h_out)
    r_f2 = r_m  # LayerScale is diagonal without bias: relevance passes unchanged
    r_g = _linear(g, block.mlp.fc2.weight, f2, r_f2)
    r_f1 = r_g  # identity rule
    r_n2 = _linear(n2, block.mlp.fc1.weight, f1, r_f1)
    r_mid = r_mid + _layer_norm(block.norm2, h_mid, n2, r_n2)
    r_in, r_a = _split(r_mid, [h_in, a_out], h_mid)
    r_n1 = _attention_backward(block.attn, n1, r_a)
    return r_in + _layer_norm(block.norm1, h_in, n1, r_n1)


@torch.no_grad()
def explicit_attnlrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel relevance (B, H, W) of ``target`` by explicit relevance propagation."""
    conv = model.patch_embed.proj
    conv_out = conv(images)
    tokens = conv_out.flatten(2).transpose(1, 2)
    z = model._pos_embed(tokens)
    prefix = z.shape[1] - tokens.shape[1]
    pre = torch.cat([_prefix_tokens(model, images.shape[0]), tokens], dim=1) if prefix else tokens
    hidden = [z]
    for block in model.blocks:
        hidden.append(block(hidden[-1]))
    normed = model.norm(hidden[-1])
    if model.global_pool == "token":
        pooled = normed[:, 0]
    else:
        pooled = normed[:, prefix:].mean(1)
    features = model.fc_norm(pooled)
    logits = model.head(features)

    r_logits = F.one_hot(target, logits.shape[1]).to(logits) * logits
    r_features = _linear(features, model.head.weight, logits, r_logits)
    r_pooled = _layer_norm(model.fc_norm, pooled, features, r_features)
    r_normed = torch.zeros_like(normed)
    if model.global_pool == "token":
        r_normed[:, 0] = r_pooled
    else:
        patch_tokens = normed[:, prefix:]
        r_normed[:, prefix:] = (patch_tokens / patch_tokens.shape[1]) / pooled[:, None] * r_pooled[:, None]
    r = _layer_norm(model.norm, hidden[-1], normed, r_normed)
    for block, h_in in zip(reversed(model.blocks), reversed(hidden[:-1]), strict=True):
        r = _block_backward(block, h_in, r)
    r_pre = pre / z * r
    r_tokens = r_pre[:, prefix:]
    r_conv_out = r_tokens.transpose(1, 2).reshape(conv_out.shape)
    back = F.conv_transpose2d(r_conv_out / conv_out, conv.weight, stride=conv.stride)
    return (images * back).sum(1)


def _prefix_tokens(model: nn.Module, batch: int) -> torch.Tensor:
    parts = []
    if model.cls_token is not None:
        parts.append(model.cls_token.expand(batch, -1, -1))
    if model.reg_token is not None:
        parts.append(model.reg_token.expand(batch, -1, -1))
    return torch.cat(parts, dim=1)
