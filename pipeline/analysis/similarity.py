"""Representation similarity between two layers (or one layer of two models) seen on the same inputs.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited") is the usual
measure for "how much did fine-tuning change this layer": it is invariant to rotations and isotropic scaling of
either representation, so it compares what the features encode rather than their basis, and it stays meaningful
when the two sides have different widths.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A centred representation whose second moment is below this share of the uncentred one counts as constant: the
# float64 rounding of centring a constant is ~1e-30 of it, while a real relative spread of 1e-10 still counts.
_CONSTANT_TOLERANCE = 1e-20


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between feature matrices ``x`` (n, d1) and ``y`` (n, d2) whose rows are the same n inputs.

    Computed in float64 from the d×d cross-covariances, ||Yᶜᵀ Xᶜ||²_F / (||Xᶜᵀ Xᶜ||_F ||Yᶜᵀ Yᶜ||_F), which equals
    the Gram-matrix (HSIC) form but needs memory in the widths rather than in n², so it scales to many tokens.
    Returns a value in [0, 1]; 0 when either side is constant over the inputs (nothing to align, rather than nan).
    """
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"linear_cka expects two (n, d) feature matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same inputs on both sides: {x.shape[0]} rows against {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 inputs to centre over, got {x.shape[0]}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    xc = x - x.mean(dim=0, keepdim=True)
    yc = y - y.mean(dim=0, keepdim=True)
    self_x = torch.linalg.matrix_norm(xc.T @ xc)
    self_y = torch.linalg.matrix_norm(yc.T @ yc)
    if _is_constant(self_x, x) or _is_constant(self_y, y):
        return 0.0
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    return float((cross / (self_x * self_y)).clamp(0.0, 1.0))


def _is_constant(centred_norm: Tensor, raw: Tensor) -> bool:
    """Whether a centred representation has no variance beyond float64 rounding of its raw scale."""
    scale = raw.pow(2).sum()
    return bool(centred_norm <= _CONSTANT_TOLERANCE * scale) or not bool(centred_norm > 0)
