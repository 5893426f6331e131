from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cft_compat import torchvision_fallback


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x1, y1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x2, y2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (area_i + area_j - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 100
    sizes = torch.rand(count, 2, generator=generator) * 40 + 1
    return torch.cat([corners, corners + sizes], dim=1), torch.rand(count, generator=generator)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
def test_fallback_matches_reference(seed: int, threshold: float) -> None:
    boxes, scores = random_boxes(seed, 200)
    kept = torchvision_fallback.nms(boxes, scores, threshold)
    assert kept.dtype == torch.long
    assert kept.tolist() == reference_nms(boxes.numpy().astype(np.float64), scores.numpy(), threshold)


def test_empty_input() -> None:
    assert torchvision_fallback.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_torchvision_nms_works_in_this_environment() -> None:
    """Whichever backend is active (compiled ops, or the installed fallback), torchvision.ops.nms runs."""
    import torchvision.ops

    boxes, scores = random_boxes(7, 100)
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == reference_nms(
        boxes.numpy().astype(np.float64), scores.numpy(), 0.5
    )
    labels = torch.randint(0, 3, (100,), generator=torch.Generator().manual_seed(0))
    batched = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    for label in range(3):
        members = torch.nonzero(labels == label).flatten()
        expected = {
            int(members[i])
            for i in reference_nms(boxes[members].numpy().astype(np.float64), scores[members].numpy(), 0.5)
        }
        assert {int(i) for i in batched if labels[i] == label} == expected


def test_libraries_that_need_torchvision_import() -> None:
    code = "import timm, segment_anything, groundingdino.models; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_hook_is_a_no_op_for_other_modules() -> None:
    hook = torchvision_fallback._ImportHook()
    assert hook.find_spec("numpy") is None
