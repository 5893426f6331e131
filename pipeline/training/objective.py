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

The alignment is weighted by ``w_rel`` and added to ``w_cls·`` an anchor term (logged as
``classification``) and, optionally, ``w_comp·`` a competitor penalty.

Normalisation (``normalisation``). ``max`` is the paper's ``R+ / max R+``. Its peak is exactly 1,
where the BCE clamp (``BCE_MARGIN``) freezes it, and the maximum carries gradient: when the peak
lies off the mask, every other off-mask cell ``R_i / max`` is lowered as much by raising the
maximum as by lowering ``R_i``, while the peak's own term is frozen, so descent grows the very
relevance it should remove. ``detached_max`` divides by ``max R+ · (1 + DETACHED_MAX_MARGIN)``
held constant: the map is the paper's divided by 1.1, but each cell gets its own BCE gradient
only, the peak included. The margin
0.1 puts the peak at 1/1.1 ≈ 0.91, where BCE towards 0 is log 11 ≈ 2.4 with slope 11: finite, and
of the order of the rest of the map (a cell at half the peak has slope ≈ 1.8), whereas a margin
like 1e-6 would hand one cell a 10⁶ times steeper slope (and lose it to float32 rounding of
1 − x); every value stays within 10 % of the paper's, so the weights keep their meaning. ``energy``
is unaffected by either choice: a constant divisor cancels from a share exactly as the maximum does.

Anchor (``anchor``), the term that keeps the classifier. ``self_label`` (the paper's) is
``CE(z/T, argmax z)``: it follows the model's own argmax as it drifts, so it cannot hold classes
the fine-tuning images never show. ``labels`` is ``CE(z/T, y)`` on the true labels.
``kl_base`` is ``KL(p_base ‖ p_model)`` over all classes at temperature ``T``, ``p_base`` from the
frozen base model on the same batch: it keeps the whole predictive distribution, unseen classes
included. All three are KL divergences from a target to ``softmax(z/T)`` (CE on a hard label is KL
from a one-hot), so no ``T²`` factor is applied: ``w_cls`` means the same for each.

Competitor penalty (``competitor_weight``, ``competitors``). A background shortcut often works by
raising a *competing* class's logit, which the true class's map cannot show. For the ``k`` other
classes with the highest logits (chosen without gradient), with ``A`` a competitor's positive
relevance off the mask and ``S`` the true class's positive relevance, both summed over the image,
the penalty is ``A / sg(A + S)`` per competitor and image, averaged (``sg``: no gradient). AttnLRP
is conservative (a map sums to about its logit), so this is the competitor's off-mask evidence in
units of the evidence in play: free of the logits' scale, in [0, 1] (1 only when the true class
has no positive relevance) and finite even then. Its gradient only lowers the competitor's
off-mask relevance: it can neither be met by raising the true class (``S`` is held) nor by moving
the competitor's evidence onto the object (which a share of the competitor's own map would
reward). It has its own weight, outside ``w_rel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.relevance.attnlrp import attnlrp

if TYPE_CHECKING:
    from pipeline.config.finetune import RelevanceObjective

# BCE's gradient at an input of exactly 0 or 1 is ~1e12 (torch divides by max(x(1-x), 1e-12));
# the per-image maximum of R is exactly 1, so inputs are kept this far inside (0, 1).
BCE_MARGIN = 1e-6
# detached_max puts the peak at 1 / (1 + margin); the module docstring says why 0.1.
DETACHED_MAX_MARGIN = 0.1


def normalise_relevance(relevance: torch.Tensor, normalisation: str = "max", eps: float = 1e-12) -> torch.Tensor:
    """Positive part of each map (B, H, W), divided by its maximum (``max``: values in [0, 1]) or by
    its maximum times 1.1 held constant (``detached_max``: values in [0, 1/1.1])."""
    positive = relevance.clamp(min=0)
    peak = positive.flatten(1).amax(dim=1).clamp(min=eps)
    if normalisation == "detached_max":
        peak = peak.detach() * (1.0 + DETACHED_MAX_MARGIN)
    elif normalisation != "max":
        raise ValueError(f"unknown normalisation {normalisation!r} (max or detached_max)")
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


def base_kl_divergence(logits: torch.Tensor, base_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(p_base ‖ p_model)`` at temperature T, summed over classes, averaged over images."""
    return F.kl_div(
        F.log_softmax(logits / temperature, dim=1),
        F.log_softmax(base_logits.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def anchor_term(
    logits: torch.Tensor, objective: RelevanceObjective, labels: torch.Tensor | None, base_logits: torch.Tensor | None
) -> torch.Tensor:
    """The classification anchor chosen by ``objective.anchor``; ``labels`` / ``base_logits`` are needed by the anchor that uses them."""
    if objective.anchor == "self_label":
        return self_label_cross_entropy(logits, objective.temperature)
    if objective.anchor == "labels":
        if labels is None:
            raise ValueError("anchor labels needs the batch's labels")
        return F.cross_entropy(logits / objective.temperature, labels)
    if base_logits is None:
        raise ValueError("anchor kl_base needs the base model's logits on the batch")
    return base_kl_divergence(logits, base_logits, objective.temperature)


def competitor_classes(logits: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) indices of the highest logits other than each image's label; no gradient."""
    if count >= logits.shape[1]:
        raise ValueError(
            f"competitors: {count} competing classes asked for, but the model has {logits.shape[1]} classes (at most {logits.shape[1] - 1})"
        )
    scores = logits.detach().float().clone()
    scores.scatter_(1, labels.view(-1, 1), -torch.inf)
    return scores.topk(count, dim=1).indices


def competitor_relevance(
    model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, count: int
) -> torch.Tensor:
    """Differentiable AttnLRP maps (B, count, H, W) of each image's ``count`` top competitors, in
    one extra pass over the batch repeated ``count`` times."""
    classes = competitor_classes(logits, labels, count)
    maps = attnlrp(model, images.repeat_interleave(count, dim=0), classes.flatten(), create_graph=True)
    return maps.upsampled().unflatten(0, (len(images), count))


def competitor_penalty(
    relevance: torch.Tensor, competitors: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Mean over images and competitors of ``A / sg(A + S)``: ``A`` the competitor's positive
    relevance off the mask, ``S`` the true class's positive relevance (raw maps (B, H, W) and
    (B, k, H, W), masks (B, H, W))."""
    true_total = relevance.clamp(min=0).flatten(1).sum(dim=1).detach()
    off_mask = (competitors.clamp(min=0) * (1.0 - masks[:, None])).flatten(2).sum(dim=2)
    evidence = off_mask.detach() + true_total[:, None]
    # no evidence at all (A = S = 0): nothing to penalise, and no 1/eps gradient on cells at exactly 0
    return torch.where(evidence > 0, off_mask / evidence.clamp(min=eps), 0.0).mean()


def relevance_loss(
    relevance: torch.Tensor,
    masks: torch.Tensor,
    logits: torch.Tensor,
    objective: RelevanceObjective,
    labels: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
    competitors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The full objective from raw relevance (B, H, W); returns the loss and its terms for logging.

    ``labels`` are needed by ``anchor: labels``, ``base_logits`` by ``anchor: kl_base`` and the raw
    competitor maps (B, k, H, W) of :func:`competitor_relevance` by a ``competitor_weight`` above 0.
    """
    background_weight, foreground_weight = objective.weights()
    dtype = torch.promote_types(relevance.dtype, torch.float32)  # bf16 under autocast -> float32; float64 stays
    # BCE refuses to run under autocast; the loss is cheap, so it runs in full precision.
    with torch.autocast(device_type=relevance.device.type, enabled=False):
        normalised = normalise_relevance(relevance.to(dtype), objective.normalisation)
        background, foreground = alignment_terms(normalised, masks.to(dtype), objective.loss)
        classification = anchor_term(
            logits.to(dtype), objective, labels, None if base_logits is None else base_logits.to(dtype)
        )
        alignment = background_weight * background + foreground_weight * foreground
        total = objective.relevance_weight * alignment + objective.classification_weight * classification
        terms = {
            "background": background.item(),
            "foreground": foreground.item(),
            "classification": classification.item(),
        }
        if objective.competitor_weight > 0:
            if competitors is None:
                raise ValueError("competitor_weight > 0 needs the competitors' relevance maps")
            competitor = competitor_penalty(relevance.to(dtype), competitors.to(dtype), masks.to(dtype))
            total = total + objective.competitor_weight * competitor
            terms["competitor"] = competitor.item()
    return total, terms


def background_share(relevance: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """Per image: share of the positive relevance that falls outside the mask (0 = all on the mask)."""
    positive = relevance.clamp(min=0).flatten(1)
    outside = (positive * (1.0 - object_masks.float().flatten(1))).sum(dim=1)
    return outside / positive.sum(dim=1).clamp(min=1e-12)
