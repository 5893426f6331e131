"""The real-data route end to end through the CLI: an ImageNet-style folder, a pretrained timm model
from a local checkpoint (random weights, small config), fine-tuning on image files with concept
masks, and evaluation on fake benchmarks in their real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from pipeline.benchmarks.catalog import imagenet_subset
from pipeline.benchmarks.kinds import IN9_VARIANTS
from pipeline.data.class_names import imagenet_classes
from pipeline.data.preprocess import InputTransform
from pipeline.masks.store import ImageMasks, write_mask_store
from pipeline.models.factory import load_model_artifact
from pipeline.utils.device import Normalizer
from tests.helpers.benchmark_files import (
    AMBULANCE,
    IN9_FOLDERS,
    KOALA,
    write_hard_imagenet,
    write_imagenet9,
    write_objectnet,
    write_si_score,
)
from tests.helpers.project import finetune_outputs, invoke_cft

MODEL = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


def photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (height // 4, width // 4, 3), dtype=np.uint8)).resize((width, height))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for wnid in imagenet_classes():  # all 1000 classes, so the model is an ImageNet-1k classifier
        folder = root / "imagenet/train" / wnid
        folder.mkdir(parents=True)
        for index in range(2):
            photo(rng, 40 + 8 * index, 48).save(folder / f"{wnid}_{index}.JPEG", quality=80)
    torch.manual_seed(0)
    checkpoint = root / "vit_tiny_in1k.safetensors"
    save_file(timm.create_model(MODEL, pretrained=False, num_classes=1000, **SMALL).state_dict(), str(checkpoint))
    a_wnids, _ = imagenet_subset("imagenet_a")
    for wnid in a_wnids[:3]:
        for index in range(2):
            folder = root / "imagenet-a" / wnid
            folder.mkdir(parents=True, exist_ok=True)
            photo(rng, 36, 44).save(folder / f"{index}.jpg")
    write_objectnet(root / "objectnet-1.0")
    write_si_score(root / "si-score")
    write_imagenet9(root / "bg_challenge", IN9_VARIANTS)
    wnids = {index: imagenet_classes()[index] for index in (AMBULANCE, KOALA)}
    write_hard_imagenet(root / "hard_imagenet", root / "imagenet", wnids, "train")  # masks of the train images
    params = {
        "data": {
            "source": "imagefolder",
            "imagefolder": {"root": "imagenet/train"},
            "subset": {"seen_fraction": 0.005, "images_per_class": 1, "val_images_per_class": 1},
        },
        "base": {
            "model": MODEL,
            "model_kwargs": SMALL,
            "pretrained": True,
            "checkpoint": str(checkpoint),
            "phases": [],
            "device": "cpu",
        },
        "finetune": {
            "methods": ["cft", "plain"],
            "train": {
                "epochs": 1,
                "batch_size": 4,
                "overlay_images": 2,
                "eval_batch_size": 64,
                "device": "cpu",
                "allow_chance": True,
            },  # random weights: at chance by design
            "cft": {"objective": "relevance"},
            "plain": {"objective": "labels"},
        },
        "evaluate": {
            "benchmarks": {
                "imagenet_a": {"kind": "imagenet_a", "path": "imagenet-a"},
                "objectnet": {"kind": "objectnet", "path": "objectnet-1.0"},
                "si_score": {"kind": "si_score", "path": "si-score"},
                "imagenet9": {"kind": "imagenet9", "path": "bg_challenge"},
                "hard_imagenet": {
                    "kind": "hard_imagenet",
                    "path": "hard_imagenet",
                    "imagenet": "imagenet",
                    "split": "train",
                },
            },
            "in_distribution": None,
            "batch_size": 4,
            "workers": 0,
            "device": "cpu",
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture(scope="module")
def prepared(project: Path) -> Path:
    invoke_cft(project, "prepare")
    invoke_cft(project, "base")
    return project


def test_base_takes_its_preprocessing_from_the_pretrained_cfg_and_the_checkpoint(prepared: Path) -> None:
    model, spec = load_model_artifact(prepared / "models/base")
    assert spec["preprocessing"]["input_size"] == [3, 32, 32]  # the model as built (img_size 32), not the cfg's 224
    assert spec["preprocessing"]["interpolation"] == "bicubic" and spec["preprocessing"]["crop_pct"] == 0.9
    assert spec["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert spec["class_names"] == imagenet_classes()
    torch.manual_seed(0)
    reference = timm.create_model(MODEL, pretrained=False, num_classes=1000, **SMALL).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)


def test_finetune_reads_image_files_and_aligns_concept_masks(prepared: Path) -> None:
    from pipeline.data.manifest import read_manifest, split_rows

    rows = split_rows(read_manifest(prepared / "data/prepared/manifest.parquet"), "train")
    results = []
    for image_id, class_name in zip(
        rows.column("image_id").to_pylist(), rows.column("class_name").to_pylist(), strict=True
    ):
        masks = np.zeros((2, 16, 16), dtype=bool)
        masks[0, 4:12, 4:12] = True  # a centred square, stretched to the store's square resolution
        masks[1, 6:10, 2:14] = True
        results.append(ImageMasks(image_id, class_name, ["head", "wings"], masks, missing=[False, False]))
    write_mask_store(prepared / "data/masks", results, (16, 16), "test")
    for method in ("cft", "plain"):
        invoke_cft(prepared, "finetune", method, *finetune_outputs(method), "--masks", "data/masks")
    _, spec = load_model_artifact(prepared / "models/cft")
    assert spec["finetune"]["method"] == "cft" and len(spec["finetune"]["seen_classes"]) == 5
    assert (prepared / "plots/finetune/cft/relevance.png").stat().st_size > 0


@pytest.mark.parametrize("benchmark", ["imagenet_a", "objectnet", "si_score", "imagenet9", "hard_imagenet"])
def test_evaluate_each_benchmark(prepared: Path, benchmark: str) -> None:
    if not (prepared / "models/plain").exists():
        pytest.skip("needs the fine-tuned models of the previous test")
    output = invoke_cft(prepared, "evaluate", benchmark, "base", "cft", "plain")
    assert f"{benchmark} / cft: accuracy" in output
    saved = {
        model: json.loads((prepared / f"results/evaluate/{benchmark}/{model}/scores.json").read_text())
        for model in ("base", "cft", "plain")
    }
    info, base = saved["base"]["benchmark"], saved["base"]["scores"]
    table = pq.read_table(prepared / f"results/evaluate/{benchmark}/base/predictions.parquet")
    assert table.num_rows == info["images"]
    if benchmark == "imagenet_a":
        assert base["images"] == 6
        assert "reference_accuracy" in base and "standard" in info["protocols"]
    if benchmark == "objectnet":
        assert info["skipped"]  # the squeegee folder is not one of the 113 classes
    if benchmark == "si_score":
        assert {"accuracy_size", "accuracy_rotation", "accuracy_location"} <= set(base)
        assert (prepared / "results/evaluate/si_score/cft/factors.csv").stat().st_size > 0
    if benchmark == "imagenet9":
        assert base["images"] == 8 * 9 and "in_to_in9.json" in info["protocols"]["standard"]
        assert {"bg_gap", "only_bg_accuracy", "accuracy_only_bg_b", "accuracy_mixed_next"} <= set(base)
    if benchmark == "hard_imagenet":
        assert base["images"] == 2 * 2 * 4  # 2 classes x 2 images, as they are and under 3 ablations
        assert {"accuracy_none", "accuracy_blur", "ablation_drop", "miou", "background_share"} <= set(base)
        assert (prepared / "results/evaluate/hard_imagenet/base/overlay.npz").is_file()


def test_imagenet9_predictions_follow_the_backgrounds_challenge(prepared: Path) -> None:
    """By hand, as in9_eval.py does for an ImageNet model: the image at its size (resized, not
    cropped), 1000-way argmax, in_to_in9.json to a super-class; accuracy per variant and BG-gap."""
    if not (prepared / "results/evaluate/imagenet9").exists():
        pytest.skip("needs the ImageNet-9 evaluation of the previous test")
    from pipeline.benchmarks.catalog import packaged_data, read_benchmark, read_json_mapping
    from pipeline.data.datasets import decode_image

    model, spec = load_model_artifact(prepared / "models/base")
    model.eval()
    images = read_benchmark("imagenet9", prepared / "bg_challenge", imagenet_classes())
    transform = InputTransform.from_preprocessing({**spec["preprocessing"], "crop_pct": 1.0})
    normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"])
    batch = torch.from_numpy(np.stack([transform.image(decode_image(images.root / name)) for name in images.files]))
    with torch.no_grad():
        predicted = model(normalizer(batch)).argmax(dim=1).numpy()
    table = pq.read_table(prepared / "results/evaluate/imagenet9/base/predictions.parquet")
    np.testing.assert_array_equal(table.column("standard").to_numpy(), predicted)
    to_in9 = read_json_mapping(packaged_data("in_to_in9.json"), "mapping", int)
    superclass = np.array([IN9_FOLDERS.index(name.split("/")[2]) for name in images.files])
    right = np.array([to_in9[str(p)] for p in predicted]) == superclass
    variant = np.array([name.split("/")[0] for name in images.files])
    scores = json.loads((prepared / "results/evaluate/imagenet9/base/scores.json").read_text())["scores"]
    for name in IN9_VARIANTS:
        assert scores[f"accuracy_{name}"] == pytest.approx(right[variant == name].mean())
    assert scores["bg_gap"] == pytest.approx(
        right[variant == "mixed_same"].mean() - right[variant == "mixed_rand"].mean()
    )


def test_objectnet_predictions_follow_the_protocol(prepared: Path) -> None:
    """Recompute the base model's ObjectNet predictions by hand: 2-px border, the model's transform,
    argmax over the mapped classes (standard) and over all 1000 (reference)."""
    if not (prepared / "results/evaluate/objectnet").exists():
        pytest.skip("needs the ObjectNet evaluation of the previous test")
    from pipeline.benchmarks.catalog import read_benchmark
    from pipeline.data.datasets import decode_image

    model, spec = load_model_artifact(prepared / "models/base")
    model.eval()
    images = read_benchmark("objectnet", prepared / "objectnet-1.0", imagenet_classes())
    transform = InputTransform.from_preprocessing(spec["preprocessing"], border=2)
    normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"])
    batch = torch.from_numpy(np.stack([transform.image(decode_image(images.root / name)) for name in images.files]))
    with torch.no_grad():
        logits = model(normalizer(batch))
    assert images.classes is not None
    allowed = torch.tensor(images.classes)
    standard = allowed[logits[:, allowed].argmax(dim=1)].numpy()
    table = pq.read_table(prepared / "results/evaluate/objectnet/base/predictions.parquet")
    np.testing.assert_array_equal(table.column("standard").to_numpy(), standard)
    np.testing.assert_array_equal(table.column("reference").to_numpy(), logits.argmax(dim=1).numpy())


def test_report_puts_the_benchmarks_side_by_side(prepared: Path) -> None:
    if not (prepared / "results/evaluate/si_score/plain").exists():
        pytest.skip("needs the evaluations of the previous tests")
    invoke_cft(prepared, "report")
    accuracies = [
        json.loads((prepared / f"results/evaluate/{name}/cft/scores.json").read_text())["scores"]["accuracy"]
        for name in ("imagenet_a", "objectnet", "si_score")
    ]
    compact = json.loads((prepared / "metrics/cft.json").read_text())
    assert compact["ood_acc"] == pytest.approx(
        np.mean(accuracies), abs=1e-4
    )  # in_distribution: null, so all three are OOD
    assert (prepared / "plots/summary/accuracy.png").stat().st_size > 0
    assert (prepared / "plots/summary/factors_si_score.png").stat().st_size > 0
    # ImageNet-9 is reported apart from the OOD mean (above), in the spurious-reliance section
    imagenet9 = json.loads((prepared / "results/evaluate/imagenet9/cft/scores.json").read_text())["scores"]
    assert compact["bg_gap"] == pytest.approx(imagenet9["bg_gap"], abs=1e-4)
    assert (prepared / "plots/summary/spurious.png").stat().st_size > 0
    hard = json.loads((prepared / "results/evaluate/hard_imagenet/cft/scores.json").read_text())["scores"]
    spurious = (prepared / "plots/summary/spurious.csv").read_text().splitlines()
    header, cft_row = spurious[0].split(","), next(line for line in spurious if line.startswith("cft,")).split(",")
    row = dict(zip(header, cft_row, strict=True))
    assert float(row["foreground_share"]) == pytest.approx(1 - hard["background_share"], abs=1e-6)
    assert float(row["ablation_drop"]) == pytest.approx(hard["ablation_drop"], abs=1e-6)


def test_masks_of_images_of_several_sizes_need_a_resolution_before_models_load(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grounded-SAM stores masks at the images' size unless masks.resolution is set: mixed sizes
    are refused up front, naming a file, instead of after the models loaded and segmented."""
    import pipeline.masks.grounded
    from pipeline.concepts.store import write_concepts
    from pipeline.config.masks import MasksConfig
    from pipeline.data.manifest import read_manifest
    from pipeline.data.subset import SUBSET_NAME, read_subset, subset_ids
    from pipeline.masks.backends import build_mask_store

    subset, _ = read_subset(prepared / "data/subset" / SUBSET_NAME)
    manifest = read_manifest(prepared / "data/prepared/manifest.parquet")
    sources = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("source").to_pylist(), strict=True))
    sizes = {Image.open(prepared / "data/prepared" / sources[i]).size for i in subset_ids(subset, "finetune")}
    assert len(sizes) > 1  # the fixture's photos are 48x40 and 48x48

    def refuse(_: object) -> None:
        raise AssertionError("the models were loaded before the sizes were checked")

    monkeypatch.setattr(pipeline.masks.grounded, "load_grounded_sam", refuse)
    write_concepts(prepared / "concepts_sizes", {}, {"source": "test"})
    config = MasksConfig(
        backend="grounded_sam",
        resolution=None,
        grounded_sam={"grounding": {"checkpoint": "dino.pth"}, "sam": {"checkpoint": "sam.pth"}},
    )
    with pytest.raises(ValueError, match=r"\.JPEG: 48x\d\d pixels, unlike .*; set masks.resolution"):
        build_mask_store(
            config,
            prepared / "data/prepared",
            prepared / "data/subset",
            prepared / "concepts_sizes",
            prepared / "masks_sizes",
            prepared / "work_sizes",
            None,
        )
