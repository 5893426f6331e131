"""AttnLRP maps as NumPy arrays at image size, for monitoring, evaluation and pictures (no parameter gradients)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from pipeline.relevance.attnlrp import attnlrp
from pipeline.utils.device import Normalizer, autocast

Upsampling = Literal["cells", "bilinear"]


def relevance_batch(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    upsampling: Upsampling = "cells",
) -> np.ndarray:
    """(B, H, W) maps of ``targets`` for normalised images ``x``: each grid cell's relevance on its
    pixels (``cells``, what the fine-tuning loss sees) or bilinearly upsampled (``bilinear``)."""
    with autocast(device):
        relevance = attnlrp(model, x, targets)
    maps = relevance.upsampled() if upsampling == "cells" else relevance.interpolated()
    return maps.float().detach().cpu().numpy()


def relevance_maps(
    model: torch.nn.Module,
    normalizer: Normalizer,
    images: np.ndarray,
    targets: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """(N, H, W) maps of ``targets`` for uint8 images (N, H, W, 3), in batches."""
    model.eval()
    maps = [np.zeros((0, *images.shape[1:3]), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        x = normalizer(torch.from_numpy(images[start : start + batch_size]).to(device))
        y = torch.from_numpy(targets[start : start + batch_size]).to(device)
        maps.append(relevance_batch(model, x, y, device))
    return np.concatenate(maps)
