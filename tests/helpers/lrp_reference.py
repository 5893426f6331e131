"""An explicit, layer-by-layer AttnLRP for timm ViTs and ConvNeXt-V2, written for the tests in *relevance* form.

It shares no code with ``pipeline.relevance``: every rule is the textbook formula that divides
output relevance by activations (ε = 0), which is slow but obviously the rule itself.
"""

from __future__ import annotations

from collections.abc import Callable

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
    head_relevance = _head_backward(model, hidden, prefix, target)
    r = torch.zeros_like(hidden[-1])
    for depth in range(len(model.blocks), 0, -1):
        if depth in head_relevance:  # the head reads this block's output (through the final norm)
            normed, r_normed = head_relevance[depth]
            r = r + _layer_norm(model.norm, hidden[depth], normed, r_normed)
        r = _block_backward(model.blocks[depth - 1], hidden[depth - 1], r)
    r_pre = pre / z * r
    r_tokens = r_pre[:, prefix:]
    r_conv_out = r_tokens.transpose(1, 2).reshape(conv_out.shape)
    back = F.conv_transpose2d(r_conv_out / conv_out, conv.weight, stride=conv.stride)
    return (images * back).sum(1)


def _head_backward(
    model: nn.Module, hidden: list[torch.Tensor], prefix: int, target: torch.Tensor
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{block depth: (normed tokens, their relevance)} for every block output the head reads.

    timm pooling reads the last block's class token or mean patch token; DINOv2 linear
    classifiers read the class tokens of the last ``cls_layers`` blocks *and* the last block's
    mean patch token, concatenated.
    """
    depth = len(hidden) - 1
    read = getattr(model, "cls_layers", None)
    normed = {d: model.norm(hidden[d]) for d in range(depth - (read or 1) + 1, depth + 1)}
    last = normed[depth]
    mean_patch = last[:, prefix:].mean(1)
    if read is not None:
        pooled = torch.cat([*(normed[d][:, 0] for d in sorted(normed)), mean_patch], dim=1)
    else:
        pooled = last[:, 0] if model.global_pool == "token" else mean_patch
    features = model.fc_norm(pooled)
    logits = model.head(features)

    r_logits = F.one_hot(target, logits.shape[1]).to(logits) * logits
    r_features = _linear(features, model.head.weight, logits, r_logits)
    r_pooled = _layer_norm(model.fc_norm, pooled, features, r_features)
    r_normed = {d: torch.zeros_like(tokens) for d, tokens in normed.items()}
    if read is not None:
        *r_class_tokens, r_mean_patch = r_pooled.split(last.shape[-1], dim=1)
        for d, r_class in zip(sorted(normed), r_class_tokens, strict=True):
            r_normed[d][:, 0] = r_class
    elif model.global_pool == "token":
        r_normed[depth][:, 0], r_mean_patch = r_pooled, None
    else:
        r_mean_patch = r_pooled
    if r_mean_patch is not None:
        patch_tokens = last[:, prefix:]
        r_normed[depth][:, prefix:] = (
            (patch_tokens / patch_tokens.shape[1]) / mean_patch[:, None] * r_mean_patch[:, None]
        )
    return {d: (normed[d], r_normed[d]) for d in normed}


def _prefix_tokens(model: nn.Module, batch: int) -> torch.Tensor:
    parts = []
    if model.cls_token is not None:
        parts.append(model.cls_token.expand(batch, -1, -1))
    if model.reg_token is not None:
        parts.append(model.reg_token.expand(batch, -1, -1))
    return torch.cat(parts, dim=1)


# --- ConvNeXt(-V2) ------------------------------------------------------------------------------
# Same spirit: the forward pass is written out in NCHW from the modules' parameters (channels-last
# blocks included, so the rules' layout handling is checked too), and every backward step is the
# relevance-form ε-rule of one operation.

Backward = Callable[[torch.Tensor], torch.Tensor]


def _conv(x: torch.Tensor, conv: nn.Conv2d, z: torch.Tensor, r_z: torch.Tensor) -> torch.Tensor:
    """ε-rule for z = conv(x) + b (any stride, padding, groups): x ⊙ Wᵀ(r_z / z), Wᵀ = transposed conv."""
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    expected = [
        (z.shape[d + 2] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (conv.kernel_size[d] - 1) + 1
        for d in range(2)
    ]
    extra = tuple(x.shape[d + 2] - expected[d] for d in range(2))  # rows/cols the convolution never reached
    back = F.conv_transpose2d(
        r_z / z,
        conv.weight,
        stride=stride,
        padding=padding,
        output_padding=extra,
        groups=conv.groups,
        dilation=dilation,
    )
    return x * back


def _pointwise_weight(layer: nn.Module) -> torch.Tensor:
    """(out, in) matrix of a Linear or 1×1 Conv2d."""
    return layer.weight.reshape(layer.weight.shape[0], layer.weight.shape[1])


def _pointwise(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    z = torch.einsum("oi,bihw->bohw", _pointwise_weight(layer), x)
    return z if layer.bias is None else z + layer.bias.view(1, -1, 1, 1)


def _pointwise_rule(x: torch.Tensor, layer: nn.Module, z: torch.Tensor, r_z: torch.Tensor) -> torch.Tensor:
    return x * torch.einsum("oi,bohw->bihw", _pointwise_weight(layer), r_z / z)


def _channel_norm(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
    """LayerNorm over channels of NCHW, and its ε-rule with σ held constant."""
    std = torch.sqrt(x.var(1, unbiased=False, keepdim=True) + norm.eps)
    y = (x - x.mean(1, keepdim=True)) / std * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    def back(r_y: torch.Tensor) -> torch.Tensor:
        u = r_y / y * norm.weight.view(1, -1, 1, 1)
        return x * (u - u.mean(1, keepdim=True)) / std

    return y, back


def _convolution(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
    z = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return z, lambda r_z: _conv(x, conv, z, r_z)


def _convnext_block(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
    assert isinstance(block.shortcut, nn.Identity)
    mlp = block.mlp
    dw, back_dw = _convolution(block.conv_dw, x)
    n, back_norm = _channel_norm(block.norm, dw)
    f1 = _pointwise(n, mlp.fc1)
    g = F.gelu(f1)
    grn = mlp.grn
    gx = g.pow(2).sum((2, 3), keepdim=True).sqrt()
    nx = gx / (gx.mean(1, keepdim=True) + grn.eps)
    scale = 1.0 + grn.weight.view(1, -1, 1, 1) * nx
    q = g * scale + grn.bias.view(1, -1, 1, 1)
    f2 = _pointwise(q, mlp.fc2)
    m = f2 if block.gamma is None else f2 * block.gamma.view(1, -1, 1, 1)
    out = m + x

    def back(r_out: torch.Tensor) -> torch.Tensor:
        r_m, r_x = _split(r_out, [m, x], out)
        r_f2 = r_m  # layer scale is diagonal without bias: relevance passes unchanged
        r_q = _pointwise_rule(q, mlp.fc2, f2, r_f2)
        r_g = g * scale / q * r_q  # GRN with Nx held constant: a per-channel gain plus β
        r_f1 = r_g  # identity rule
        r_n = _pointwise_rule(n, mlp.fc1, f1, r_f1)
        return r_x + back_dw(back_norm(r_n))

    return out, back


def _convnext_forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[Backward]]:
    tape: list[Backward] = []

    def step(result: tuple[torch.Tensor, Backward]) -> torch.Tensor:
        tape.append(result[1])
        return result[0]

    h = step(_convolution(model.stem[0], images))
    h = step(_channel_norm(model.stem[1], h))
    for stage in model.stages:
        if not isinstance(stage.downsample, nn.Identity):
            h = step(_channel_norm(stage.downsample[0], h))
            h = step(_convolution(stage.downsample[1], h))
        for block in stage.blocks:
            h = step(_convnext_block(block, h))
    assert isinstance(model.norm_pre, nn.Identity)
    pooled = h.mean((2, 3), keepdim=True)
    tape.append(lambda r_p, h=h, p=pooled: (h / (h.shape[2] * h.shape[3])) / p * r_p)
    features = step(_channel_norm(model.head.norm, pooled))
    if not isinstance(model.head.pre_logits, nn.Identity):
        features = step(_pointwise_step(model.head.pre_logits.fc, features))
        features = F.gelu(features)
        tape.append(lambda r: r)  # identity rule
    logits = step(_pointwise_step(model.head.fc, features))
    return logits.flatten(1), tape


def _pointwise_step(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Backward]:
    z = _pointwise(x, layer)
    return z, lambda r_z: _pointwise_rule(x, layer, z, r_z)


@torch.no_grad()
def explicit_convnext_lrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel relevance (B, H, W) of ``target`` for a timm ConvNeXt(-V2) by explicit relevance propagation."""
    logits, tape = _convnext_forward(model, images)
    torch.testing.assert_close(logits, model(images))  # the written-out forward is the model's
    r = (F.one_hot(target, logits.shape[1]).to(logits) * logits)[:, :, None, None]
    for back in reversed(tape):
        r = back(r)
    return r.sum(1)
