"""Benchmark readers and scoring protocols, on tiny fake datasets written in each benchmark's real layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks.catalog import (
    KINDS,
    BenchmarkError,
    BenchmarkImages,
    imagenet_subset,
    objectnet_class_targets,
    packaged_data,
    read_benchmark,
)
from pipeline.benchmarks.protocols import (
    PROTOCOL_TABLE,
    benchmark_metrics,
    correct,
    factor_breakdown,
    predict,
    protocols_for,
)
from pipeline.data.class_names import imagenet_classes
from tests.helpers.benchmark_files import (
    AMBULANCE,
    KOALA,
    SI_SCORE_HEADER,
    write_image,
    write_objectnet,
    write_si_score,
)

IMAGENET = imagenet_classes()
TENCH, GOLDFISH = 0, 1  # in none of the class subsets used below (asserted where it matters)
ANALOG_CLOCK, DIGITAL_CLOCK, BANANA, BACKPACK = 409, 530, 954, 414


def logits_with(rows: list[dict[int, float]], classes: int = 1000) -> torch.Tensor:
    logits = torch.zeros(len(rows), classes)
    for row, values in enumerate(rows):
        for index, value in values.items():
            logits[row, index] = value
    return logits


def as_numpy(predictions: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: values.cpu().numpy() for name, values in predictions.items()}


# --- imagefolder / ImageNetV2 ---------------------------------------------------------------------


def test_imagefolder_lists_images_sorted_with_class_targets(tmp_path: Path) -> None:
    for name in ("dog/b.JPEG", "dog/a.png", "cat/x.jpg", "cat/sub/y.jpeg", "cat/.hidden.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "README.txt").write_text("beside the class folders")
    (tmp_path / "bird").mkdir()  # a class without images is fine

    images = read_benchmark("imagefolder", tmp_path, ["bird", "cat", "dog"])

    assert images.files == ["cat/sub/y.jpeg", "cat/x.jpg", "dog/a.png", "dog/b.JPEG"]
    assert images.targets == [(1,), (1,), (2,), (2,)]
    assert images.classes is None and images.border == 0 and images.skipped == {}
    assert [protocol.name for protocol in protocols_for(images)] == ["standard"]


def test_imagefolder_folder_outside_the_classes_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "1.jpg")
    write_image(tmp_path / "cow" / "2.jpg")
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "cow"))):
        read_benchmark("imagefolder", tmp_path, ["cat", "dog"])


def test_missing_empty_and_file_roots_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "absent")) + ".*not found"):
        read_benchmark("imagefolder", tmp_path / "absent", ["cat"])
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "empty")) + ".*no images"):
        read_benchmark("imagefolder", tmp_path / "empty", ["cat"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BenchmarkError, match="not a folder"):
        read_benchmark("imagefolder", tmp_path / "file.txt", ["cat"])
    with pytest.raises(BenchmarkError, match="unknown benchmark kind"):
        read_benchmark("imagenet_p", tmp_path, IMAGENET)


def test_imagenet_v2_folder_name_is_the_class_index(tmp_path: Path) -> None:
    for folder in ("0", "2", "10", "999"):
        write_image(tmp_path / folder / "7e4c.jpeg")

    images = read_benchmark("imagenet_v2", tmp_path, IMAGENET)

    assert images.files == ["0/7e4c.jpeg", "10/7e4c.jpeg", "2/7e4c.jpeg", "999/7e4c.jpeg"]
    assert images.targets == [(0,), (10,), (2,), (999,)]
    assert images.classes is None
    write_image(tmp_path / "1000" / "x.jpeg")
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "1000"))):
        read_benchmark("imagenet_v2", tmp_path, IMAGENET)


@pytest.mark.parametrize(
    "kind",
    [kind for kind in KINDS if kind not in ("imagefolder", "imagenet_c", "imagenet9", "waterbirds", "hard_imagenet")],
)
def test_imagenet_kinds_refuse_a_non_imagenet_classifier(tmp_path: Path, kind: str) -> None:
    with pytest.raises(BenchmarkError, match=f"{kind}.*needs an ImageNet-1k classifier"):
        read_benchmark(kind, tmp_path, ["cat", "dog"])
    with pytest.raises(BenchmarkError, match="ImageNet-1k classifier"):
        read_benchmark(kind, tmp_path, list(reversed(IMAGENET)))


# --- ImageNet-A / -R --------------------------------------------------------------------------------


def test_imagenet_a_r_subsets_agree_with_the_imagenet_order() -> None:
    for kind in ("imagenet_a", "imagenet_r"):
        wnids, indices = imagenet_subset(kind)
        assert len(wnids) == len(set(indices)) == 200
        assert [IMAGENET[index] for index in indices] == list(wnids)
    assert imagenet_subset("imagenet_a")[1][:5] == (6, 11, 13, 15, 17)  # hendrycks eval.py's indices_in_1k


def test_imagenet_a_standard_restricts_the_argmax_to_the_200_classes(tmp_path: Path) -> None:
    wnids, indices = imagenet_subset("imagenet_a")
    assert TENCH not in indices and GOLDFISH not in indices
    first, second = indices[0], indices[1]
    write_image(tmp_path / wnids[0] / "a.jpg")
    write_image(tmp_path / wnids[1] / "b.jpg")
    write_image(tmp_path / wnids[1] / "c.jpg")
    (tmp_path / "README.txt").write_text("ImageNet-A ships a README beside the class folders")

    images = read_benchmark("imagenet_a", tmp_path, IMAGENET)
    assert images.targets == [(first,), (second,), (second,)]
    assert images.classes == indices
    logits = logits_with(
        [
            {TENCH: 5.0, first: 3.0},  # right once the non-A class is masked out; wrong 1000-way
            {second: 4.0},  # right either way
            {GOLDFISH: 9.0, first: 2.0},  # wrong either way: the best A class is the wrong one
        ]
    )
    predictions = as_numpy(predict(logits, images))

    assert predictions["standard"].tolist() == [first, second, first]
    assert predictions["reference"].tolist() == [TENCH, second, GOLDFISH]
    metrics = benchmark_metrics(images, predictions, None)
    assert metrics == {"accuracy": 0.666667, "reference_accuracy": 0.333333, "images": 3}
    assert [p.description for p in protocols_for(images)] == [
        "argmax over the 200 ImageNet-A classes",
        "argmax over all 1000 ImageNet classes (no class subset)",
    ]


def test_imagenet_r_folder_outside_the_200_is_named(tmp_path: Path) -> None:
    wnids, indices = imagenet_subset("imagenet_r")
    write_image(tmp_path / wnids[3] / "art_0.jpg")
    images = read_benchmark("imagenet_r", tmp_path, IMAGENET)
    assert images.targets == [(indices[3],)] and len(images.classes or ()) == 200

    outsider = next(wnid for wnid in IMAGENET if wnid not in wnids)
    write_image(tmp_path / outsider / "x.jpg")
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / outsider)) + ".*200 imagenet_r"):
        read_benchmark("imagenet_r", tmp_path, IMAGENET)


# --- ObjectNet --------------------------------------------------------------------------------------


def test_all_113_objectnet_classes_resolve_to_125_imagenet_classes() -> None:
    from timm.data import ImageNetInfo

    descriptions = ImageNetInfo("imagenet-1k").label_descriptions()
    mapping = json.loads(packaged_data("objectnet_to_imagenet_1k.json").read_text())
    targets = objectnet_class_targets()

    assert len(targets) == 113
    assert (
        sum(len(indices) for indices in targets.values())
        == len({i for indices in targets.values() for i in indices})
        == 125
    )
    for objectnet_class, names in mapping.items():  # each name is one class's full description, in the file's order
        assert [descriptions[index] for index in targets[objectnet_class]] == [
            name.strip() for name in names.split(";")
        ]
    assert targets["Alarm clock"] == (ANALOG_CLOCK, DIGITAL_CLOCK)
    assert targets["Chair"] == (423, 559, 765)  # barber chair; folding chair; rocking chair
    assert targets["Backpack"] == (BACKPACK,)


def test_objectnet_maps_folders_to_imagenet_sets_and_skips_unmapped_classes(tmp_path: Path) -> None:
    write_objectnet(tmp_path)
    images = read_benchmark("objectnet", tmp_path, IMAGENET)

    assert images.files == ["images/alarm_clock/1.png", "images/alarm_clock/2.png", "images/banana/3.png"]
    assert images.targets == [(ANALOG_CLOCK, DIGITAL_CLOCK), (ANALOG_CLOCK, DIGITAL_CLOCK), (BANANA,)]
    assert images.metadata == {"objectnet_class": ["Alarm clock", "Alarm clock", "Banana"]}
    assert images.skipped == {"squeegee": 2}  # Squeegee is one of the 200 classes without an ImageNet counterpart
    assert images.border == 2
    assert images.classes is not None and len(images.classes) == 125 and list(images.classes) == sorted(images.classes)
    assert TENCH not in images.classes

    logits = logits_with(
        [
            {DIGITAL_CLOCK: 5.0},  # the second mapped class: standard right, reference wrong
            {
                TENCH: 9.0,
                ANALOG_CLOCK: 1.0,
                DIGITAL_CLOCK: 0.5,
            },  # unmapped argmax: standard takes the best mapped class
            {DIGITAL_CLOCK: 3.0, BANANA: 2.0},  # a mapped but wrong class: wrong either way
        ]
    )
    predictions = as_numpy(predict(logits, images))
    assert predictions["standard"].tolist() == [DIGITAL_CLOCK, ANALOG_CLOCK, DIGITAL_CLOCK]
    assert predictions["reference"].tolist() == [DIGITAL_CLOCK, TENCH, DIGITAL_CLOCK]
    assert correct("standard", predictions["standard"], images.targets).tolist() == [True, True, False]
    assert correct("reference", predictions["reference"], images.targets).tolist() == [False, False, False]

    # seen if any of the image's mapped classes was seen: the alarm clocks through the digital clock
    metrics = benchmark_metrics(images, predictions, {DIGITAL_CLOCK})
    assert metrics == {
        "accuracy": 0.666667,
        "accuracy_seen": 1.0,
        "accuracy_unseen": 0.0,
        "reference_accuracy": 0.0,
        "reference_accuracy_seen": 0.0,
        "reference_accuracy_unseen": 0.0,
        "images": 3,
        "images_seen": 2,
        "images_unseen": 1,
    }


def test_objectnet_prefers_the_datasets_own_mapping_files(tmp_path: Path) -> None:
    write_objectnet(tmp_path)
    write_image(tmp_path / "images" / "backpack" / "6.png")  # mapped in the packaged file, not in this dataset's
    (tmp_path / "mappings").mkdir()
    own = {"Alarm clock": "digital clock; analog clock", "Banana": "banana"}
    (tmp_path / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(own))

    images = read_benchmark("objectnet", tmp_path, IMAGENET)

    assert images.targets[0] == (DIGITAL_CLOCK, ANALOG_CLOCK)  # the file's order: targets[0] is its first class
    assert images.classes == (ANALOG_CLOCK, DIGITAL_CLOCK, BANANA)
    assert images.skipped == {"backpack": 1, "squeegee": 2}
    reference = as_numpy(predict(logits_with([{DIGITAL_CLOCK: 1.0}] * 3), images))["reference"]
    assert correct("reference", reference, images.targets).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("folder_to_objectnet_label.json", "{not json", "folder to label mapping unreadable"),
        ("objectnet_to_imagenet_1k.json", '["a list"]', "must be a JSON object"),
        (
            "objectnet_to_imagenet_1k.json",
            '{"Alarm clock": "alarm clock widget"}',
            "'alarm clock widget' matches no ImageNet-1k",
        ),
        (
            "objectnet_to_imagenet_1k.json",
            '{"Alarm clock": "crane"}',
            r"'crane' is ambiguous \(ImageNet-1k classes \[134, 517\]\)",
        ),
        (
            "objectnet_to_imagenet_1k.json",
            '{"Flux capacitor": "banana"}',
            "no folder holds the mapped ObjectNet classes",
        ),
    ],
)
def test_objectnet_bad_mapping_files_are_named(tmp_path: Path, file: str, content: str, message: str) -> None:
    write_objectnet(tmp_path)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / file).write_text(content)
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "mappings" / file)) + ".*" + message):
        read_benchmark("objectnet", tmp_path, IMAGENET)


def test_objectnet_unknown_folder_and_missing_images_dir_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "images")) + ": not found"):
        read_benchmark("objectnet", tmp_path, IMAGENET)
    write_objectnet(tmp_path)
    write_image(tmp_path / "images" / "hoverboard" / "1.png")
    with pytest.raises(
        BenchmarkError, match=re.escape(str(tmp_path / "images" / "hoverboard")) + ".*not an ObjectNet folder"
    ):
        read_benchmark("objectnet", tmp_path, IMAGENET)


# --- SI-Score ---------------------------------------------------------------------------------------


def test_si_score_reads_every_factor_with_its_values(tmp_path: Path) -> None:
    write_si_score(tmp_path)
    images = read_benchmark("si_score", tmp_path, IMAGENET)

    assert images.files == [
        "location/location20_area02_min0pc/koala/7.jpg",
        "location/location20_area02_min0pc/koala/8.jpg",
        "object_rotation/ambulance/2.jpg",
        "object_rotation/koala/0.jpg",
        "object_rotation/koala/1.jpg",
        "object_size/ambulance/0.jpg",
        "object_size/ambulance/1.jpg",
        "object_size/koala/2.jpg",
    ]
    assert images.targets == [
        (KOALA,),
        (KOALA,),
        (AMBULANCE,),
        (KOALA,),
        (KOALA,),
        (AMBULANCE,),
        (AMBULANCE,),
        (KOALA,),
    ]
    assert images.metadata["factor"] == ["location"] * 2 + ["rotation"] * 3 + ["size"] * 3
    assert images.metadata["factor_value"] == ["(0.05,0.95)", "(0.25,0.5)", "21", "1", "181", "0.2", "0.5", "0.2"]
    assert images.classes is None

    chosen = [KOALA, TENCH, AMBULANCE, KOALA, AMBULANCE, AMBULANCE, TENCH, KOALA]
    predictions = as_numpy(predict(logits_with([{index: 1.0} for index in chosen]), images))
    assert list(predictions) == ["standard"] and predictions["standard"].tolist() == chosen

    assert benchmark_metrics(images, predictions, None) == {
        "accuracy": 0.625,
        "accuracy_size": 0.666667,
        "accuracy_location": 0.5,
        "accuracy_rotation": 0.666667,
        "accuracy_size_value_mean": 0.5,
        "accuracy_location_value_mean": 0.5,
        "accuracy_rotation_value_mean": 0.666667,
        "images": 8,
    }
    assert factor_breakdown(images, predictions) == [
        {"factor": "size", "factor_value": "0.2", "images": 2, "accuracy": 1.0},
        {"factor": "size", "factor_value": "0.5", "images": 1, "accuracy": 0.0},
        {"factor": "location", "factor_value": "(0.05,0.95)", "images": 1, "accuracy": 1.0},
        {"factor": "location", "factor_value": "(0.25,0.5)", "images": 1, "accuracy": 0.0},
        {"factor": "rotation", "factor_value": "1", "images": 1, "accuracy": 1.0},
        {"factor": "rotation", "factor_value": "21", "images": 1, "accuracy": 1.0},
        {"factor": "rotation", "factor_value": "181", "images": 1, "accuracy": 0.0},
    ]


def test_si_score_images_may_sit_in_a_nested_factor_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "object_size" / "area" / "koala" / "4.jpg")
    (tmp_path / "object_size" / "metadata.csv").write_text(SI_SCORE_HEADER + "4,0.5,0.5,0.35,0,0,0,0,500,500,1.0\n")
    images = read_benchmark("si_score", tmp_path, IMAGENET)
    assert images.files == ["object_size/area/koala/4.jpg"] and images.targets == [(KOALA,)]
    assert images.metadata == {"factor": ["size"], "factor_value": ["0.35"]}


def test_si_score_layout_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path)) + ".*no SI-Score factor folder"):
        read_benchmark("si_score", tmp_path, IMAGENET)
    write_si_score(tmp_path)
    write_image(tmp_path / "object_size" / "koala" / "99.jpg")
    with pytest.raises(
        BenchmarkError, match=re.escape(str(tmp_path / "object_size" / "koala" / "99.jpg")) + ".*no row in"
    ):
        read_benchmark("si_score", tmp_path, IMAGENET)
    (tmp_path / "object_size" / "koala" / "99.jpg").unlink()
    write_image(tmp_path / "object_rotation" / "unicorn" / "3.jpg")
    with pytest.raises(
        BenchmarkError, match=re.escape(str(tmp_path / "object_rotation" / "unicorn")) + ".*not an SI-Score"
    ):
        read_benchmark("si_score", tmp_path, IMAGENET)
    (tmp_path / "object_rotation" / "unicorn" / "3.jpg").unlink()
    (tmp_path / "object_rotation" / "metadata.csv").unlink()
    with pytest.raises(BenchmarkError, match=re.escape(str(tmp_path / "object_rotation")) + ": no metadata.csv"):
        read_benchmark("si_score", tmp_path, IMAGENET)


# --- protocols on their own -------------------------------------------------------------------------


def subset_benchmark(
    kind: str, classes: tuple[int, ...], targets: list[tuple[int, ...]], border: int = 0
) -> BenchmarkImages:
    return BenchmarkImages(kind, Path("/fake"), [f"{i}.jpg" for i in range(len(targets))], targets, classes, border)


def test_bf16_logits_give_the_same_predictions_as_float32() -> None:
    indices = imagenet_subset("imagenet_a")[1]
    images = subset_benchmark("imagenet_a", indices, [(indices[0],)] * 16)
    logits = torch.randn(16, 1000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    predictions = predict(logits, images)
    expected = predict(logits.float(), images)  # bf16 -> float32 is exact, so the argmax must not move

    for name in ("standard", "reference"):
        assert predictions[name].dtype == torch.int64 and predictions[name].device == logits.device
        assert torch.equal(predictions[name], expected[name])
    assert set(predictions["standard"].tolist()) <= set(indices)
    assert torch.equal(predictions["reference"], logits.float().argmax(dim=1))


def test_predict_rejects_bad_logits_shapes() -> None:
    indices = imagenet_subset("imagenet_a")[1]
    images = subset_benchmark("imagenet_a", indices, [(indices[0],)])
    with pytest.raises(ValueError, match="shape"):
        predict(torch.zeros(1000), images)
    with pytest.raises(ValueError, match="outside logits with 100 classes"):
        predict(torch.zeros(1, 100), images)


def test_correct_standard_accepts_any_target_reference_only_the_first() -> None:
    targets = [(3, 7), (3, 7), (5,)]
    predicted = np.array([7, 3, 4])
    assert correct("standard", predicted, targets).tolist() == [True, True, False]
    assert correct("reference", predicted, targets).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="unknown protocol"):
        correct("top5", predicted, targets)
    with pytest.raises(ValueError, match="2 predictions for 3 images"):
        correct("standard", predicted[:2], targets)


def test_metric_groups_without_images_are_left_out() -> None:
    images = BenchmarkImages("imagenet_v2", Path("/fake"), ["a.jpg", "b.jpg"], [(1,), (2,)], None)
    predictions = {"standard": np.array([1, 0])}
    assert benchmark_metrics(images, predictions, {1, 2}) == {
        "accuracy": 0.5,
        "accuracy_seen": 0.5,
        "images": 2,
        "images_seen": 2,
    }
    assert benchmark_metrics(images, predictions, set()) == {
        "accuracy": 0.5,
        "accuracy_unseen": 0.5,
        "images": 2,
        "images_unseen": 2,
    }
    indices = imagenet_subset("imagenet_r")[1]
    with pytest.raises(ValueError, match="no predictions for the reference protocol"):
        benchmark_metrics(
            subset_benchmark("imagenet_r", indices, [(indices[0],)]), {"standard": np.array([indices[0]])}, None
        )
    assert factor_breakdown(images, predictions) == []


def test_protocol_table_matches_the_readers_and_protocols() -> None:
    rows = {row["kind"]: row for row in PROTOCOL_TABLE}
    assert list(rows) == list(KINDS)
    assert all(
        set(row) == {"kind", "class_subset", "mapping", "standard_protocol", "reference_protocol"}
        for row in PROTOCOL_TABLE
    )
    assert rows["imagenet_a"]["class_subset"].startswith("200 ImageNet-A classes")
    assert rows["imagenet_r"]["class_subset"].startswith("200 ImageNet-R classes")
    assert rows["objectnet"]["class_subset"] == "113 ObjectNet classes = 125 ImageNet classes"

    objectnet_classes = tuple(sorted({i for targets in objectnet_class_targets().values() for i in targets}))
    benchmarks = {
        "imagefolder": subset_benchmark("imagefolder", (), [(0,)]),
        "imagenet_v2": subset_benchmark("imagenet_v2", (), [(0,)]),
        "imagenet_a": subset_benchmark("imagenet_a", imagenet_subset("imagenet_a")[1], [(6,)]),
        "imagenet_r": subset_benchmark("imagenet_r", imagenet_subset("imagenet_r")[1], [(1,)]),
        "objectnet": subset_benchmark("objectnet", objectnet_classes, [(ANALOG_CLOCK, DIGITAL_CLOCK)], border=2),
        "si_score": subset_benchmark("si_score", (), [(KOALA,)]),
        "imagenet_c": subset_benchmark("imagenet_c", (), [(0,)]),
    }
    for kind, images in benchmarks.items():
        if not images.classes:
            images = BenchmarkImages(kind, images.root, images.files, images.targets, None)
        descriptions = {protocol.name: protocol.description for protocol in protocols_for(images)}
        assert descriptions["standard"] == rows[kind]["standard_protocol"]
        assert descriptions.get("reference", "-") == rows[kind]["reference_protocol"]
    assert [kind for kind, row in rows.items() if row["reference_protocol"] != "-"] == [
        "imagenet_a",
        "imagenet_r",
        "objectnet",
    ]
