from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.benchmarks.mask_scores import SegmentationCounts, binarise_at_mean
from pipeline.config.evaluate import EvaluateConfig
from pipeline.reports.summary import compact
from pipeline.reports.summary import summarise as summarise_benchmarks
from pipeline.utils.checkpoint import STATE_NAME, fingerprint, load_state, save_state

# Two 2x2 images whose dataset-level IoU (summed counts) differs from the mean of per-image IoUs.
PREDICTED = np.array([[[1, 0], [0, 0]], [[1, 0], [0, 0]]])
TARGET = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])


def test_segmentation_counts_sum_over_the_dataset() -> None:
    counts = SegmentationCounts()
    for predicted, target in zip(PREDICTED, TARGET, strict=True):
        counts.add(predicted, target)
    np.testing.assert_array_equal(counts.intersection, [5, 1])
    np.testing.assert_array_equal(counts.union, [7, 3])
    summed = (5 / 7 + 1 / 3) / 2
    per_image = ((2 / 3 + 1 / 2) / 2 + (3 / 4 + 0 / 1) / 2) / 2
    assert summed != pytest.approx(per_image, abs=1e-3)
    assert counts.miou() == pytest.approx(summed, rel=1e-12)
    assert counts.pixel_accuracy() == pytest.approx(6 / 8)


def test_segmentation_counts_batch_equals_per_image_adds() -> None:
    batched, single = SegmentationCounts(), SegmentationCounts()
    batched.add(PREDICTED.astype(bool), TARGET.astype(bool))
    for predicted, target in zip(PREDICTED, TARGET, strict=True):
        single.add(predicted, target)
    np.testing.assert_array_equal(batched.intersection, single.intersection)
    np.testing.assert_array_equal(batched.union, single.union)
    assert batched.miou() == single.miou()
    assert batched.pixels == 8 and batched.correct == 6


def test_empty_segmentation_counts_are_nan() -> None:
    counts = SegmentationCounts()
    assert math.isnan(counts.miou()) and math.isnan(counts.pixel_accuracy())


def test_perfect_segmentation() -> None:
    counts = SegmentationCounts()
    counts.add(TARGET, TARGET)
    assert counts.miou() == 1.0 and counts.pixel_accuracy() == 1.0


def test_binarise_at_mean() -> None:
    maps = np.array(
        [
            [[1.0, 2.0], [3.0, 4.0]],
            [[5.0, 5.0], [5.0, 5.0]],
            [[-1.0, -3.0], [0.0, -4.0]],
        ]
    )
    expected = np.array(
        [
            [[False, False], [True, True]],
            [[False, False], [False, False]],
            [[True, False], [True, False]],
        ]
    )
    binary = binarise_at_mean(maps)
    assert binary.dtype == bool
    np.testing.assert_array_equal(binary, expected)


def split_metrics(accuracy: float, unseen: float, miou: float | None = None) -> dict[str, float]:
    metrics = {"accuracy": accuracy, "accuracy_seen": accuracy + 0.1, "accuracy_unseen": unseen}
    if miou is not None:
        metrics["miou"] = miou
    return metrics


def summarise(
    results: dict[str, dict[str, dict[str, float]]], in_distribution: str, reference: str = "base"
) -> dict[str, dict[str, float]]:
    """results[model][benchmark] -> the per-benchmark metrics files `cft report` reads (NaN as JSON null)."""
    per_benchmark: dict[str, dict[str, object]] = {}
    for model, per in results.items():
        for name, metrics in per.items():
            row = {
                key: (None if isinstance(value, float) and math.isnan(value) else value)
                for key, value in metrics.items()
            }
            per_benchmark.setdefault(name, {"models": {}})["models"][model] = row  # type: ignore[index]
    return summarise_benchmarks(per_benchmark, in_distribution, reference)  # type: ignore[arg-type]


def test_summarise() -> None:
    results = {
        "base": {
            "test": split_metrics(0.9, 0.8, 0.5),
            "sketch": split_metrics(0.4, 0.3, 0.2),
            "scene": split_metrics(0.6, 0.5, 0.4),
        },
        "cft": {
            "test": split_metrics(0.95, 0.7, 0.9),
            "sketch": split_metrics(0.5, 0.2, math.nan),
            "scene": split_metrics(0.7, 0.6, 0.6),
        },
        "other": {"sketch": split_metrics(0.1, 0.1)},
    }
    summary = summarise(results, in_distribution="test")
    assert summary["base"] == {
        "ood_accuracy_mean": 0.5,
        "ood_accuracy_seen_mean": 0.6,
        "ood_accuracy_unseen_mean": 0.4,
        "ood_miou_mean": 0.3,
        "in_distribution_accuracy": 0.9,
        "forgetting_unseen": 0.0,
    }
    assert summary["cft"] == {
        "ood_accuracy_mean": 0.6,
        "ood_accuracy_seen_mean": 0.7,
        "ood_accuracy_unseen_mean": 0.4,
        "ood_miou_mean": 0.6,
        "in_distribution_accuracy": 0.95,
        "forgetting_unseen": 0.1,
    }
    assert compact(summary["cft"]) == {
        "ood_acc": 0.6,
        "ood_seen": 0.7,
        "ood_unseen": 0.4,
        "id_acc": 0.95,
        "forgetting": 0.1,
    }
    assert summary["other"] == {
        "ood_accuracy_mean": 0.1,
        "ood_accuracy_seen_mean": 0.2,
        "ood_accuracy_unseen_mean": 0.1,
    }


def test_summarise_reports_apart_shortcut_drops_and_cue_lift() -> None:
    results = {
        "base": {
            "test": {**split_metrics(0.9, 0.8), "cue_share": 0.12, "cue_area": 0.03},
            "cue_swapped": split_metrics(0.7, 0.6),
            "swapped_bg": split_metrics(0.85, 0.8),
            "sketch": split_metrics(0.1, 0.1),
        },
    }
    per_benchmark: dict[str, dict[str, object]] = {
        name: {"models": {"base": row}} for name, row in results["base"].items()
    }
    summary = summarise_benchmarks(
        per_benchmark, "test", apart=frozenset({"sketch"}), shortcut_tests={"cue": "cue_swapped", "bg": "swapped_bg"}
    )  # type: ignore[arg-type]
    row = summary["base"]
    assert row["ood_accuracy_mean"] == pytest.approx(0.775)  # sketch reported apart
    assert row["cue_drop"] == pytest.approx(0.2) and row["bg_drop"] == pytest.approx(0.05)
    assert row["cue_lift"] == pytest.approx(4.0)
    assert {"cue_drop", "bg_drop", "cue_lift"} <= set(compact(row))
    assert "cue_lift" not in summarise(results, in_distribution="cue_swapped")["base"]


def test_shortcut_tests_must_name_benchmarks() -> None:
    benchmarks = {"test": {"kind": "split"}, "cue_swapped": {"kind": "split"}}
    assert EvaluateConfig(benchmarks=benchmarks, shortcut_tests={"cue": "cue_swapped"}).shortcut_tests == {
        "cue": "cue_swapped"
    }
    with pytest.raises(ValueError, match="not in the benchmarks"):
        EvaluateConfig(benchmarks=benchmarks, shortcut_tests={"bg": "swapped_bg"})
    with pytest.raises(ValueError, match="set in_distribution"):
        EvaluateConfig(benchmarks=benchmarks, shortcut_tests={"cue": "cue_swapped"}, in_distribution=None)


def test_summarise_without_reference_has_no_forgetting() -> None:
    results = {"cft": {"test": split_metrics(0.9, 0.8), "sketch": split_metrics(0.4, 0.3)}}
    assert "forgetting_unseen" not in summarise(results, in_distribution="test")["cft"]
    summary = summarise(results, in_distribution="test", reference="cft")
    assert summary["cft"]["forgetting_unseen"] == 0.0
    assert summary["cft"]["ood_accuracy_mean"] == 0.4


# --- checkpoint -------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    base = tmp_path / "in" / "base"
    (base / "sub").mkdir(parents=True)
    (base / "model.bin").write_bytes(bytes(range(256)) * 4)
    (base / "sub" / "spec.json").write_text('{"a": 1}')
    subset = tmp_path / "in" / "subset.parquet"
    subset.write_bytes(b"PAR1 subset bytes")
    return [base, subset]


CONFIG = {"lr": 1e-3, "epochs": 5, "augment": {"flip": True}}


def test_fingerprint_is_stable(inputs: list[Path]) -> None:
    first = fingerprint(CONFIG, inputs)
    assert fingerprint(CONFIG, inputs) == first
    assert fingerprint({"augment": {"flip": True}, "epochs": 5, "lr": 1e-3}, [str(p) for p in inputs]) == first
    assert len(first) == 64 and int(first, 16) >= 0


def test_fingerprint_does_not_depend_on_location(inputs: list[Path], tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(inputs[0].parent, moved)
    assert fingerprint(CONFIG, [moved / "base", moved / "subset.parquet"]) == fingerprint(CONFIG, inputs)


@pytest.mark.parametrize(
    "changed",
    [{"lr": 2e-3}, {"epochs": 6}, {"augment": {"flip": False}}, {"extra": None}],
)
def test_fingerprint_changes_with_config(inputs: list[Path], changed: dict[str, object]) -> None:
    assert fingerprint({**CONFIG, **changed}, inputs) != fingerprint(CONFIG, inputs)


@pytest.mark.parametrize("relative", ["base/model.bin", "base/sub/spec.json", "subset.parquet"])
def test_fingerprint_changes_with_one_byte(inputs: list[Path], relative: str) -> None:
    before = fingerprint(CONFIG, inputs)
    path = inputs[0].parent / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert fingerprint(CONFIG, inputs) != before


def test_fingerprint_covers_directory_structure(inputs: list[Path]) -> None:
    before = fingerprint(CONFIG, inputs)
    (inputs[0] / "sub" / "new.txt").write_bytes(b"")
    added = fingerprint(CONFIG, inputs)
    assert added != before
    (inputs[0] / "sub" / "new.txt").unlink()
    assert fingerprint(CONFIG, inputs) == before
    (inputs[0] / "sub" / "spec.json").rename(inputs[0] / "sub" / "spec2.json")
    assert fingerprint(CONFIG, inputs) != before


def test_fingerprint_depends_on_inputs(inputs: list[Path]) -> None:
    assert fingerprint(CONFIG, inputs[:1]) != fingerprint(CONFIG, inputs)
    assert fingerprint(CONFIG, []) != fingerprint(CONFIG, inputs)


def test_fingerprint_separates_file_boundaries(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a").write_bytes(b"1")
    (one / "b").write_bytes(b"2")
    (two / "a").write_bytes(b"1b2")
    assert fingerprint({}, [one]) != fingerprint({}, [two])


def saved_state(fingerprint_value: str) -> dict[str, object]:
    return {
        "fingerprint": fingerprint_value,
        "epoch": 3,
        "model": {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.tensor([0.5, -1.0])},
        "history": [{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.4}],
        "rng": torch.Generator().manual_seed(4).get_state(),
    }


def test_state_round_trip(tmp_path: Path, inputs: list[Path]) -> None:
    value = fingerprint(CONFIG, inputs)
    directory = tmp_path / "run" / "checkpoint"
    save_state(directory, saved_state(value))
    assert [p.name for p in directory.iterdir()] == [STATE_NAME]
    loaded = load_state(directory, value)
    assert loaded is not None
    expected = saved_state(value)
    assert loaded["fingerprint"] == value and loaded["epoch"] == 3 and loaded["history"] == expected["history"]
    assert torch.equal(loaded["model"]["weight"], expected["model"]["weight"])
    assert torch.equal(loaded["model"]["bias"], expected["model"]["bias"])
    assert torch.equal(loaded["rng"], expected["rng"])
    save_state(directory, {**saved_state(value), "epoch": 4})
    assert load_state(directory, value)["epoch"] == 4


def test_load_state_other_fingerprint(tmp_path: Path) -> None:
    save_state(tmp_path, saved_state("a" * 64))
    assert load_state(tmp_path, "b" * 64) is None
    assert load_state(tmp_path, "a" * 64) is not None


def test_load_state_missing(tmp_path: Path) -> None:
    assert load_state(tmp_path, "a" * 64) is None
    assert load_state(tmp_path / "absent", "a" * 64) is None


@pytest.mark.parametrize("content", [b"garbage bytes, not a torch file", b""])
def test_load_state_garbage(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_NAME).write_bytes(content)
    assert load_state(tmp_path, "a" * 64) is None


def test_load_state_torn_or_foreign(tmp_path: Path) -> None:
    save_state(tmp_path, saved_state("a" * 64))
    data = (tmp_path / STATE_NAME).read_bytes()
    (tmp_path / STATE_NAME).write_bytes(data[: len(data) // 2])
    assert load_state(tmp_path, "a" * 64) is None
    save_state(tmp_path, ["a" * 64])  # type: ignore[arg-type]
    assert load_state(tmp_path, "a" * 64) is None


def test_source_digest_covers_the_whole_pipeline_package() -> None:
    """By default the digest is of every module of ``pipeline`` (not only of the package that
    holds it): a change to the training code must invalidate resumable fine-tuning state."""
    import pipeline
    from pipeline.utils.checkpoint import source_digest

    root = Path(pipeline.__file__).parent
    assert source_digest() == source_digest(root)
    assert source_digest() != source_digest(root / "utils")


def test_source_digest_follows_python_sources_only(tmp_path: Path) -> None:
    from pipeline.utils.checkpoint import source_digest

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\x00")
    assert source_digest(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path / "pkg") != before
    assert len(source_digest()) == 64
