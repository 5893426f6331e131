"""Corruption families, and which of a benchmark's corruptions a model was trained on.

The default families follow the Fourier view of robustness (Yin et al., "A Fourier Perspective on
Model Robustness in Computer Vision", NeurIPS 2019): noise, pixelation and JPEG artefacts add
high-frequency content; blur, contrast, fog and brightness change mostly the low frequencies.
Training on one family is the corruption fine-tuning study's setting: its gains hold on the
corruptions trained on and do not carry over to the other family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HIGH_FREQUENCY = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "pixelate", "jpeg_compression")
LOW_FREQUENCY = ("gaussian_blur", "defocus_blur", "contrast", "fog", "brightness")
FAMILIES: dict[str, tuple[str, ...]] = {"high": HIGH_FREQUENCY, "low": LOW_FREQUENCY}
SEVERITIES = (1, 2, 3, 4, 5)

KNOWN_CORRUPTIONS = frozenset(HIGH_FREQUENCY + LOW_FREQUENCY)  # what ops.py implements (tested)


def family_of(families: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """corruption -> its family; a corruption in two families is an error."""
    owner: dict[str, str] = {}
    for family, names in families.items():
        for name in names:
            if name in owner:
                raise ValueError(f"corruption {name!r} is in two families: {owner[name]!r} and {family!r}")
            owner[name] = family
    return owner


def seen_and_unseen(benchmark: Iterable[str], trained: Iterable[str]) -> tuple[list[str], list[str]]:
    """The benchmark's corruptions split into those the model was fine-tuned on (seen) and the others."""
    trained_on = set(trained)
    names = list(dict.fromkeys(benchmark))
    return [name for name in names if name in trained_on], [name for name in names if name not in trained_on]
