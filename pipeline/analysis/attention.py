"""Attention statistics per head, to see where fine-tuning moved a ViT's attention.

All functions take attention probabilities as captured from a timm ViT, shaped (batch, heads, queries, keys) with
rows summing to 1, and the token order timm uses: ``prefix_tokens`` class/register tokens first, then the patch
tokens in row-major order over the patch grid. Each returns one value per head, averaged over batch (and queries).

- `attention_entropy`: how diffuse each head's attention is.
- `mean_attention_distance`: how far (in pixels) a head looks, as in Dosovitskiy et al. 2021 and Raghu et al. 2021;
  local heads have small distances, global heads large ones.
- `attention_on_mask` with `patch_coverage`: how much of the class token's attention falls on the object rather
  than on the background, the quantity a spurious-cue fix should raise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_entropy(attn: Tensor) -> Tensor:
    """Mean entropy (nats) of each head's attention rows, shape (heads,); 0·log 0 counts as 0."""
    _check_attention(attn)
    p = attn.detach().to(torch.float64)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return entropy.mean(dim=(0, 2)).to(torch.float32)


def mean_attention_distance(attn: Tensor, grid: tuple[int, int], patch_pixels: int, prefix_tokens: int) -> Tensor:
    """Attention-weighted distance in pixels between patch queries and the patch keys they attend to, per head.

    Prefix (class/register) tokens are dropped as queries and keys, and each query's attention over patch keys is
    renormalised to sum to 1, so the value describes where a head looks among the patches however much it also
    attends to the prefix. Distances are between patch centres, in patches times ``patch_pixels``. Queries that
    give the patches no attention at all are left out of the average (nan for a head with no other queries).
    Returns shape (heads,).
    """
    _check_attention(attn)
    patches = _check_grid(attn, grid, prefix_tokens)
    weights, valid = _renormalise(attn.detach().to(torch.float64)[:, :, prefix_tokens:, prefix_tokens:])
    rows = torch.arange(grid[0], dtype=torch.float64).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], dtype=torch.float64).repeat(grid[0])
    centres = torch.stack([rows, cols], dim=-1).to(weights.device)
    distance = torch.cdist(centres, centres) * float(patch_pixels)  # (patches, patches)
    per_query = (weights * distance.view(1, 1, patches, patches)).sum(dim=-1)  # (batch, heads, queries)
    return _valid_mean(per_query, valid, dims=(0, 2))


def attention_on_mask(attn: Tensor, object_patches: Tensor, prefix_tokens: int) -> Tensor:
    """Share of the class token's patch attention that falls on the object, per head, shape (heads,).

    The class token is query 0; its attention over the patch tokens is renormalised to sum to 1 and weighted by
    ``object_patches`` (batch, patches), the share of each patch the object covers (see `patch_coverage`). The
    per-image share is averaged over the batch; images whose class token gives the patches no attention are left
    out (nan for a head where that leaves none).
    """
    _check_attention(attn)
    if prefix_tokens < 1:
        raise ValueError("attention_on_mask reads the class token's attention, so prefix_tokens must be at least 1")
    patches = attn.shape[-1] - prefix_tokens
    if object_patches.shape != (attn.shape[0], patches):
        raise ValueError(
            f"object_patches must be (batch, patches) = ({attn.shape[0]}, {patches}), got {tuple(object_patches.shape)}"
        )
    weights, valid = _renormalise(attn.detach().to(torch.float64)[:, :, 0, prefix_tokens:])
    coverage = object_patches.detach().to(device=weights.device, dtype=torch.float64)
    share = (weights * coverage[:, None, :]).sum(dim=-1)  # (batch, heads)
    return _valid_mean(share, valid, dims=(0,))


def patch_coverage(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Share of each patch covered by a pixel mask: (batch, H, W) bool -> (batch, gh·gw), patches row-major.

    H and W must be multiples of the grid so that every pixel belongs to exactly one patch.
    """
    if masks.ndim != 3:
        raise ValueError(f"patch_coverage expects (batch, H, W) masks, got shape {tuple(masks.shape)}")
    height, width = masks.shape[-2:]
    gh, gw = grid
    if gh < 1 or gw < 1 or height % gh or width % gw:
        raise ValueError(f"a {height}x{width} mask does not split into a {gh}x{gw} patch grid")
    pooled = F.avg_pool2d(masks.detach().to(torch.float32)[:, None], kernel_size=(height // gh, width // gw))
    return pooled.flatten(1)


def _check_attention(attn: Tensor) -> None:
    if attn.ndim != 4:
        raise ValueError(f"attention must be (batch, heads, queries, keys), got shape {tuple(attn.shape)}")


def _check_grid(attn: Tensor, grid: tuple[int, int], prefix_tokens: int) -> int:
    """Number of patch tokens, after checking that the token count matches prefix + grid (self-attention)."""
    patches = grid[0] * grid[1]
    tokens = prefix_tokens + patches
    if prefix_tokens < 0 or attn.shape[-1] != tokens or attn.shape[-2] != tokens:
        raise ValueError(
            f"{prefix_tokens} prefix tokens and a {grid[0]}x{grid[1]} grid make {tokens} tokens, but the attention "
            f"has {attn.shape[-2]} queries and {attn.shape[-1]} keys"
        )
    return patches


def _renormalise(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Rows rescaled to sum to 1 over the last dimension, and which rows had any mass to rescale."""
    mass = weights.sum(dim=-1, keepdim=True)
    valid = mass.squeeze(-1) > 0
    return weights / mass.clamp_min(torch.finfo(weights.dtype).tiny), valid


def _valid_mean(values: Tensor, valid: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Mean of ``values`` over ``dims`` counting only valid entries (nan where a head has none)."""
    total = (values * valid).sum(dim=dims)
    count = valid.sum(dim=dims)
    return (total / count).to(torch.float32)
