"""The torch corruptions against ImageNet-C's reference code (the ``imagecorruptions`` package,
Michaelis et al.'s packaging of Hendrycks & Dietterich's ``make_imagenet_c.py``), on the same
images and severities: the deterministic corruptions to one grey level, the random ones in their
statistics (residual mean and spread, the share of salt and pepper values)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.corruptions.ops import CORRUPTIONS, _plasma_fractal, corrupt

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources' deprecation warning
    import imagecorruptions
    import imagecorruptions.corruptions as reference_module

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(autouse=True)
def skimage_channel_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    """imagecorruptions (2020) passes ``multichannel=True`` to skimage's gaussian, which newer
    skimage spells ``channel_axis=-1``; the same filter otherwise."""
    from skimage.filters import gaussian

    def translated(image: np.ndarray, sigma: float, multichannel: bool = False, **kwargs: object) -> np.ndarray:
        return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kwargs)

    monkeypatch.setattr(reference_module, "gaussian", translated)
    # and its fog allocates with np.float_, which NumPy 2 spells np.float64
    monkeypatch.setattr(np, "float_", np.float64, raising=False)


def photo(size: int = 224, seed: int = 0) -> np.ndarray:
    """A uint8 test image with smooth regions, edges and fine texture at every scale."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.2 + 0.6 * ys, 0.5 + 0.3 * np.sin(6 * xs), 0.3 + 0.4 * xs * ys], axis=-1)
    image[size // 4 : size // 2, size // 3 : 2 * size // 3] = rng.uniform(0.1, 0.9, 3)
    image += rng.normal(0, 0.05, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def ours(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    out = corrupt(torch.from_numpy(image)[None], name, severity, torch.Generator().manual_seed(seed))
    return out[0].numpy()


def reference(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return imagecorruptions.corrupt(image, corruption_name=name, severity=severity)


DETERMINISTIC = ["contrast", "gaussian_blur", "defocus_blur", "brightness", "pixelate"]


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("size", [224, 32])
def test_deterministic_corruptions_match_the_reference_before_8_bit_truncation(
    name: str, severity: int, size: int
) -> None:
    """The corrupted values before ImageNet-C's truncation to 8 bits agree to 0.002 grey levels
    (float32 against float64), so after it at most one level differs, on values within that
    round-off of an integer, where float64 itself lands on either side."""
    image = photo(size)
    x = torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255
    mine = CORRUPTIONS[name](x, severity, torch.Generator()).clamp(0, 1)[0].permute(1, 2, 0).double().numpy() * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(getattr(reference_module, name)(Image.fromarray(image), severity), dtype=np.float64)
    assert np.abs(mine - theirs).max() < 0.002, f"{name} {severity}: max {np.abs(mine - theirs).max():.2e} grey levels"
    truncated = np.abs(ours(image, name, severity).astype(int) - reference(image, name, severity).astype(int))
    assert truncated.max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "speckle_noise"])
def test_noises_match_the_reference_in_distribution(name: str, severity: int) -> None:
    """Different random draws, the same distribution: the residual's mean agrees within four
    standard errors of the difference (150,528 values each), its spread within 2 %; clipping at 0
    and 255 affects both alike."""
    image = photo()
    mine = ours(image, name, severity).astype(float) - image
    theirs = reference(image, name, severity).astype(float) - image
    standard_error = np.sqrt((mine.var() + theirs.var()) / mine.size)
    assert abs(mine.mean() - theirs.mean()) < 4 * standard_error, (mine.mean(), theirs.mean(), standard_error)
    assert mine.std() == pytest.approx(theirs.std(), rel=0.02)
    assert np.mean(np.abs(mine)) == pytest.approx(np.mean(np.abs(theirs)), rel=0.02)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_matches_the_reference_in_distribution(severity: int) -> None:
    image = photo()
    mine, theirs = ours(image, "impulse_noise", severity), reference(image, "impulse_noise", severity)
    for value in (0, 255):
        assert np.mean(mine == value) == pytest.approx(np.mean(theirs == value), abs=0.004)
    assert np.mean(mine != image) == pytest.approx(np.mean(theirs != image), abs=0.005)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("size", [224, 32])
def test_jpeg_is_the_reference_bit_for_bit(severity: int, size: int) -> None:
    image = photo(size)
    assert np.array_equal(ours(image, "jpeg_compression", severity), reference(image, "jpeg_compression", severity))


@pytest.mark.parametrize("side, decay", [(256, 2.0), (256, 1.4), (32, 2.0), (32, 1.4)])
def test_fog_fractal_matches_the_reference_in_distribution(side: int, decay: float) -> None:
    """Fog's diamond-square fractal, 100 draws each: mean, spread and roughness (mean step between
    neighbouring pixels, set by the decay) agree within 6 % (measured: within 4 %, the sampling
    noise of 100 draws)."""
    np.random.seed(0)

    def statistics(maps: list[np.ndarray]) -> np.ndarray:
        return np.array([[m.mean(), m.std(), np.abs(np.diff(m, axis=0)).mean()] for m in maps]).mean(axis=0)

    mine = statistics(
        [_plasma_fractal(1, side, decay, torch.Generator().manual_seed(s))[0].numpy() for s in range(100)]
    )
    theirs = statistics([reference_module.plasma_fractal(side, decay) for _ in range(100)])
    np.testing.assert_allclose(mine, theirs, rtol=0.06)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("size", [224, 32])
def test_fog_on_the_same_fractal_is_the_reference(monkeypatch: pytest.MonkeyPatch, severity: int, size: int) -> None:
    """Given the same fractal (ours, handed to the reference), fog's formula agrees before 8-bit
    truncation to 0.002 grey levels."""
    image = photo(size)
    side = 256 if size == 224 else 32
    decay = (2.0, 2.0, 1.7, 1.5, 1.4)[severity - 1]
    fractal = _plasma_fractal(1, side, decay, torch.Generator().manual_seed(7))[0].numpy()
    monkeypatch.setattr(reference_module, "plasma_fractal", lambda mapsize, wibbledecay: fractal)
    x = torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255
    mine = CORRUPTIONS["fog"](x, severity, torch.Generator().manual_seed(7)).clamp(0, 1)[0].permute(1, 2, 0)
    theirs = np.asarray(reference_module.fog(Image.fromarray(image), severity), dtype=np.float64)
    assert np.abs(mine.double().numpy() * 255 - theirs).max() < 0.002
