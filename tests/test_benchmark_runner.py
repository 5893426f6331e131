"""The benchmark runner: parts saved and resumed, torn parts recomputed, unreadable files counted,
relevance scores on the segmentation benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import pipeline.benchmarks.runner as runner_module
from pipeline.benchmarks.catalog import BenchmarkImages
from pipeline.benchmarks.runner import ModelUnderTest, run_benchmark, run_metrics
from pipeline.benchmarks.segmentation import SegmentationScores, write_segmentation_file
from pipeline.benchmarks.sources import ArrayItems, EvalSource, FileItems, open_source
from pipeline.config.evaluate import BenchmarkConfig, EvaluateConfig
from pipeline.data.preprocess import InputTransform
from pipeline.relevance.attnlrp import attnlrp
from pipeline.utils.device import Normalizer

DEVICE = torch.device("cpu")


def tiny_model(seed: int = 0) -> ModelUnderTest:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=4,
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=1,
        num_heads=2,
    ).eval()
    return ModelUnderTest(f"m{seed}", model, Normalizer([0.5] * 3, [0.5] * 3))


def config(**overrides: object) -> EvaluateConfig:
    return EvaluateConfig(
        **{
            "benchmarks": {},
            "in_distribution": None,
            "batch_size": 4,
            "workers": 0,
            "part_size": 5,
            "relevance_images": None,
            **overrides,
        }
    )


def array_source(count: int = 12) -> EvalSource:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (count, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((count, 16, 16), dtype=bool)
    masks[:, 4:12, 4:12] = True
    labels = [(i % 4,) for i in range(count)]
    info = BenchmarkImages("split", Path("."), [f"img{i}" for i in range(count)], labels, None)
    return EvalSource("toy", "split", ArrayItems(images, masks), info, True, [str(t[0]) for t in labels])


def test_parts_are_saved_and_a_rerun_reuses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, models = array_source(), [tiny_model(0), tiny_model(1)]
    first = run_benchmark(source, models, {0, 1}, config(), tmp_path, "f" * 64, DEVICE, progress=False)
    assert len(list(tmp_path.glob("part-*.npz"))) == 3  # 12 images, parts of 5
    calls: list[int] = []
    original = runner_module._run_part
    monkeypatch.setattr(
        runner_module, "_run_part", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    )
    (sorted(tmp_path.glob("part-*.npz"))[1]).write_bytes(b"torn")  # an interrupted write
    second = run_benchmark(source, models, {0, 1}, config(), tmp_path, "f" * 64, DEVICE, progress=False)
    assert len(calls) == 1  # only the torn part was recomputed
    assert "evaluate/toy/m0+m1: resuming after 5 images" in capsys.readouterr().out
    run_benchmark(source, models, {0, 1}, config(), tmp_path, "f" * 64, DEVICE, progress=False)
    assert "evaluate/toy/m0+m1: all 12 images already scored" in capsys.readouterr().out
    for model in ("m0", "m1"):
        np.testing.assert_array_equal(first.predictions[model]["standard"], second.predictions[model]["standard"])
    assert run_metrics(source, first, {0, 1}) == run_metrics(source, second, {0, 1})


def test_cue_share_is_the_relevance_on_the_cue_across_parts(tmp_path: Path) -> None:
    """cue_share: mean share of each map's positive relevance on its image's cue (images with a cue
    only, over every part, resumed or not); cue_area: the cue's mean share of those images."""
    source = array_source()
    cues = np.zeros((12, 16, 16), dtype=bool)
    cues[::2, 4:8, 4:8] = True  # every other image carries a 4×4 cue
    source.dataset = ArrayItems(source.dataset.images, source.dataset.masks, cues)  # type: ignore[attr-defined]
    model = tiny_model(0)
    run = run_benchmark(source, [model], None, config(), tmp_path, "e" * 64, DEVICE, progress=False)
    metrics = run_metrics(source, run, None)["m0"]
    x = model.normalizer(torch.from_numpy(source.dataset.images[::2]))  # type: ignore[attr-defined]
    with torch.no_grad():
        predicted = model.model(x).argmax(dim=1)
    maps = attnlrp(model.model, x, predicted).upsampled().detach().clamp(min=0).numpy()
    expected = [(m * c).sum() / m.sum() for m, c in zip(maps, cues[::2], strict=True)]
    assert metrics["cue_share"] == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert metrics["cue_area"] == pytest.approx(16 / 256)
    again = run_metrics(
        source, run_benchmark(source, [model], None, config(), tmp_path, "e" * 64, DEVICE, progress=False), None
    )["m0"]
    assert again == metrics


def test_parts_of_another_run_are_dropped(tmp_path: Path) -> None:
    source, models = array_source(), [tiny_model(0)]
    run_benchmark(source, models, None, config(), tmp_path, "a" * 64, DEVICE, progress=False)
    run_benchmark(source, models, None, config(), tmp_path, "b" * 64, DEVICE, progress=False)
    assert {p.name.split("-")[1] for p in tmp_path.glob("part-*.npz")} == {"b" * 16}


def test_metrics_split_seen_and_unseen_and_relevance_groups(tmp_path: Path) -> None:
    source, models = array_source(), [tiny_model(0)]
    run = run_benchmark(source, models, {0, 1}, config(), tmp_path, "c" * 64, DEVICE, progress=False)
    metrics = run_metrics(source, run, {0, 1})["m0"]
    labels = np.array([t[0] for t in source.images.targets])  # type: ignore[union-attr]
    right = run.predictions["m0"]["standard"] == labels
    assert metrics["accuracy"] == pytest.approx(right.mean(), abs=1e-6)
    assert metrics["accuracy_seen"] == pytest.approx(right[labels < 2].mean(), abs=1e-6)
    assert {"miou", "miou_seen", "miou_unseen", "pixel_accuracy", "ap", "background_share"} <= set(metrics)


def test_unreadable_files_are_counted_not_fatal(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 24, 3), 120, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "c.png").write_bytes(b"not a png")
    info = BenchmarkImages("imagefolder", tmp_path, ["a.png", "b.png", "c.png"], [(0,), (1,), (2,)], None)
    source = EvalSource(
        "files",
        "imagefolder",
        FileItems(tmp_path, info.files, InputTransform(16, "bilinear", 0.875)),
        info,
        False,
        ["0", "1", "2"],
    )
    run = run_benchmark(source, [tiny_model(0)], None, config(), tmp_path / "work", "d" * 64, DEVICE, progress=False)
    assert run.readable.tolist() == [True, True, False]
    metrics = run_metrics(source, run, None)["m0"]
    assert metrics["images"] == 2 and metrics["unreadable"] == 1


def test_segmentation_benchmark_scores_relevance_of_every_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20 + i, 18, 3), dtype=np.uint8) for i in range(3)]
    masks = [np.zeros((20 + i, 18), dtype=np.uint8) for i in range(3)]
    for mask in masks:
        mask[5:15, 4:14] = 1
    write_segmentation_file(tmp_path / "gtsegs.mat", images, masks)
    source = open_source(
        "seg",
        BenchmarkConfig(kind="imagenet_segmentation", path=str(tmp_path / "gtsegs.mat")),
        [],
        InputTransform(16),
        tmp_path,
        None,
        True,
    )
    entry = tiny_model(0)
    run = run_benchmark(source, [entry], None, config(workers=2), tmp_path / "work", "e" * 64, DEVICE, progress=False)
    metrics = run_metrics(source, run, None)["m0"]
    assert metrics["images"] == 3
    assert "accuracy" not in metrics  # the segmentation set has no class labels

    # By hand: the predicted class's patch relevance, upsampled bilinearly as in Chefer et al.'s code.
    items = [source.dataset[i] for i in range(3)]
    x = entry.normalizer(torch.from_numpy(np.stack([item["image"] for item in items])))
    target = entry.model(x).argmax(dim=1)
    relevance = attnlrp(entry.model, x, target)
    bilinear = F.interpolate(relevance.tokens[:, None], scale_factor=4, mode="bilinear")[:, 0]
    object_masks = np.stack([item["mask"] for item in items])
    expected, cells = SegmentationScores(), SegmentationScores()
    expected.add(bilinear.detach().numpy(), object_masks)
    cells.add(relevance.upsampled().detach().numpy(), object_masks)
    for key, value in expected.metrics().items():
        assert metrics[key] == pytest.approx(value, abs=2e-6), key
    assert cells.metrics() != expected.metrics()  # the test tells the two upsamplings apart
