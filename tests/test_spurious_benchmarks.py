"""Waterbirds and Hard ImageNet: their layouts, class protocols, group and ablation metrics checked
against hand-computed values, bad layouts named, and an evaluation through the runner."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks.catalog import BenchmarkError, read_benchmark
from pipeline.benchmarks.hard_imagenet import ablate, ablation_metrics, hard_imagenet_wnids
from pipeline.benchmarks.protocols import benchmark_metrics, protocols_for
from pipeline.benchmarks.runner import run_benchmark, run_metrics
from pipeline.benchmarks.sources import open_source
from pipeline.benchmarks.waterbirds import group_metrics
from pipeline.config.evaluate import BenchmarkConfig
from pipeline.data.preprocess import InputTransform
from pipeline.data.waterbirds import GROUPS, WaterbirdsError
from tests.helpers.benchmark_files import write_hard_imagenet, write_waterbirds
from tests.helpers.project import finetune_outputs, invoke_cft
from tests.test_benchmark_runner import DEVICE, config, tiny_model

# (file, y, split, place): train 6 landbird_land, 1 landbird_water, 1 waterbird_land, 4 waterbird_water;
# test two of each group
WATERBIRDS = (
    [(f"010.Sparrow/train_ll{i}.jpg", 0, 0, 0) for i in range(6)]
    + [("010.Sparrow/train_lw.jpg", 0, 0, 1), ("001.Albatross/train_wl.jpg", 1, 0, 0)]
    + [(f"001.Albatross/train_ww{i}.jpg", 1, 0, 1) for i in range(4)]
    + [("010.Sparrow/val_ll.jpg", 0, 1, 0), ("001.Albatross/val_ww.jpg", 1, 1, 1)]
    + [(f"010.Sparrow/test_ll{i}.jpg", 0, 2, 0) for i in range(2)]
    + [(f"010.Sparrow/test_lw{i}.jpg", 0, 2, 1) for i in range(2)]
    + [(f"001.Albatross/test_wl{i}.jpg", 1, 2, 0) for i in range(2)]
    + [(f"001.Albatross/test_ww{i}.jpg", 1, 2, 1) for i in range(2)]
)
MODEL_CLASSES = ["waterbird", "landbird"]  # the model's order need not be y's


def test_waterbirds_split_groups_and_train_weights(tmp_path: Path) -> None:
    write_waterbirds(tmp_path, WATERBIRDS)
    images = read_benchmark("waterbirds", tmp_path, MODEL_CLASSES)
    assert len(images.files) == 8 and all("test_" in name for name in images.files)
    by_file = dict(zip(images.files, zip(images.targets, images.metadata["group"], strict=True), strict=True))
    assert by_file["010.Sparrow/test_lw0.jpg"] == ((1,), "landbird_water")
    assert by_file["001.Albatross/test_wl1.jpg"] == ((0,), "waterbird_land")
    assert images.group_weights == pytest.approx(
        {"landbird_land": 6 / 12, "landbird_water": 1 / 12, "waterbird_land": 1 / 12, "waterbird_water": 4 / 12}
    )
    assert len(read_benchmark("waterbirds", tmp_path, MODEL_CLASSES, split="val").files) == 2
    assert "worst-group accuracy" in protocols_for(images)[0].description


def test_worst_group_and_weighted_accuracy_by_hand(tmp_path: Path) -> None:
    write_waterbirds(tmp_path, WATERBIRDS)
    images = read_benchmark("waterbirds", tmp_path, MODEL_CLASSES)
    # right: landbird_land 2/2, landbird_water 1/2, waterbird_land 0/2, waterbird_water 1/2
    right_of = {"test_ll0": 1, "test_ll1": 1, "test_lw0": 1, "test_lw1": 0, "test_wl0": 0, "test_wl1": 0}
    right_of |= {"test_ww0": 1, "test_ww1": 0}
    predictions = np.array(
        [t[0] if right_of[Path(f).stem] else 1 - t[0] for f, t in zip(images.files, images.targets, strict=True)]
    )
    scores = benchmark_metrics(images, {"standard": predictions}, None)
    assert scores["accuracy_landbird_water"] == 0.5 and scores["worst_group_accuracy"] == 0.0
    assert scores["weighted_accuracy"] == pytest.approx((6 * 1 + 1 * 0.5 + 1 * 0 + 4 * 0.5) / 12, abs=1e-6)
    assert scores["accuracy"] == pytest.approx(4 / 8)
    # a weighted group without test images: no weighted accuracy rather than a wrong one
    partial = group_metrics(["landbird_land"], np.array([True]), {"landbird_land": 0.5, "waterbird_water": 0.5})
    assert partial == {"accuracy_landbird_land": 1.0, "worst_group_accuracy": 1.0}
    assert GROUPS == ("landbird_land", "landbird_water", "waterbird_land", "waterbird_water")


def test_waterbirds_bad_layouts_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(WaterbirdsError, match=r"metadata.csv: not found"):
        read_benchmark("waterbirds", tmp_path, MODEL_CLASSES)
    write_waterbirds(tmp_path, WATERBIRDS)
    (tmp_path / "001.Albatross/test_ww1.jpg").unlink()
    with pytest.raises(WaterbirdsError, match=r"metadata.csv: 1 listed image\(s\) of split test not found .*test_ww1"):
        read_benchmark("waterbirds", tmp_path, MODEL_CLASSES)
    with pytest.raises(BenchmarkError, match="classes include 'landbird' and 'waterbird'"):
        read_benchmark("waterbirds", tmp_path, ["cat", "dog"], split="val")
    metadata = tmp_path / "metadata.csv"
    metadata.write_text(metadata.read_text().replace(",0,2,1,", ",0,7,1,", 1))
    with pytest.raises(WaterbirdsError, match=r"metadata.csv: line \d+: .* split='7'"):
        read_benchmark("waterbirds", tmp_path, MODEL_CLASSES, split="val")
    metadata.write_text("img_id,img_filename,y\n1,a.jpg,0\n")
    with pytest.raises(WaterbirdsError, match=r"expected the columns .* missing \['split', 'place'\]"):
        read_benchmark("waterbirds", tmp_path, MODEL_CLASSES)
    with pytest.raises(ValueError, match="split 'dev' is not one of"):
        BenchmarkConfig(kind="waterbirds", path="x", split="dev")


# --- Hard ImageNet -----------------------------------------------------------------------------

WNIDS = {3: "n00000003", 1: "n00000001"}  # two of the classes, in meta order
CLASS_NAMES = ["n00000000", "n00000001", "n00000002", "n00000003"]


def test_hard_imagenet_lists_each_image_under_each_ablation(tmp_path: Path) -> None:
    write_hard_imagenet(tmp_path / "hard", tmp_path / "imagenet", WNIDS, "val")
    assert hard_imagenet_wnids(tmp_path / "hard") == ["n00000003", "n00000001"]
    images = read_benchmark(
        "hard_imagenet", tmp_path / "hard", CLASS_NAMES, imagenet=tmp_path / "imagenet", ablations=["gray", "blur"]
    )
    assert images.metadata["ablation"] == ["none"] * 4 + ["gray"] * 4 + ["blur"] * 4
    assert images.files[:4] == images.files[4:8] and images.files[0] == "val/n00000001/n00000001_0.JPEG"
    assert images.targets[0] == (1,) and images.targets[3] == (3,)
    with pytest.raises(BenchmarkError, match=r"do not include Hard ImageNet's \['n00000003'\]"):
        read_benchmark("hard_imagenet", tmp_path / "hard", CLASS_NAMES[:3], imagenet=tmp_path / "imagenet")
    (tmp_path / "imagenet/val/n00000003/n00000003_1.JPEG").unlink()
    with pytest.raises(BenchmarkError, match=r"n00000003_n00000003_1.JPEG: its image .* is not found"):
        read_benchmark("hard_imagenet", tmp_path / "hard", CLASS_NAMES, imagenet=tmp_path / "imagenet")


def test_hard_imagenet_meta_files_hold_plain_data_only(tmp_path: Path) -> None:
    write_hard_imagenet(tmp_path / "hard", tmp_path / "imagenet", WNIDS, "val")
    (tmp_path / "hard/meta/idx_to_wnid.pkl").write_bytes(pickle.dumps(OrderedDict(WNIDS)))
    with pytest.raises(BenchmarkError, match=r"idx_to_wnid.pkl: unreadable .*refusing collections.OrderedDict"):
        hard_imagenet_wnids(tmp_path / "hard")
    (tmp_path / "hard/meta/idx_to_wnid.pkl").unlink()
    with pytest.raises(BenchmarkError, match=r"idx_to_wnid.pkl: not found"):
        hard_imagenet_wnids(tmp_path / "hard")
    with pytest.raises(ValueError, match="needs `imagenet`"):
        BenchmarkConfig(kind="hard_imagenet", path="x")
    with pytest.raises(ValueError, match="each once, of"):
        BenchmarkConfig(kind="hard_imagenet", path="x", imagenet="y", ablations=["tile"])


def test_ablations_take_only_the_object_away() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:14, 10:20] = True
    mask[20, 5] = True  # a second, tiny piece: the bounding box spans both
    gray = ablate(image, mask, "gray")
    assert (gray[mask] == 128).all() and np.array_equal(gray[~mask], image[~mask])
    box = ablate(image, mask, "gray_bbox")
    assert (box[8:21, 5:20] == 128).all() and np.array_equal(box[21:], image[21:])
    blur = ablate(image, mask, "blur")
    assert np.array_equal(blur[~mask], image[~mask]) and not np.array_equal(blur[mask], image[mask])
    assert blur[mask].std() < image[mask].std()  # detail gone
    assert ablate(image, mask, "none") is image
    with pytest.raises(ValueError, match="unknown ablation 'tile'"):
        ablate(image, mask, "tile")


def test_ablation_metrics_by_hand() -> None:
    ablations = ["none"] * 4 + ["gray"] * 4 + ["blur"] * 4
    right = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    metrics = ablation_metrics(ablations, right)
    assert metrics == {"accuracy_none": 0.75, "accuracy_gray": 0.25, "accuracy_blur": 0.5, "ablation_drop": 0.375}


def test_hard_imagenet_through_the_runner(tmp_path: Path) -> None:
    """Every image under every ablation; relevance only on the images as they are (the ablated ones
    carry no mask), so the mask metrics equal those of a run without ablations."""
    write_hard_imagenet(tmp_path / "hard", tmp_path / "imagenet", WNIDS, "val", per_class=3)
    transform = InputTransform(16, "bilinear", 1.0)
    model = tiny_model(0)

    def run(ablations: list[str] | None, work: str) -> dict[str, float]:
        settings = {"kind": "hard_imagenet", "path": str(tmp_path / "hard"), "imagenet": str(tmp_path / "imagenet")}
        benchmark = BenchmarkConfig(**settings, **({"ablations": ablations} if ablations else {}))
        source = open_source("hard", benchmark, CLASS_NAMES, transform, Path("unused"), None, relevance=True)
        result = run_benchmark(source, [model], None, config(), tmp_path / work, work * 64, DEVICE, False)
        return run_metrics(source, result, None)["m0"]

    everything = run(None, "a")
    assert everything["images"] == 6 * 4
    assert {"accuracy_none", "accuracy_gray", "accuracy_gray_bbox", "accuracy_blur", "ablation_drop"} <= set(everything)
    assert everything["ablation_drop"] == pytest.approx(
        everything["accuracy_none"] - np.mean([everything[f"accuracy_{a}"] for a in ("gray", "gray_bbox", "blur")]),
        abs=1e-6,
    )
    alone = run(["gray"], "b")
    assert alone["accuracy_none"] == everything["accuracy_none"]
    for key in ("miou", "background_share"):
        assert everything[key] == pytest.approx(alone[key]), key
    assert torch.isfinite(torch.tensor(everything["miou"]))


# --- the whole method on Waterbirds (data.source: waterbirds) ------------------------------------


def test_the_method_runs_on_waterbirds(tmp_path: Path) -> None:
    """prepare from the train and val splits, base (a 2-class checkpoint), fine-tuning (CFT on given
    concept masks, plain), evaluation on the test split and the report's worst-group accuracy."""
    import json

    import timm
    import yaml
    from safetensors.torch import save_file

    from pipeline.data.manifest import classes_of, read_manifest, split_rows
    from pipeline.masks.store import ImageMasks, write_mask_store

    write_waterbirds(tmp_path / "wb", WATERBIRDS)
    small = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, **small)
    save_file(model.state_dict(), str(tmp_path / "birds.safetensors"))
    train = {"epochs": 1, "batch_size": 2, "overlay_images": 1, "eval_batch_size": 8, "device": "cpu"}
    params = {
        "data": {
            "source": "waterbirds",
            "waterbirds": {"root": "wb", "min_side": 1},
            "subset": {"images_per_class": 2, "val_images_per_class": 1},
        },
        "base": {
            "model": "vit_tiny_patch16_224",
            "model_kwargs": small,
            "pretrained": True,
            "checkpoint": str(tmp_path / "birds.safetensors"),
            "phases": [],
            "device": "cpu",
            "allow_chance": True,
        },
        "finetune": {
            "methods": ["cft", "plain"],
            "train": {**train, "allow_chance": True},
            "cft": {"objective": "relevance"},
            "plain": {"objective": "labels"},
        },
        "evaluate": {
            "benchmarks": {"waterbirds": {"kind": "waterbirds", "path": "wb"}},
            "in_distribution": None,
            "workers": 0,
            "device": "cpu",
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    invoke_cft(tmp_path, "prepare")
    manifest = read_manifest(tmp_path / "data/prepared/manifest.parquet")
    assert classes_of(manifest) == ["landbird", "waterbird"]
    rows = split_rows(manifest, "train")
    assert rows.num_rows == 2 and all("/train_" in name for name in rows.column("image_id").to_pylist())
    assert len(set(rows.column("class_name").to_pylist())) == 1  # one of the two classes is seen
    val = split_rows(manifest, "val")
    assert sorted(val.column("group").to_pylist()) == ["landbird_land", "waterbird_water"]
    assert all("/val_" in name for name in val.column("image_id").to_pylist())
    invoke_cft(tmp_path, "base")
    results = [
        ImageMasks(image_id, name, ["beak"], np.pad(np.ones((1, 4, 4), dtype=bool), ((0, 0), (2, 2), (2, 2))), [False])
        for image_id, name in zip(
            rows.column("image_id").to_pylist(), rows.column("class_name").to_pylist(), strict=True
        )
    ]
    write_mask_store(tmp_path / "data/masks", results, (8, 8), "test")
    for method in ("cft", "plain"):
        invoke_cft(tmp_path, "finetune", method, *finetune_outputs(method), "--masks", "data/masks")
    invoke_cft(tmp_path, "evaluate", "waterbirds", "base", "cft", "plain")
    scores = json.loads((tmp_path / "results/evaluate/waterbirds/cft/scores.json").read_text())["scores"]
    assert scores["images"] == 8 and {"worst_group_accuracy", "weighted_accuracy", "accuracy_waterbird_land"} <= set(
        scores
    )
    invoke_cft(tmp_path, "report")
    compact = json.loads((tmp_path / "metrics/cft.json").read_text())
    assert compact["wg_acc"] == round(scores["worst_group_accuracy"], 4) and "ood_acc" not in compact  # reported apart
    assert (tmp_path / "plots/summary/spurious.png").stat().st_size > 0
