"""ImageNet-C corruptions (pipeline.corruptions.py): the published formulas, severities, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.corruptions.families import FAMILIES, KNOWN_CORRUPTIONS, family_of, seen_and_unseen
from pipeline.corruptions.ops import CORRUPTION_NAMES, CORRUPTIONS, corrupt, corrupt_batch


def images(count: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients with a square: structure for blur and pixelation to destroy."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    out = np.zeros((count, size, size, 3))
    for i in range(count):
        for c in range(3):
            out[i, ..., c] = 0.2 + 0.6 * (rng.uniform() * ys + rng.uniform() * xs) / 2
        out[i, size // 4 : size // 2, size // 4 : size // 2] = rng.uniform(0.1, 0.9, 3)
    return torch.from_numpy((out * 255).round().astype(np.uint8))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_configurable_corruption_exists() -> None:
    assert tuple(CORRUPTIONS) == CORRUPTION_NAMES


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_shape_dtype_determinism_and_growing_severity(name: str) -> None:
    texture = torch.randint(-40, 41, (4, 48, 48, 3), generator=gen(9))
    x = (images().int() + texture).clamp(0, 255).to(torch.uint8)  # detail at every scale, for blur and pixelation
    outs = [corrupt(x, name, severity, gen(1)) for severity in range(1, 6)]
    for out in outs:
        assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(corrupt(x, name, 3, gen(1)), outs[2])  # same generator state, same image
    distance = [(out.float() - x.float()).abs().mean().item() for out in outs]
    assert distance[0] > 0
    assert distance[-1] > distance[0], distance
    if name != "pixelate":  # blocks that do not divide the side blend pixels: not monotonic at every size
        assert all(b >= a * 0.95 for a, b in zip(distance, distance[1:], strict=False)), distance


def test_contrast_and_noise_follow_the_published_formulas() -> None:
    x = torch.full((1, 64, 64, 3), 128, dtype=torch.uint8)
    x[:, :, 32:] = 64
    low = corrupt(x, "contrast", 5, gen()).float() / 255
    original = x.float() / 255
    mean = original.mean()
    torch.testing.assert_close(low, ((original - mean) * 0.05 + mean), atol=1 / 255, rtol=0)
    noisy = corrupt(x, "gaussian_noise", 1, gen()).float() / 255
    assert (noisy - original).std().item() == pytest.approx(0.08, rel=0.05)
    impulse = corrupt(x, "impulse_noise", 5, gen())
    saturated = ((impulse == 0) | (impulse == 255)).float().mean().item()
    assert saturated == pytest.approx(0.27, abs=0.02)


def test_blur_and_pixelate_remove_detail() -> None:
    x = images()

    def roughness(batch: torch.Tensor) -> float:
        values = batch.float()
        return (values[:, 1:] - values[:, :-1]).abs().mean().item() + (
            values[:, :, 1:] - values[:, :, :-1]
        ).abs().mean().item()

    noisy = corrupt(x, "gaussian_noise", 2, gen())
    assert roughness(corrupt(noisy, "gaussian_blur", 2, gen())) < roughness(noisy) / 2
    pixelated = corrupt(x, "pixelate", 5, gen()).numpy()
    side = 48 * 0.25  # 12 blocks of 4 pixels
    assert len(np.unique(pixelated[0, :, :, 0])) <= side * side


def test_batch_corrupts_a_share_with_one_corruption_each() -> None:
    x = images(count=200, size=16)
    out = corrupt_batch(x, ["contrast", "gaussian_noise"], 3, 0.5, gen(3))
    changed = (out != x).any(dim=(1, 2, 3))
    assert 0.4 < changed.float().mean().item() < 0.6
    assert torch.equal(out, corrupt_batch(x, ["contrast", "gaussian_noise"], 3, 0.5, gen(3)))
    assert torch.equal(
        corrupt_batch(x, ["contrast"], 3, 1.0, gen(3)), corrupt(x, "contrast", 3, gen())
    )  # contrast draws nothing


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'frost'"):
        corrupt(images(), "frost", 3, gen())
    with pytest.raises(ValueError, match="severity 6: expected 1 to 5"):
        corrupt(images(), "contrast", 6, gen())


def test_families_split_the_corruptions_by_frequency() -> None:
    assert sorted(FAMILIES["high"] + FAMILIES["low"]) == sorted(CORRUPTION_NAMES) == sorted(KNOWN_CORRUPTIONS)
    assert "jpeg_compression" in FAMILIES["high"] and "fog" in FAMILIES["low"]
    assert family_of(FAMILIES)["pixelate"] == "high"
    with pytest.raises(ValueError, match="'contrast' is in two families"):
        family_of({"a": ["contrast"], "b": ["fog", "contrast"]})


def test_seen_and_unseen_corruptions_follow_the_training_list() -> None:
    benchmark = ["gaussian_noise", "fog", "contrast", "pixelate"]
    assert seen_and_unseen(benchmark, ["fog", "pixelate", "jpeg_compression"]) == (
        ["fog", "pixelate"],
        ["gaussian_noise", "contrast"],
    )
    assert seen_and_unseen(benchmark, []) == ([], benchmark)


def test_a_family_in_the_finetune_config_is_written_out() -> None:
    from pipeline.config.finetune import LabelsObjective

    objective = LabelsObjective(objective="labels", corruptions=["low", "gaussian_noise", "contrast"])
    assert objective.corruptions == [*FAMILIES["low"], "gaussian_noise"]
    with pytest.raises(ValueError, match="frost"):
        LabelsObjective(objective="labels", corruptions=["frost"])
