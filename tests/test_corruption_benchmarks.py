"""Corruption benchmarks (pipeline/benchmarks/corrupted.py, kinds corrupted and imagenet_c): the
same corrupted pixels whatever the order, the per corruption/severity/family bookkeeping, seen and
unseen corruptions, relative corruption error, ImageNet-C's folder layout and the config's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.benchmarks.catalog import BenchmarkError, BenchmarkImages, read_benchmark
from pipeline.benchmarks.corrupted import (
    CorruptedItems,
    corruption_breakdown,
    corruption_metrics,
    expand_pairs,
)
from pipeline.benchmarks.sources import ArrayItems, open_source
from pipeline.config.evaluate import BenchmarkConfig
from pipeline.corruptions.families import FAMILIES
from pipeline.corruptions.ops import corrupt, corruption_generator
from pipeline.data.preprocess import InputTransform
from pipeline.reports.corruptions import corruption_summary, relative_ce
from tests.helpers.benchmark_files import write_image

PAIRS = [("gaussian_noise", 1), ("gaussian_noise", 5), ("fog", 2), ("contrast", 4)]


def items(count: int = 3) -> CorruptedItems:
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return CorruptedItems(ArrayItems(images, None), PAIRS, seed=7)


def test_each_item_is_one_image_under_one_pair_seeded_by_image_and_pair_alone() -> None:
    dataset = items()
    assert len(dataset) == 3 * len(PAIRS)
    forward = [dataset[i]["image"] for i in range(len(dataset))]
    backward = {i: items()[i]["image"] for i in reversed(range(len(dataset)))}  # another order, fresh caches
    assert all(torch.equal(forward[i], backward[i]) for i in range(len(dataset)))
    image = items().inner[1]["image"]  # item 1 * 4 + 2: image 1 under fog at severity 2
    expected = corrupt(image[None], "fog", 2, corruption_generator(7, 1, "fog", 2))[0]
    assert torch.equal(forward[1 * len(PAIRS) + 2], expected)
    assert not torch.equal(forward[0], forward[1])  # severities differ
    draws = [
        corruption_generator(*key).initial_seed() for key in ((7, 1, "fog", 2), (8, 1, "fog", 2), (7, 2, "fog", 2))
    ]
    assert len(set(draws)) == 3


def test_expanded_listing_repeats_targets_and_adds_the_pair() -> None:
    images = BenchmarkImages("split", Path("/x"), ["a", "b"], [(0,), (1,)], None, metadata={"extra": ["p", "q"]})
    expanded = expand_pairs(images, PAIRS)
    assert expanded.files[:2] == ["a#gaussian_noise-1", "a#gaussian_noise-5"] and len(expanded.files) == 8
    assert expanded.targets == [(0,)] * 4 + [(1,)] * 4
    assert expanded.metadata["corruption"][4:] == ["gaussian_noise", "gaussian_noise", "fog", "contrast"]
    assert expanded.metadata["severity"][:4] == ["1", "5", "2", "4"] and expanded.metadata["extra"][3:5] == ["p", "q"]


def breakdown_case() -> tuple[BenchmarkImages, dict[str, np.ndarray]]:
    """Four images (classes 0, 1, 0, 1) under the four pairs; right answers chosen by hand."""
    images = expand_pairs(BenchmarkImages("split", Path("/x"), list("abcd"), [(0,), (1,), (0,), (1,)], None), PAIRS)
    right = np.array(
        # noise 1, noise 5, fog 2, contrast 4   per image
        [[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0], [1, 0, 0, 0]]
    ).reshape(-1)
    targets = np.array([t[0] for t in images.targets])
    return images, {"standard": np.where(right == 1, targets, 1 - targets)}


def test_breakdown_and_metrics_per_corruption_family_and_trained_set() -> None:
    images, predictions = breakdown_case()
    rows = corruption_breakdown(images, predictions, {0}, FAMILIES)
    cells = {(row["corruption"], row["severity"]): row for row in rows}
    assert cells["gaussian_noise", 1]["accuracy"] == 1.0 and cells["gaussian_noise", 5]["accuracy"] == 0.5
    assert cells["fog", 2] == {
        "corruption": "fog",
        "family": "low",
        "severity": 2,
        "images": 4,
        "accuracy": 0.25,
        "accuracy_seen": 0.5,
        "accuracy_unseen": 0.0,
    }
    metrics = corruption_metrics(rows, trained=["fog", "jpeg_compression"])
    assert metrics["accuracy_gaussian_noise"] == 0.75 and metrics["accuracy_contrast"] == 0.5
    assert metrics["accuracy_family_high"] == 0.75
    assert metrics["accuracy_family_low"] == pytest.approx((0.25 + 0.5) / 2)
    assert metrics["accuracy_corruptions_seen"] == 0.25
    assert metrics["accuracy_corruptions_unseen"] == pytest.approx((0.75 + 0.5) / 2)
    untrained = corruption_metrics(rows, trained=[])
    assert "accuracy_corruptions_seen" not in untrained
    assert untrained["accuracy_corruptions_unseen"] == pytest.approx((0.75 + 0.25 + 0.5) / 3)


def test_relative_corruption_error_is_the_mean_error_ratio_to_the_reference() -> None:
    base = {"accuracy_fog": 0.6, "accuracy_contrast": 0.8}
    mine = {"accuracy_fog": 0.8, "accuracy_contrast": 0.7}
    assert relative_ce(mine, base, ["fog", "contrast"]) == pytest.approx((0.2 / 0.4 + 0.3 / 0.2) / 2)
    assert relative_ce(base, base, ["fog", "contrast"]) == pytest.approx(1.0)
    assert relative_ce(mine, {"accuracy_fog": 1.0, "accuracy_contrast": 0.8}, ["fog", "contrast"]) is None
    per_benchmark = {
        "corrupted": {
            "benchmark": {"kind": "corrupted", "families": {"low": ["fog", "contrast"]}},
            "models": {
                "base": {"accuracy": 0.7, **base, "accuracy_family_low": 0.7, "accuracy_corruptions_unseen": 0.7},
                "tuned": {
                    "accuracy": 0.75,
                    **mine,
                    "accuracy_family_low": 0.75,
                    "accuracy_corruptions_seen": 0.8,
                    "accuracy_corruptions_unseen": 0.7,
                },
            },
        },
        "test": {"benchmark": {"kind": "split"}, "models": {"base": {"accuracy": 0.9}, "tuned": {"accuracy": 0.9}}},
    }
    summary = corruption_summary(per_benchmark, "base")
    assert summary["base"]["corruption_relative_ce"] == 1.0
    assert summary["tuned"] == {
        "corruption_accuracy": 0.75,
        "corruption_low_accuracy": 0.75,
        "corruption_seen_accuracy": 0.8,
        "corruption_unseen_accuracy": 0.7,
        "corruption_relative_ce": pytest.approx((0.2 / 0.4 + 0.3 / 0.2) / 2, abs=1e-6),
    }


def test_imagenet_c_layout_is_read_with_corruption_and_severity(tmp_path: Path) -> None:
    for name in ("fog/1/cat/a.JPEG", "fog/3/dog/b.JPEG", "snow/5/cat/c.JPEG"):
        write_image(tmp_path / name)
    images = read_benchmark("imagenet_c", tmp_path, ["cat", "dog"])
    assert images.files == ["fog/1/cat/a.JPEG", "fog/3/dog/b.JPEG", "snow/5/cat/c.JPEG"]
    assert images.targets == [(0,), (1,), (0,)]
    assert images.metadata == {"corruption": ["fog", "fog", "snow"], "severity": ["1", "3", "5"]}
    (tmp_path / "fog" / "6").mkdir()
    with pytest.raises(BenchmarkError, match=r"fog: expected severity folders 1-5 .* found \['6'\]"):
        read_benchmark("imagenet_c", tmp_path, ["cat", "dog"])


def test_imagenet_c_files_are_not_cropped_again(tmp_path: Path) -> None:
    write_image(tmp_path / "fog/1/cat/a.png")
    transform = InputTransform(8, "bilinear", 0.875, "center")
    source = open_source(
        "c", BenchmarkConfig(kind="imagenet_c", path=str(tmp_path)), ["cat"], transform, tmp_path / "m", None, False
    )
    assert source.families == {name: list(names) for name, names in FAMILIES.items()}
    assert source.dataset.transform.crop_pct == 1.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "corrupted"}, "needs `of`"),
        ({"kind": "corrupted", "of": {"kind": "corrupted", "of": {"kind": "split"}}}, "cannot corrupt kind corrupted"),
        ({"kind": "corrupted", "of": {"kind": "split"}, "limit": 5}, "from `of`"),
        ({"kind": "corrupted", "of": {"kind": "split"}, "corruptions": ["frost"]}, r"corruptions \['frost'\]"),
        ({"kind": "corrupted", "of": {"kind": "split"}, "severities": [0]}, "greater than or equal to 1"),
        ({"kind": "split", "severities": [1]}, "are for kind corrupted"),
        ({"kind": "split", "families": {"a": ["fog"]}}, "`families` is for"),
        ({"kind": "imagenet_c", "path": "/x", "families": {"a": ["fog"], "b": ["fog"]}}, "in two families"),
    ],
)
def test_corruption_benchmark_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BenchmarkConfig(**settings)


def test_families_spell_out_and_corruption_benchmarks_stay_out_of_the_ood_mean() -> None:
    config = BenchmarkConfig(kind="corrupted", of={"kind": "split"}, corruptions=["low", "pixelate"], severities=[2])
    assert config.applied_corruptions() == [*FAMILIES["low"], "pixelate"]
    assert config.corruption_pairs()[-1] == ("pixelate", 2)
    assert not config.in_ood_mean() and BenchmarkConfig(kind="split").in_ood_mean()
    assert BenchmarkConfig(kind="corrupted", of={"kind": "split"}, ood_mean=True).in_ood_mean()
    assert len(BenchmarkConfig(kind="corrupted", of={"kind": "split"}).corruption_pairs()) == 11 * 5
