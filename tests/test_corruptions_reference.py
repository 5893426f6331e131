"""The torch corruptions against ImageNet-C's reference code (the ``imagecorruptions`` package,
Michaelis et al.'s packaging of Hendrycks & Dietterich's ``make_imagenet_c.py``), on the same
images and severities: the deterministic corruptions to one grey level, the random ones in their
statistics (residual mean and spread, the share of salt and pepper values)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipeline.training.corruptions import corrupt

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


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", ["contrast", "gaussian_blur", "pixelate"])
@pytest.mark.parametrize("size", [224, 32])
def test_deterministic_corruptions_match_the_reference_to_one_grey_level(name: str, severity: int, size: int) -> None:
    image = photo(size)
    difference = np.abs(ours(image, name, severity).astype(int) - reference(image, name, severity).astype(int))
    assert difference.max() <= 1, f"{name} {severity}: max {difference.max()}, mean {difference.mean():.4f}"
    assert difference.mean() < 0.003  # float32 against float64 round-off only (measured: blur 0.16 %, the others 0)


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
