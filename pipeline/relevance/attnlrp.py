"""AttnLRP (Achtibat et al., ICML 2024) for timm ViTs and ConvNeXt(-V2): exact and differentiable.

Relevance is input × modified gradient (lxt's "efficient" form). The AttnLRP rules turn each
non-linear operation into a linear map whose coefficients depend on the input ``h`` (first stream):

==================  ============================================================================
operation           rule, as a linear map of the second stream ``x̃``
==================  ============================================================================
GELU                identity rule: ``x̃ ↦ Φ(h) x̃`` (GELU(h) = h Φ(h), so relevance passes unchanged)
LayerNorm           std treated as constant: ``x̃ ↦ γ (x̃ − mean x̃) / σ(h) + β`` over the last
                    dim (ViT tokens, ConvNeXt channels-last blocks)
LayerNorm2d         the same over the channel dim of NCHW (ConvNeXt stem, downsampling, head)
GlobalResponseNorm  ``Nx(h)`` held constant: ``x̃ ↦ x̃ + γ x̃ Nx(h) + β`` (ConvNeXt-V2; Nx is a
                    scale-free gain like 1/σ, see :mod:`pipeline.relevance.families.convnext`)
q·kᵀ, A·v           uniform rule: ``½ (q̃ kᵀ + q k̃ᵀ)`` (each operand gets half the relevance)
softmax             AttnLRP softmax rule = its Jacobian at the scores: ``A ⊙ (s̃ − Σ A s̃)``
Linear, Conv, add   ε-rule (ε → 0) = the plain gradient, so these run unchanged; so do depthwise
                    and 1×1 convolutions, average pooling and ConvNeXt's layer-scale ``gamma``
Dropout, DropPath   identity: the two streams would draw different masks
==================  ============================================================================

Max pooling, BatchNorm (whose training-mode statistics would mix the two streams) and any module
without a rule are refused up front with :class:`UnsupportedModelError` naming the module.

To make the relevance map *exactly* differentiable w.r.t. the parameters, the model runs two
streams (:class:`~pipeline.relevance.streams.TwoStreams`): the ordinary forward pass, and the
"linearised stream", which runs the linear maps above with coefficients taken from the ordinary
one *with their autograd history*. The modified gradient is then the true gradient of the
linearised stream's target logit w.r.t. its input, and autograd differentiates it exactly,
including through ``cls_token``, ``pos_embed`` and every bias (which a rule implemented as a
custom backward with constant coefficients would miss). Rules are applied by patching module
``forward`` methods inside a context manager and are restored on exit, so the model is never
copied and ordinary forward passes are untouched.

The shared rules live in :mod:`pipeline.relevance.rules`, each family's in
:mod:`pipeline.relevance.families` (``vit``, ``convnext``); this module walks that registry.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.relevance.rules import ModelFamily, Rule, UnsupportedModelError, shared_rule_map
from pipeline.relevance.streams import TwoStreams


def families() -> tuple[ModelFamily, ...]:
    """Every family in :mod:`pipeline.relevance.families`, in file-name order."""
    from pipeline.relevance import families as package

    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__))
    return tuple(importlib.import_module(f"{package.__name__}.{name}").FAMILY for name in names)


def _rule_for(module: nn.Module, rules: dict[type[nn.Module], Rule]) -> Rule | None:
    """The rule registered for the nearest class in the module's MRO, unless a subclass overrides
    ``forward`` in between (timm's LayerNorm2d *is* an nn.LayerNorm, over a different dim)."""
    for kind in type(module).__mro__:
        if kind in rules:
            return rules[kind] if type(module).forward is kind.forward else None
    return None


def _rules_and_check(model: nn.Module) -> dict[type[nn.Module], Rule]:
    """The rule map for ``model``'s family, after checking every module is covered."""
    known = families()
    rules = {**shared_rule_map(), **{kind: rule for family in known for kind, rule in family.rule_map().items()}}
    family = next((family for family in known if isinstance(model, family.model_types())), None)
    if family is None:
        linear = tuple(kind for family in known for kind in family.linear_types())
        names = " and ".join(family.name for family in known)
        raise UnsupportedModelError(
            f"AttnLRP rules cover timm {names} models, not {type(model).__name__}; no rule for {_uncovered(model, rules, linear)}"
        )
    family.check(model)
    linear = family.linear_types()
    for name, module in model.named_modules():
        if not isinstance(module, linear) and _rule_for(module, rules) is None:
            raise UnsupportedModelError(f"no AttnLRP rule for module '{name}' ({type(module).__name__})")
    return rules


def _uncovered(
    model: nn.Module, rules: dict[type[nn.Module], Rule], linear: tuple[type[nn.Module], ...], shown: int = 4
) -> str:
    """The first module of each type without a rule, e.g. "'bn1' (BatchNorm2d), 'maxpool' (MaxPool2d), …"."""
    first: dict[type[nn.Module], str] = {}
    for name, module in model.named_modules():
        if name and not isinstance(module, linear) and _rule_for(module, rules) is None:
            first.setdefault(type(module), name)
    listed = [f"'{name}' ({kind.__name__})" for kind, name in first.items()]
    return ", ".join(listed[:shown] + (["…"] if len(listed) > shown else [])) or "the model class itself"


@contextlib.contextmanager
def attnlrp_rules(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context, ``model`` takes and returns :class:`TwoStreams` (``x``, ``x̃``).

    Only instance-level ``forward`` attributes are set, and all are removed on exit (also on
    error), so outside the context the model computes exactly what it computed before.
    """
    rules = _rules_and_check(model)
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            rule = _rule_for(module, rules)
            if rule is None:
                continue
            if "forward" in vars(module):
                raise UnsupportedModelError(
                    f"{type(module).__name__} already has a patched forward; nested relevance passes are not supported"
                )
            module.forward = _bind(rule, module)  # type: ignore[method-assign]
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def _bind(rule: Rule, module: nn.Module) -> Callable[..., torch.Tensor]:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return rule(module, *args, **kwargs)

    return forward


# Cell of the relevance grid for CNNs. Their pixel relevance is noisy (the stride-4 patchify stem
# leaves a 4-px lattice, depthwise 7×7 kernels spread it further), while the loss only compares
# relevance with coarse concept masks. 16-px cells give the 14×14 grid of ViT-B/16 at 224 px, so
# the alignment loss and the grid-level metrics mean the same for both families.
CNN_CELL = (16, 16)


def relevance_cell(model: nn.Module) -> tuple[int, int]:
    """(height, width) in pixels of one cell of the relevance grid: the patch for ViTs, else ``CNN_CELL``."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "patch_size", None) is not None:
        patch = patch_embed.patch_size
        return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    return CNN_CELL


def _cell_sums(pixels: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """(B, ⌈H/ch⌉, ⌈W/cw⌉) sums of (B, H, W) within cells; partial cells at the bottom/right edge
    (where a dynamically padded ViT puts its padding) keep what lies inside the image."""
    (height, width), (ch, cw) = pixels.shape[-2:], cell
    padded = F.pad(pixels, (0, -width % cw, 0, -height % ch))
    rows, cols = padded.shape[-2] // ch, padded.shape[-1] // cw
    return padded.reshape(-1, rows, ch, cols, cw).sum(dim=(2, 4))


@dataclass
class Relevance:
    pixels: torch.Tensor  # (B, H, W): input × modified gradient, summed over colour channels
    tokens: torch.Tensor  # (B, ⌈H/ch⌉, ⌈W/cw⌉): pixel relevance summed within each grid cell
    logits: torch.Tensor  # (B, classes): the model's ordinary logits from the same pass
    cell: tuple[int, int]  # (ch, cw): the grid cell in pixels, ``relevance_cell(model)``

    def upsampled(self) -> torch.Tensor:
        """Cell relevance at image size (each cell's value on all its pixels), the map the
        fine-tuning loss compares to masks."""
        (height, width), (ch, cw) = self.pixels.shape[-2:], self.cell
        return self.tokens.repeat_interleave(ch, dim=1).repeat_interleave(cw, dim=2)[:, :height, :width]

    def interpolated(self) -> torch.Tensor:
        """Cell relevance bilinearly upsampled to image size (half-pixel centres, like
        ``F.interpolate(..., scale_factor=patch, mode="bilinear")``), the map of the
        ImageNet-segmentation protocol (Chefer et al.)."""
        (height, width), (ch, cw) = self.pixels.shape[-2:], self.cell
        rows, cols = self.tokens.shape[-2:]
        smooth = F.interpolate(
            self.tokens[:, None].float(), size=(rows * ch, cols * cw), mode="bilinear", align_corners=False
        )
        return smooth[:, 0, :height, :width]


def attnlrp(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, create_graph: bool = False) -> Relevance:
    """AttnLRP relevance of ``targets`` (class indices) for normalised ``images`` (B, 3, H, W).

    With ``create_graph=True`` the result is differentiable w.r.t. the model's parameters (the
    exact gradient of the relevance map), for use inside a training loss.
    """
    linear_input = images.detach().clone().requires_grad_(True)
    with attnlrp_rules(model):
        both = model(TwoStreams(images, linear_input))
    logits, logits_lin = both.normal, both.linear
    selected = logits_lin.gather(1, targets.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(selected, linear_input, create_graph=create_graph)
    pixels = (linear_input * gradient).sum(dim=1)
    cell = relevance_cell(model)
    return Relevance(pixels=pixels, tokens=_cell_sums(pixels, cell), logits=logits, cell=cell)
