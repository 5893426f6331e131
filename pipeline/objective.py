"""The fine-tuning objectives: relevance alignment with masks (CFT, RobustViT) and plain labels.

``R`` is the AttnLRP map of the true class at image size, positive part, divided by its per-image
maximum so it lies in [0, 1]; ``M`` is the mask (union of concept masks, or the object mask).

* ``bce`` (CFT): ``w_bg·BCE(R⊙(1−M), 0) + w_fg·BCE(R⊙M, M)``: relevance off the mask is pushed
  to 0, relevance on the mask towards 1.
* ``mse`` (RobustViT): the same with mean squared errors.
* ``energy`` (Model Guidance, Rao et al. 2023): the share of positive relevance outside ``M``,
  ``Σ R⊙(1−M) / Σ R`` per image, averaged; no foreground term. A share does not change when a map
  is scaled, so the per-image maximum cancels out of it and of its gradient: lowering it can only
  move relevance from outside the mask to inside, never raise an off-mask peak through the divisor.

The alignment is weighted by ``w_rel`` and added to ``w_cls·CE(z/T, argmax z)``, a cross-entropy
towards the model's own current predictions that keeps it from drifting (the labels are not used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import RelevanceObjective

# BCE's gradient at an input of exactly 0 or 1 is ~1e12 (torch divides by max(x(1-x), 1e-12));
# the per-image maximum of R is exactly 1, so inputs are kept this far inside (0, 1).
BCE_MARGIN = 1e-6


def normalise_relevance(relevance: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Positive part of each map (B, H, W), divided by its maximum: values in [0, 1]."""
    positive = relevance.clamp(min=0)
    peak = positive.flatten(1).amax(dim=1).clamp(min=eps)
    return positive / peak.view(-1, *([1] * (relevance.dim() - 1)))


def alignment_terms(relevance: torch.Tensor, masks: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(background term, foreground term) for normalised relevance and binary masks, both (B, H, W)."""
    off_mask = relevance * (1.0 - masks)
    on_mask = relevance * masks
    if loss == "bce":
        off_mask = off_mask.clamp(BCE_MARGIN, 1.0 - BCE_MARGIN)
        on_mask = on_mask.clamp(BCE_MARGIN, 1.0 - BCE_MARGIN)
        return F.binary_cross_entropy(off_mask, torch.zeros_like(off_mask)), F.binary_cross_entropy(on_mask, masks)
    if loss == "mse":
        return F.mse_loss(off_mask, torch.zeros_like(off_mask)), F.mse_loss(on_mask, masks)
    if loss == "energy":
        return background_share(relevance, masks).mean(), relevance.new_zeros(())
    raise ValueError(f"unknown alignment loss {loss!r} (bce, mse or energy)")


def self_label_cross_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.cross_entropy(logits / temperature, logits.detach().argmax(dim=1))


def relevance_loss(relevance: torch.Tensor, masks: torch.Tensor, logits: torch.Tensor, objective: RelevanceObjective) -> tuple[torch.Tensor, dict[str, float]]:
    """The full objective from raw relevance (B, H, W); returns the loss and its terms for logging."""
    background_weight, foreground_weight = objective.weights()
    dtype = torch.promote_types(relevance.dtype, torch.float32)  # bf16 under autocast -> float32; float64 stays
    # BCE refuses to run under autocast; the loss is cheap, so it runs in full precision.
    with torch.autocast(device_type=relevance.device.type, enabled=False):
        normalised = normalise_relevance(relevance.to(dtype))
        background, foreground = alignment_terms(normalised, masks.to(dtype), objective.loss)
        classification = self_label_cross_entropy(logits.to(dtype), objective.temperature)
    alignment = background_weight * background + foreground_weight * foreground
    total = objective.relevance_weight * alignment + objective.classification_weight * classification
    terms = {"background": background.item(), "foreground": foreground.item(), "classification": classification.item()}
    return total, terms


def background_share(relevance: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """Per image: share of the positive relevance that falls outside the mask (0 = all on the mask)."""
    positive = relevance.clamp(min=0).flatten(1)
    outside = (positive * (1.0 - object_masks.float().flatten(1))).sum(dim=1)
    return outside / positive.sum(dim=1).clamp(min=1e-12)
