"""Background reliance: ImageNet-9's layout and class protocols, the world's backgrounds split, the
BG-gap and only-bg metrics, relevance without an object, and the report's spurious section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks.backgrounds import read_imagenet9, superclass_targets, variant_metrics
from pipeline.benchmarks.catalog import BenchmarkError, BenchmarkImages
from pipeline.benchmarks.kinds import IN9_VARIANTS
from pipeline.benchmarks.protocols import benchmark_metrics, protocols_for
from pipeline.benchmarks.runner import run_benchmark, run_metrics
from pipeline.benchmarks.sources import ArrayItems, EvalSource
from pipeline.config.data import WorldConfig
from pipeline.config.evaluate import BenchmarkConfig
from pipeline.data.class_names import imagenet_classes
from pipeline.data.manifest import read_manifest, split_rows
from pipeline.data.world.backgrounds import render_scene, scene_classes
from pipeline.data.world.classes import CLASSES
from pipeline.data.world.splits import BACKGROUND_VARIANTS
from pipeline.reports.spurious import spurious_summary, write_spurious_plots
from tests.helpers.benchmark_files import IN9_FOLDERS, write_image, write_imagenet9
from tests.test_benchmark_runner import DEVICE, config, tiny_model

NINE_CLASS_MODEL = [folder.split("_", 1)[1] for folder in IN9_FOLDERS]  # "dog", ..., "fish"


# --- ImageNet-9: the mapping and the layout -------------------------------------------------------


def test_packaged_mapping_is_the_backgrounds_challenge_one() -> None:
    """Facts read off MadryLab's in_to_in9.json: 370 ImageNet classes in 9 super-classes, with gaps
    (171-172 are not dogs, 80-86 not birds) and the fish split over 0-6 and 389-397."""
    targets = superclass_targets()
    assert [len(t) for t in targets] == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert 171 not in targets[0] and 172 not in targets[0] and {151, 170, 173, 268} <= set(targets[0])
    assert not set(range(80, 87)) & set(targets[1]) and {7, 24, 87, 100, 127, 146} <= set(targets[1])
    assert {407, 511, 880} <= set(targets[2]) and {0, 6, 389, 397} <= set(targets[8])
    assert {384, 365} <= set(targets[7]) and 999 not in {i for t in targets for i in t}


def test_imagenet_model_gets_each_superclass_imagenet_classes(tmp_path: Path) -> None:
    write_imagenet9(tmp_path, IN9_VARIANTS)
    images = read_imagenet9(tmp_path, imagenet_classes())
    assert len(images.files) == 8 * 9  # fg_mask is not read
    assert set(images.metadata["variant"]) == set(IN9_VARIANTS)
    by_file = dict(zip(images.files, images.targets, strict=True))
    assert by_file["mixed_rand/val/08_fish/n0000_0.JPEG"] == superclass_targets()[8]
    # 1000-way argmax, then in_to_in9: 388 (a panda: carnivore) is right on carnivore, 171 (unmapped) never
    predictions = np.array([388 if "04_carnivore" in f else 171 for f in images.files])
    scores = benchmark_metrics(images, {"standard": predictions}, None)
    assert scores["accuracy"] == pytest.approx(1 / 9)
    assert scores["accuracy_mixed_same"] == pytest.approx(1 / 9) and scores["bg_gap"] == 0.0
    assert "1000-way argmax mapped to the 9 super-classes" in protocols_for(images)[0].description


def test_nine_class_model_is_matched_by_folder_name(tmp_path: Path) -> None:
    write_imagenet9(tmp_path, ("mixed_same", "mixed_rand"))
    shuffled = NINE_CLASS_MODEL[::-1]
    images = read_imagenet9(tmp_path, shuffled, ["mixed_same", "mixed_rand"])
    assert images.targets[0] == (shuffled.index("dog"),)
    assert "argmax over the model's 9 super-classes" in protocols_for(images)[0].description
    numbered = read_imagenet9(tmp_path, list(IN9_FOLDERS), ["mixed_same"])
    assert [t[0] for t in numbered.targets] == list(range(9))
    with pytest.raises(BenchmarkError, match="00_dog: class folder matches none of the model's 9 classes"):
        read_imagenet9(tmp_path, [f"class{k}" for k in range(9)], ["mixed_same"])


def test_bad_layouts_name_the_folder(tmp_path: Path) -> None:
    write_imagenet9(tmp_path, ("original", "mixed_same"))
    with pytest.raises(BenchmarkError, match=r"only_fg/val: ImageNet-9 variant 'only_fg' not found"):
        read_imagenet9(tmp_path, imagenet_classes())
    extra = tmp_path / "original" / "val" / "09_extra"
    write_image(extra / "a.JPEG")
    with pytest.raises(BenchmarkError, match=r"original/val: expected the 9 ImageNet-9 class folders .* found 10"):
        read_imagenet9(tmp_path, imagenet_classes(), ["original"])
    for path in extra.iterdir():
        path.unlink()
    extra.rmdir()
    (tmp_path / "mixed_same" / "val" / "05_insect" / "n0000_0.JPEG").unlink()
    with pytest.raises(BenchmarkError, match="05_insect: no images"):
        read_imagenet9(tmp_path, imagenet_classes(), ["mixed_same"])


def test_a_dataset_own_mapping_wins_and_is_checked(tmp_path: Path) -> None:
    write_imagenet9(tmp_path, ("original",))
    mapping = {str(i): -1 for i in range(1000)} | {str(k): k for k in range(9)}
    (tmp_path / "in_to_in9.json").write_text(json.dumps(mapping))
    images = read_imagenet9(tmp_path, imagenet_classes(), ["original"])
    assert images.targets[0] == (0,)
    mapping["5"] = 12
    (tmp_path / "in_to_in9.json").write_text(json.dumps(mapping))
    with pytest.raises(BenchmarkError, match=r"in_to_in9.json: super-classes must be -1..8, found \[12\]"):
        read_imagenet9(tmp_path, imagenet_classes(), ["original"])


def test_variants_config_is_for_imagenet9_only() -> None:
    assert BenchmarkConfig(kind="imagenet9", path="x", variants=["mixed_same", "mixed_rand"]).in_ood_mean() is False
    with pytest.raises(ValueError, match="`variants` is for kind imagenet9"):
        BenchmarkConfig(kind="imagefolder", path="x", variants=["original"])
    with pytest.raises(ValueError, match="each once"):
        BenchmarkConfig(kind="imagenet9", path="x", variants=["mixed_sam"])


# --- the metrics -------------------------------------------------------------------------------


def test_bg_gap_and_only_bg_by_hand() -> None:
    variants = ["mixed_same"] * 4 + ["mixed_rand"] * 4 + ["only_bg_t"] * 2 + ["only_bg_b"] * 2
    right = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1], dtype=bool)
    seen = np.array([True, True, False, False] * 3)
    groups = {"": np.ones(12, dtype=bool), "_seen": seen, "_unseen": ~seen}
    metrics = variant_metrics(variants, right, groups)
    assert metrics["accuracy_mixed_same"] == 0.75 and metrics["accuracy_mixed_rand"] == 0.25
    assert metrics["bg_gap"] == 0.5 and metrics["only_bg_accuracy"] == 0.5  # only_bg_t, not only_bg_b (1.0)
    # seen: mixed_same 1,1 / mixed_rand 1,0 -> .5; unseen: 1,0 / 0,0 -> .5
    assert metrics["bg_gap_seen"] == 0.5 and metrics["bg_gap_unseen"] == 0.5
    # only_bg_t images (8, 9) are both seen: right, wrong; no unseen one, and only_bg_b never stands in
    assert metrics["only_bg_accuracy_seen"] == 0.5 and "only_bg_accuracy_unseen" not in metrics
    assert "bg_gap" not in variant_metrics(["original", "mixed_same"], right[:2], {"": np.ones(2, dtype=bool)})


# --- the world's backgrounds split -------------------------------------------------------------


def test_a_scene_keeps_its_object_and_changes_only_the_background() -> None:
    config = WorldConfig()
    samples = render_scene(config, CLASSES, 4, 3, seed=0)
    by = {sample.variant: sample for sample in samples}
    assert [s.variant for s in samples] == list(BACKGROUND_VARIANTS)
    inside = by["original"].part_labels > 0
    # pixels well inside the object (all 3x3 neighbours object too) are the object alone: equal everywhere
    core = inside.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            core &= np.roll(inside, (dy, dx), axis=(0, 1))
    assert core.sum() > 20
    for name in ("only_fg", "mixed_same", "mixed_rand", "mixed_next"):
        np.testing.assert_array_equal(by[name].image[core], by["original"].image[core])
        np.testing.assert_array_equal(by[name].part_labels, by["original"].part_labels)
        assert by[name].cue_class == by["original"].cue_class
    far = ~inside
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            far &= ~np.roll(inside, (dy, dx), axis=(0, 1))
    assert by["only_fg"].image[far].max() <= 20  # black, plus the shared noise (sd 3.8 grey levels)
    assert by["no_fg"].image[core].max() <= 20
    np.testing.assert_array_equal(by["no_fg"].image[far], by["original"].image[far])
    np.testing.assert_array_equal(by["only_bg"].image[far], by["original"].image[far])
    for name in ("no_fg", "only_bg"):
        assert not by[name].part_labels.any() and by[name].cue_class == -1
    assert by["mixed_same"].background_class == 3 and by["mixed_next"].background_class == 4
    assert not np.array_equal(by["mixed_same"].image[far], by["original"].image[far])  # a new draw
    again = render_scene(config, CLASSES, 4, 3, seed=0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(samples, again, strict=True))


def test_scene_classes_are_balanced_and_shared_by_a_scene() -> None:
    assert len(scene_classes(0, 7 * 20 + 3, 10)) == 143  # a last scene cut short
    scenes = scene_classes(0, 7 * 20, 10).reshape(20, 7)
    assert (scenes == scenes[:, :1]).all()
    assert np.bincount(scenes[:, 0], minlength=10).tolist() == [2] * 10


def test_the_world_writes_the_split_with_its_variant_column(tiny_world: Path) -> None:
    rows = split_rows(read_manifest(tiny_world / "manifest.parquet"), "backgrounds")
    assert rows.column("variant").to_pylist() == list(BACKGROUND_VARIANTS) * 2
    assert len(set(rows.column("class_index").to_pylist()[:7])) == 1
    test_rows = split_rows(read_manifest(tiny_world / "manifest.parquet"), "test")
    assert set(test_rows.column("variant").to_pylist()) == {None}


# --- relevance leaves images without an object out ------------------------------------------------


def test_relevance_metrics_skip_images_without_an_object(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[::2, 4:12, 4:12] = True  # images 1, 3, 5 have no object
    info = BenchmarkImages("split", Path("."), [f"i{k}" for k in range(6)], [(k % 4,) for k in range(6)], None)
    with_empty = EvalSource("toy", "split", ArrayItems(images, masks), info, True, ["x"] * 6)
    objects = EvalSource("toy", "split", ArrayItems(images[::2], masks[::2]), info.take([0, 2, 4]), True, ["x"] * 3)
    model = tiny_model(0)
    first = run_metrics(
        with_empty, run_benchmark(with_empty, [model], None, config(), tmp_path / "a", "a" * 64, DEVICE, False), None
    )["m0"]
    second = run_metrics(
        objects, run_benchmark(objects, [model], None, config(), tmp_path / "b", "b" * 64, DEVICE, False), None
    )["m0"]
    assert first["images"] == 6 and second["images"] == 3
    for key in ("miou", "background_share", "pixel_accuracy"):
        if key in second:
            assert first[key] == pytest.approx(second[key]), key
    assert "background_share" in first and torch.isfinite(torch.tensor(first["miou"]))


# --- the report --------------------------------------------------------------------------------


def test_spurious_section_by_hand(tmp_path: Path) -> None:
    per_benchmark = {
        "test": {"benchmark": {"kind": "split"}, "models": {"base": {"background_share": 0.7}, "cft": {}}},
        "backgrounds": {
            "benchmark": {"kind": "split"},
            "models": {
                "base": {"bg_gap": 0.3, "only_bg_accuracy": 0.6, "bg_gap_seen": 0.2},
                "cft": {"bg_gap": -0.02, "only_bg_accuracy": 0.5},
            },
        },
        "imagenet9": {"benchmark": {"kind": "imagenet9"}, "models": {"base": {"bg_gap": 0.1}, "cft": {}}},
    }
    summary = spurious_summary(per_benchmark, "test")
    assert summary["base"] == pytest.approx(
        {"bg_gap": 0.2, "bg_gap_seen": 0.2, "only_bg_accuracy": 0.6, "foreground_share": 0.3}
    )
    assert summary["cft"] == {"bg_gap": -0.02, "only_bg_accuracy": 0.5}
    write_spurious_plots(summary, tmp_path)
    assert (tmp_path / "spurious.png").stat().st_size > 0
    assert (tmp_path / "spurious.csv").read_text().splitlines()[0].startswith("model,")
    write_spurious_plots({"base": {"foreground_share": 0.3}}, tmp_path / "none")
    assert not (tmp_path / "none").exists()
