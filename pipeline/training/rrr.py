"""Right for the Right Reasons (Ross, Hughes & Doshi-Velez, IJCAI 2017): an input-gradient penalty.

A baseline for CFT that needs no relevance method: the classifier is trained with cross-entropy on
the labels plus a penalty on the input gradient of its summed log-probabilities where the mask says
the evidence must not be,

    L = CE(z, y) + λ · mean_b Σ_{c,h,w} ((1 − M) ⊙ ∂/∂x Σ_k log softmax(z)_k)²,

with ``M`` = 1 on the allowed region (object or concept masks), broadcast over colour channels.
This is the authors' code (``dtak/rrr``, ``rrr/multilayer_perceptron.py``): ``input_gradients``
defaults to ``scale='log'`` and ``y='sum'`` (the gradient of the summed log-probabilities over all
classes), and the penalty is ``l2_grads · Σ (input gradient)²`` over the annotated ("irrelevant",
``A = 1 − M``) entries (their TensorFlow variant uses ``tf.nn.l2_loss``, half that sum; the paper's
equation and the autograd code have no ½, nor does this module). Their objective sums CE and penalty over the batch; here both are batch means,
the same objective divided by the batch size. RobustViT's RRR baseline (``imagenet_finetune_rrr.py``)
takes the input gradient without ``create_graph``, so its penalty there sends no gradient to the
weights; here the gradient is built with ``create_graph=True`` and the penalty is trained through.

Two details make it run where the rest of cft runs:

* The penalty needs a second derivative through the whole network, and PyTorch's fused attention
  kernels (flash / memory-efficient, on CUDA and on CPU) have no double backward. The forward pass
  therefore runs under ``sdpa_kernel(SDPBackend.MATH)``, the composite kernel autograd can
  differentiate twice; timm's ``fused_attn`` flags are left alone.
* Under the bf16 autocast of :func:`pipeline.training.loop.autocast` the network runs in bf16, but
  log-softmax, cross-entropy and the squared gradient are computed in float32 (float64 stays).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.utils.errors import CftError


def log_probability_input_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, ∂/∂x Σ_k log softmax(z)_k) for images ``x`` (B, C, H, W); the gradient keeps its
    graph (``create_graph=True``) so a penalty on it trains the parameters. ``x`` itself gets no gradient."""
    inputs = x.detach().requires_grad_(True)
    with sdpa_kernel(SDPBackend.MATH):
        logits = model(inputs)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        summed = F.log_softmax(logits.to(dtype), dim=1).sum()
    (gradient,) = torch.autograd.grad(summed, inputs, create_graph=True)
    return logits, gradient


def _allowed(masks: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Masks (B, H, W) or (B, 1, H, W) as (B, 1, H, W) in the gradient's dtype."""
    batch, _, height, width = gradient.shape
    if masks.dim() == 3:
        masks = masks[:, None]
    if masks.shape != (batch, 1, height, width):
        raise ValueError(
            f"masks must be (B, H, W) or (B, 1, H, W) = ({batch}, [1,] {height}, {width}) for images {tuple(gradient.shape)}; got {tuple(masks.shape)}"
        )
    return masks.to(gradient.dtype)


def masked_gradient_penalty(gradient: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image (B,): Σ over channels and pixels of ((1 − M) ⊙ gradient)², in float32 or wider."""
    dtype = torch.promote_types(gradient.dtype, torch.float32)
    with torch.autocast(device_type=gradient.device.type, enabled=False):
        gradient = gradient.to(dtype)
        outside = (1.0 - _allowed(masks, gradient)) * gradient
        return outside.pow(2).flatten(1).sum(dim=1)


def calibrated_weight(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, batch_size: int
) -> float:
    """Ross et al.'s rule for λ: the two terms of one size, ``λ = CE / penalty`` of ``model`` (eval
    mode, no augmentation) over the images ``x``, in batches (means over all images)."""
    was_training = model.training
    model.eval()
    classification = penalty = 0.0
    for start in range(0, len(x), batch_size):
        logits, gradient = log_probability_input_gradient(model, x[start : start + batch_size])
        batch = slice(start, start + batch_size)
        classification += F.cross_entropy(
            logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), labels[batch], reduction="sum"
        ).item()
        penalty += masked_gradient_penalty(gradient.detach(), masks[batch]).sum().item()
    model.train(was_training)
    if penalty <= 0.0:
        raise CftError(
            "the base model's input gradients are all inside the masks (penalty 0): set finetune.<method>.penalty_weight explicitly"
        )
    return classification / penalty


def rrr_loss(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, penalty_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(z, labels) + penalty_weight · mean penalty`` for normalised images ``x`` (B, 3, H, W) and
    masks with 1 on the allowed region; returns the loss and its terms for logging."""
    logits, gradient = log_probability_input_gradient(model, x)
    return rrr_objective(logits, gradient, labels, masks, penalty_weight)


def rrr_objective(
    logits: torch.Tensor, gradient: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, penalty_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and its terms from :func:`log_probability_input_gradient`'s outputs (a training loop
    that also needs the logits calls the two itself)."""
    penalty = masked_gradient_penalty(gradient, masks).mean()
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        classification = F.cross_entropy(logits.to(dtype), labels)
    total = classification + penalty_weight * penalty
    return total, {"classification": classification.item(), "input_gradient": penalty.item()}
