"""ImageNet-C's corruptions in torch, for training on corrupted images and for corruption benchmarks.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019; github.com/hendrycks/robustness, ``make_imagenet_c.py``) define 15
corruptions at 5 severities, and 4 more for validation. Nine of the 15 and two of the 4 (speckle
noise, gaussian blur) are rewritten here with the published severity constants, so they run on
any image size, on CPU or GPU, drawn from a ``torch.Generator`` (deterministic by seed, resumable
with the training state):

================  ==========================================================  =====================
name              operation on x ∈ [0, 1]                                     severity 1 … 5
================  ==========================================================  =====================
gaussian_noise    x + c·N(0, 1)                                               c = .08 .12 .18 .26 .38
shot_noise        Poisson(c·x) / c                                            c = 60 25 12 5 3
impulse_noise     salt and pepper on a share c of the values                  c = .03 .06 .09 .17 .27
speckle_noise     x + x·c·N(0, 1)                                             c = .15 .20 .35 .45 .60
gaussian_blur     Gaussian filter, σ = c pixels (edge pixels repeated)        c = 1 2 3 4 6
defocus_blur      disk of radius r pixels, anti-aliased by a Gaussian σ=a     (r, a) = (3, .1) (4, .5)
                  (edges mirrored)                                              (6, .5) (8, .5) (10, .5)
contrast          (x − mean) · c + mean, mean per channel over the image      c = .4 .3 .2 .1 .05
fog               (x + c·plasma fractal, roughness d) · max x / (max x + c)   (c, d) = (1.5, 2) (2, 2)
                                                                                (2.5, 1.7) (2.5, 1.5) (3, 1.4)
brightness        HSV value + c, hue and saturation kept                      c = .1 .2 .3 .4 .5
pixelate          box down-sampling to c of the side, nearest up-sampling     c = .6 .5 .4 .3 .25
jpeg_compression  JPEG at quality c (PIL, on the CPU)                         c = 25 18 15 10 7
================  ==========================================================  =====================

The results are clipped to [0, 1] and truncated to 8 bits, as ImageNet-C's saved images are. Each
is checked against the reference code (the ``imagecorruptions`` package) in
``tests/test_corruptions_reference.py``: the deterministic ones to one grey level, the random
ones in their statistics. The constants are those for 224-pixel ImageNet images; blur and
pixelation act in pixels or shares of the side, so on much smaller images they are relatively
stronger or weaker. Pixelation is not monotonic in severity at every side: a block size that does
not divide the side blends pixels. Not included: glass, motion and zoom blur, snow, frost and
elastic transform, and the validation corruptions spatter and saturate (image resources or
per-pixel loops; ImageNet-C's files cover the 15, kind ``imagenet_c``).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


def _defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, alias_blur = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    kernel = _disk(radius, alias_blur).to(x.device, x.dtype)
    half = kernel.shape[0] // 2
    channels = x.shape[1]
    # cv2.filter2D's default border, BORDER_REFLECT_101 (mirrored without repeating the edge pixel)
    padded = _reflect_101(_reflect_101(x, half, dim=2), half, dim=3)
    return F.conv2d(padded, kernel.expand(channels, 1, -1, -1).contiguous(), groups=channels)


def _disk(radius: int, alias_blur: float) -> torch.Tensor:
    """ImageNet-C's defocus kernel: a normalised disk on a grid of at least ±8 pixels, smoothed by
    cv2.GaussianBlur (3×3, or 5×5 beyond radius 8) with mirrored borders."""
    reach, size = (8, 3) if radius <= 8 else (radius, 5)
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    taps = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    gaussian = torch.exp(-(taps**2) / (2 * alias_blur**2))
    gaussian = (gaussian / gaussian.sum()).view(1, 1, -1, 1)
    padded = _reflect_101(_reflect_101(disk[None, None], size // 2, dim=2), size // 2, dim=3)
    smoothed = F.conv2d(F.conv2d(padded, gaussian), gaussian.transpose(2, 3))
    return smoothed[0, 0]


def _reflect_101(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """``x`` padded by ``pad`` on both sides of ``dim``, mirrored about the edge pixels (any size,
    also when pad ≥ the side, where torch's reflect padding refuses)."""
    size = x.shape[dim]
    index = torch.arange(-pad, size + pad, device=x.device)
    if size == 1:
        index = torch.zeros_like(index)
    else:
        period = 2 * (size - 1)
        index = torch.remainder(index, period)
        index = torch.where(index >= size, period - index, index)
    return x.index_select(dim, index)


def _contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)  # per channel, as ImageNet-C
    return (x - mean) * c + mean


def _fog(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    strength, decay = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    height, width = x.shape[-2:]
    side = 1 << max(0, max(height, width) - 1).bit_length()  # the next power of two
    fog = _plasma_fractal(len(x), side, decay, generator)[:, None, :height, :width].to(x.device, x.dtype)
    brightest = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fog) * brightest / (brightest + strength)


def _plasma_fractal(count: int, side: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` (side, side) diamond-square height maps scaled to [0, 1], as ImageNet-C's fog
    draws them: corners start at 0, each halving of the step sets square centres and diamond
    points to their neighbours' mean plus uniform noise of amplitude w² (w = 100, then ÷ decay per
    step), wrapping around the edges."""
    heights = torch.zeros(count, side, side, dtype=torch.float64)
    step, wibble = side, 100.0

    def noisy_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=generator, dtype=torch.float64) * 2 - 1
        return total / 4 + wibble * wibble * noise

    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]
        square = corners + corners.roll(-1, dims=1)
        heights[:, half::step, half::step] = noisy_mean(square + square.roll(-1, dims=2))
        centres, corners = heights[:, half::step, half::step], heights[:, 0::step, 0::step]
        heights[:, 0::step, half::step] = noisy_mean(
            centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        )
        heights[:, half::step, 0::step] = noisy_mean(
            centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        )
        step //= 2
        wibble /= decay
    heights -= heights.amin(dim=(1, 2), keepdim=True)
    return heights / heights.amax(dim=(1, 2), keepdim=True)


def _brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    # ImageNet-C raises HSV's value V = max(r, g, b) by c, keeping hue and saturation: every
    # channel is V times a function of hue and saturation, so it scales by V'/V (black turns grey)
    value = x.amax(dim=1, keepdim=True)
    raised = (value + c).clamp(max=1.0)
    return torch.where(value > 0, x * raised / value.clamp(min=1e-12), raised.expand_as(x))


def _jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    pixels = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        encoded = io.BytesIO()
        Image.fromarray(image).save(encoded, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(encoded).convert("RGB")))
    return torch.from_numpy(np.stack(out)).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255.0


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
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "fog": _fog,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
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


def corruption_generator(seed: int, image: int, name: str, severity: int) -> torch.Generator:
    """A CPU generator seeded from (seed, image index, corruption, severity) alone: an evaluation
    corrupts each image the same way whatever the batch, order or worker."""
    words = [seed, image, CORRUPTION_NAMES.index(name), severity]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1))


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
