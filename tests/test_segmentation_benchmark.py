"""The ImageNet-segmentation benchmark: gtsegs_ijcv.mat reader and Chefer et al.'s metrics."""

from __future__ import annotations

import json
import os
import pickle
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.benchmarks.segmentation import (
    SegmentationError,
    SegmentationScores,
    SegmentationSet,
    average_precision,
    resize_pair,
    write_segmentation_file,
)

SIZES = [(10, 14), (12, 9), (7, 11)]


def _pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)  # corner markers: a transpose or flip moves them
    image[0, width - 1] = (0, 255, 0)
    image[height - 1, 0] = (0, 0, 255)
    mask = np.zeros((height, width), bool)
    mask[0, width - 3 :] = True  # top-right strip only
    mask[height - 1, 0] = True
    return image, mask


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    pairs = [_pair(h, w, i) for i, (h, w) in enumerate(SIZES)]
    path = tmp_path / "gtsegs_ijcv.mat"
    write_segmentation_file(path, [p[0] for p in pairs], [p[1] for p in pairs])
    return path, [p[0] for p in pairs], [p[1] for p in pairs]


def test_written_file_reads_back_identical(written) -> None:
    path, images, masks = written
    data = SegmentationSet(path)
    assert len(data) == 3
    for i, (height, width) in enumerate(SIZES):
        image, mask = data[i]
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        assert mask.dtype == bool and mask.shape == (height, width)
        np.testing.assert_array_equal(image, images[i])
        np.testing.assert_array_equal(mask, masks[i])
        assert tuple(image[0, width - 1]) == (0, 255, 0) and mask[0, width - 1] and not mask[0, 0]
    np.testing.assert_array_equal(data[-1][0], images[2])
    with pytest.raises(IndexError):
        data[3]
    # the real file's MATLAB layout: (N, 1) references, image stored (3, W, H), header in a user block
    with h5py.File(path, "r") as f:
        assert f["value/img"].shape == (3, 1) and f["value/gt"].shape == (3, 1)
        assert f[f["value/img"][0, 0]].shape == (3, 14, 10)
        assert f[f[f["value/gt"][0, 0]][0, 0]].shape == (14, 10)
        assert f.userblock_size == 512
    assert path.read_bytes()[:10] == b"MATLAB 7.3"


def test_reads_hand_built_matlab_layout(tmp_path: Path) -> None:
    """Built with raw h5py the way MATLAB stores a struct of cells, element by element (column-major)."""
    height, width = 3, 5
    image = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    mask = np.zeros((height, width), np.float64)  # a non-uint8 mask class must read too
    mask[0, 4] = mask[2, 0] = 1.0
    stored_image = np.zeros((3, width, height), np.uint8)
    stored_mask = np.zeros((width, height), np.float64)
    for row in range(height):
        for col in range(width):
            stored_mask[col, row] = mask[row, col]
            for channel in range(3):
                stored_image[channel, col, row] = image[row, col, channel]
    path = tmp_path / "real.mat"
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_ref = refs.create_dataset("b", data=stored_image).ref
        mask_ref = refs.create_dataset("c", data=stored_mask).ref
        cell = refs.create_dataset("d", (1, 1), dtype=h5py.ref_dtype)
        cell[0, 0] = mask_ref
        value = f.create_group("value")
        value.create_dataset("img", (1, 1), dtype=h5py.ref_dtype)[0, 0] = img_ref
        value.create_dataset("gt", (1, 1), dtype=h5py.ref_dtype)[0, 0] = cell.ref
    got_image, got_mask = SegmentationSet(path)[0]
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_mask, mask.astype(bool))
    assert got_mask[0, 4] and got_mask[2, 0] and got_mask.sum() == 2


def test_pickles_and_runs_in_dataloader_workers(written) -> None:
    path, images, masks = written
    data = SegmentationSet(path)
    data[0]  # an open handle in the parent must neither be pickled nor reused after fork
    copy = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(copy[1][0], images[1])
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="fork")
    got = list(loader)
    assert len(got) == 3
    for (image, mask), want_image, want_mask in zip(got, images, masks):
        np.testing.assert_array_equal(np.asarray(image), want_image)
        np.testing.assert_array_equal(np.asarray(mask), want_mask)
    np.testing.assert_array_equal(data[2][1], masks[2])  # the parent's handle still works

    class Probe(SegmentationSet):
        def __getitem__(self, index: int) -> tuple[int, int | None]:
            super().__getitem__(index)
            return os.getpid(), self._pid  # the process that opened the handle just used

    probe = Probe(path)
    probe[0]
    workers = list(torch.utils.data.DataLoader(probe, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert all(int(pid) == int(opener) != os.getpid() for pid, opener in workers)


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mat"
    with pytest.raises(SegmentationError, match="missing.mat.*not found"):
        SegmentationSet(missing)
    text = tmp_path / "text.mat"
    text.write_text("not hdf5")
    with pytest.raises(SegmentationError, match="text.mat.*not an HDF5"):
        SegmentationSet(text)
    partial = tmp_path / "partial.mat"
    with h5py.File(partial, "w") as f:
        f.create_dataset("value/img", (2, 1), dtype=h5py.ref_dtype)
    with pytest.raises(SegmentationError, match="partial.mat.*value/gt"):
        SegmentationSet(partial)
    uneven = tmp_path / "uneven.mat"
    with h5py.File(uneven, "w") as f:
        f.create_dataset("value/img", (2, 1), dtype=h5py.ref_dtype)
        f.create_dataset("value/gt", (3, 1), dtype=h5py.ref_dtype)
    with pytest.raises(SegmentationError, match="uneven.mat.*2 entries.*3"):
        SegmentationSet(uneven)


def test_resize_pair_squashes_without_cropping() -> None:
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, :4] = 200
    mask = np.zeros((4, 8), bool)
    mask[:, :4] = True  # left half of a wide image stays the left half when squashed
    resized, resized_mask = resize_pair(image, mask, 6)
    assert resized.shape == (6, 6, 3) and resized.dtype == np.uint8
    assert resized_mask.shape == (6, 6) and resized_mask.dtype == bool
    np.testing.assert_array_equal(resized_mask, np.tile([True] * 3 + [False] * 3, (6, 1)))
    assert (resized[:, 0] == 200).all() and (resized[:, -1] == 0).all()


def test_average_precision_hand_computed() -> None:
    # sklearn's documented example
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(5 / 6)
    # ties enter together: thresholds 0.8 (P=1/2, R=1/3), 0.5 (P=3/4, R=1) -> 1/3*1/2 + 2/3*3/4
    assert average_precision(np.array([0.8, 0.8, 0.5, 0.5, 0.2]), np.array([1, 0, 1, 1, 0])) == pytest.approx(2 / 3)
    assert average_precision(np.array([0.8, 0.8, 0.5, 0.5, 0.2]), np.array([0, 1, 1, 1, 0])) == pytest.approx(2 / 3)
    assert average_precision(np.full(4, 0.3), np.array([1, 0, 0, 1])) == pytest.approx(0.5)  # all tied: prevalence
    assert average_precision(np.array([0.9, 0.1]), np.array([0, 0])) == 0.0  # no positives
    with pytest.raises(ValueError):
        average_precision(np.array([np.nan, 0.1]), np.array([1, 0]))


# Two 2x3 images. A's map min-maxes to eighths, so 1 - r is exact and ties stay ties.
RELEVANCE = np.array([[[0, 1, 2], [5, 6, 8]], [[1, 0, 0], [0, 0, 0]]], dtype=np.float64)
MASKS = np.array([[[0, 0, 1], [0, 1, 1]], [[1, 1, 0], [0, 0, 0]]], dtype=bool)
# A: binarised [[0,0,0],[1,1,1]]: 4/6 correct; object I/U 2/4, background 2/4.
# B: binarised [[1,0,0],[0,0,0]]: 5/6 correct; object I/U 1/2, background 4/5.
# Pooled (Chefer) AP, A: groups by score (tp, fp): 1:(2,0) .875:(3,0) .75:(4,1) .625:(4,2) .375:(5,2)
#   .25:(6,3) -> 2/6 + 1/6 + 1/6*4/5 + 1/6*5/7 + 1/6*6/9 = 544/630.
# Pooled AP, B: score 1: (5,1) P=R=5/6; score 0: (6,6) -> 25/36 + 1/6*1/2 = 7/9.
# Foreground-only AP: A 1/3 + 1/3 + 1/3*3/4 = 11/12; B 1/2 + 1/2*2/6 = 2/3.
EXPECTED = {
    "pixel_accuracy": 9 / 12,
    "miou": (Fraction(3, 6) + Fraction(6, 9)) / 2,
    "ap": (Fraction(544, 630) + Fraction(7, 9)) / 2,
    "ap_foreground": (Fraction(11, 12) + Fraction(2, 3)) / 2,
}


def _check(metrics: dict[str, float]) -> None:
    assert metrics["images"] == 2
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-6), key


def test_metrics_hand_computed() -> None:
    scores = SegmentationScores()
    scores.add(RELEVANCE, MASKS)
    _check(scores.metrics())
    # dataset-summed IoU differs from the mean of per-image mIoUs: (1/2 + (1/2 + 4/5)/2) / 2 = 0.575
    assert scores.metrics()["miou"] == pytest.approx(0.583333) and abs(0.575 - 0.583333) > 1e-3
    # relevance is binarised at its mean, not at a fixed level: an affine rescale changes nothing
    rescaled = SegmentationScores()
    rescaled.add(3.0 * RELEVANCE - 7.0, MASKS)
    assert rescaled.metrics() == scores.metrics()


def test_image_without_foreground_and_constant_map() -> None:
    scores = SegmentationScores()
    scores.add(np.array([[[0.0, 1.0], [2.0, 4.0]]]), np.zeros((1, 2, 2), bool))
    # pooled: only the background channel has positives; groups 1:(1,1) .75:(2,1) .5:(3,2) .25:(3,3) 0:(4,4)
    assert scores.metrics()["ap"] == pytest.approx(0.25 * (1 / 2 + 2 / 3 + 3 / 5 + 1 / 2), abs=1e-6)
    assert scores.metrics()["ap_foreground"] == 0.0
    constant = SegmentationScores()
    constant.add(np.full((1, 2, 2), 5.0), np.array([[[True, False], [False, False]]]))
    # Chefer's 0/0 -> NaN -> 0: all background predicted, every pooled score 0 -> AP = prevalence 1/2
    assert constant.metrics()["pixel_accuracy"] == 0.75 and constant.metrics()["ap"] == 0.5


def test_batches_merge_and_resume_from_disk(tmp_path: Path) -> None:
    first, second = SegmentationScores(), SegmentationScores()
    first.add(RELEVANCE[:1], MASKS[:1])
    second.add(RELEVANCE[1:], MASKS[1:])
    _check((first + second).metrics())
    saved = tmp_path / "partial.json"
    saved.write_text(json.dumps(first.to_dict()))
    resumed = SegmentationScores.from_dict(json.loads(saved.read_text()))
    assert resumed.metrics() == first.metrics()
    resumed.add(RELEVANCE[1:], MASKS[1:])
    _check(resumed.metrics())
    assert first.metrics()["images"] == 1  # adding did not change the operands
    assert SegmentationScores().metrics()["images"] == 0
    with pytest.raises(ValueError):
        first.add(RELEVANCE, MASKS[:, :1])
