"""How sparse a layer's activations are, to see whether fine-tuning concentrated or spread a representation.

`active_share` counts firing units (meant for post-GELU MLP hidden units, where "active" means positive);
`hoyer_sparsity` is scale-free and looks at the shape of each activation vector rather than a threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def active_share(x: Tensor, threshold: float = 0.0) -> float:
    """Share of the entries of ``x`` that are greater than ``threshold``."""
    if x.numel() == 0:
        raise ValueError("active_share needs at least one entry")
    return float((x.detach() > threshold).to(torch.float64).mean())


def hoyer_sparsity(x: Tensor) -> float:
    """Hoyer (2004) sparsity of each vector along the last dimension, averaged over vectors.

    (√d − ||v||₁/||v||₂) / (√d − 1): 1 for a one-hot vector, 0 when all entries have the same magnitude. All-zero
    vectors have no shape and are left out of the average (0.0 if every vector is zero). With d = 1 every vector is
    both one-hot and constant, the measure is undefined, and 0.0 is returned.
    """
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"hoyer_sparsity needs vectors along the last dimension, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if d == 1:
        return 0.0
    v = x.detach().to(torch.float64).reshape(-1, d)
    l1 = v.abs().sum(dim=-1)
    l2 = torch.linalg.vector_norm(v, dim=-1)
    nonzero = l2 > 0
    if not bool(nonzero.any()):
        return 0.0
    root_d = math.sqrt(d)
    hoyer = (root_d - l1[nonzero] / l2[nonzero]) / (root_d - 1.0)
    return float(hoyer.clamp(0.0, 1.0).mean())
