"""Image corruptions for the corruption fine-tuning baseline, after ImageNet-C.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019; github.com/hendrycks/robustness, ``make_imagenet_c.py``) define 15
corruptions at 5 severities. Those that are one array expression each are rewritten here in torch
with the published severity constants, so they run on any image size, on CPU or GPU, drawn from a
``torch.Generator`` (deterministic by seed, resumable with the training state):

================  ==========================================================  =====================
name              operation on x ∈ [0, 1]                                     severity 1 … 5
================  ==========================================================  =====================
gaussian_noise    x + c·N(0, 1)                                               c = .08 .12 .18 .26 .38
shot_noise        Poisson(c·x) / c                                            c = 60 25 12 5 3
impulse_noise     salt and pepper on a share c of the values                  c = .03 .06 .09 .17 .27
speckle_noise     x + x·c·N(0, 1)                                             c = .15 .20 .35 .45 .60
gaussian_blur     Gaussian filter, σ = c pixels (edge pixels repeated)        c = 1 2 3 4 6
contrast          (x − mean) · c + mean, mean per channel over the image      c = .4 .3 .2 .1 .05
pixelate          box down-sampling to c of the side, nearest up-sampling     c = .6 .5 .4 .3 .25
================  ==========================================================  =====================

The results are clipped to [0, 1] and truncated to 8 bits, as ImageNet-C's saved images are. Each
is checked against the reference code (the ``imagecorruptions`` package) in
``tests/test_corruptions_reference.py``: the deterministic ones to one grey level, the random
ones in their statistics. The
constants are those for 224-pixel ImageNet images; blur and pixelation act in pixels or shares
of the side, so on much smaller images they are relatively stronger or weaker. Pixelation is not
monotonic in severity at every side: a block size that does not divide the side blends pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return x + c * _normal(x, generator)


def _shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (60.0, 25.0, 12.0, 5.0, 3.0)[severity - 1]
    return torch.poisson((x * c).cpu(), generator=generator).to(x.device) / c


def _impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    u = torch.rand(x.shape, generator=generator).to(x.device)
    return torch.where(u < amount / 2, 0.0, torch.where(u < amount, 1.0, x))


def _speckle_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[severity - 1]
    return x + x * c * _normal(x, generator)


def _gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = (1.0, 2.0, 3.0, 4.0, 6.0)[severity - 1]
    # skimage.filters.gaussian as ImageNet-C calls it: scipy's kernel radius int(4σ + 0.5) and its
    # default 'nearest' border (edge pixels repeated)
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, rows, groups=channels)
    return F.conv2d(blurred, rows.transpose(2, 3), groups=channels)


def _contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)  # per channel, as ImageNet-C
    return (x - mean) * c + mean


def _pixelate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    height, width = x.shape[-2:]
    rows, cols = _box_weights(height, max(1, int(height * c)), x), _box_weights(width, max(1, int(width * c)), x)
    # as PIL: the horizontal pass, then the vertical one, each rounded half up to 8 bits
    small = _to_8_bits(rows @ _to_8_bits(x @ cols.T))
    # PIL's NEAREST up-sampling: the source pixel under each target pixel's centre
    return F.interpolate(small, size=(height, width), mode="nearest-exact")


def _to_8_bits(x: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] rounded half up to multiples of 1/255 (the epsilon: float32 round-off just below .5)."""
    return torch.floor(x * 255.0 + 0.5 + 1e-3) / 255.0


def _box_weights(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """(out, size) weights of PIL's BOX down-sampling (``ImagingResample``): output pixel i averages,
    with equal weights, the input pixels whose centres lie within its box of width size / out."""
    scale = size / out
    centres = (torch.arange(out, dtype=torch.float64)[:, None] + 0.5) * scale
    pixels = torch.arange(size, dtype=torch.float64)[None, :]
    first = torch.clamp(torch.floor(centres - scale / 2 + 0.5), min=0)
    last = torch.clamp(torch.floor(centres + scale / 2 + 0.5), max=size)  # exclusive
    position = (pixels - centres + 0.5) / scale
    inside = (pixels >= first) & (pixels < last) & (position >= -0.5) & (position < 0.5)
    weights = inside.to(torch.float64)
    return (weights / weights.sum(dim=1, keepdim=True)).to(like.device, like.dtype)


def _normal(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # drawn on the CPU generator, so a run gives the same images on CPU and CUDA
    return torch.randn(x.shape, generator=generator).to(x.device, x.dtype)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "pixelate": _pixelate,
}

CORRUPTION_NAMES = tuple(CORRUPTIONS)


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """``images`` uint8 (N, H, W, 3) corrupted by ``name`` at ``severity`` (1–5), as uint8."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {sorted(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity {severity}: expected 1 to 5")
    x = images.permute(0, 3, 1, 2).float() / 255.0
    out = CORRUPTIONS[name](x, severity, generator).clamp(0.0, 1.0)
    # truncated to 8 bits like ImageNet-C's np.uint8; the epsilon keeps float32 round-off just
    # below an integer (254.99998 for 255) from losing a level that float64 keeps
    return (out * 255.0 + 1e-3).floor().clamp(max=255).to(torch.uint8).permute(0, 2, 3, 1)


def corrupt_batch(
    images: torch.Tensor, names: list[str], severity: int, share: float, generator: torch.Generator
) -> torch.Tensor:
    """Each image of a uint8 (N, H, W, 3) batch, with probability ``share``, corrupted by one of
    ``names`` drawn uniformly; the others unchanged."""
    chosen = torch.rand(len(images), generator=generator) < share
    which = torch.randint(len(names), (len(images),), generator=generator)
    out = images.clone()
    for index, name in enumerate(names):
        selected = torch.nonzero(chosen & (which == index)).flatten().to(images.device)
        if len(selected):
            out[selected] = corrupt(images[selected], name, severity, generator)
    return out
