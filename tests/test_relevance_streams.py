"""The two streams of an AttnLRP pass: what unpatched code does with them, and what a step costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import load_section
from pipeline.config.base import BaseConfig
from pipeline.config.data import WorldConfig
from pipeline.data.world.classes import CLASSES
from pipeline.models.factory import create_model
from pipeline.relevance.attnlrp import attnlrp
from pipeline.relevance.streams import TwoStreams

REPO = Path(__file__).resolve().parents[1]


def pair() -> TwoStreams:
    generator = torch.Generator().manual_seed(0)
    return TwoStreams(torch.randn(2, 3, 4, generator=generator), torch.randn(2, 3, 4, generator=generator))


def assert_each_stream(result: TwoStreams, operation: object, streams: TwoStreams) -> None:
    assert isinstance(result, TwoStreams)
    torch.testing.assert_close(result.normal, operation(streams.normal), rtol=0, atol=0)
    torch.testing.assert_close(result.linear, operation(streams.linear), rtol=0, atol=0)


def test_torch_functions_methods_and_operators_run_on_each_stream_with_shared_tensors() -> None:
    x, weight, token = pair(), torch.randn(5, 4), torch.randn(2, 1, 4)
    assert_each_stream(F.linear(x, weight), lambda s: F.linear(s, weight), x)
    assert_each_stream(torch.cat([token, x], dim=1), lambda s: torch.cat([token, s], dim=1), x)
    assert_each_stream(x.flatten(1).transpose(0, 1), lambda s: s.flatten(1).transpose(0, 1), x)
    assert_each_stream(x + token, lambda s: s + token, x)
    assert_each_stream(2.0 * x - token, lambda s: 2.0 * s - token, x)
    assert_each_stream(-x[:, 1:].mean(dim=1), lambda s: -s[:, 1:].mean(dim=1), x)
    summed = x + x  # two pairs: stream with stream
    torch.testing.assert_close(summed.linear, 2 * x.linear)
    first, *_ = x.unbind(1)  # tuples of results pair up element by element
    assert_each_stream(first, lambda s: s[:, 0], x)
    assert x.shape == (2, 3, 4) and len(x) == 2 and x.dtype == torch.float32  # the same for both streams


def test_in_place_operators_change_both_streams() -> None:
    x = pair()
    before = TwoStreams(x.normal.clone(), x.linear.clone())
    x.mul_(3.0)
    torch.testing.assert_close(x.normal, 3.0 * before.normal)
    torch.testing.assert_close(x.linear, 3.0 * before.linear)


def world_vit() -> torch.nn.Module:
    """The world's ViT as `cft base` builds it from the repository's params.yaml, random weights."""
    torch.manual_seed(0)
    config = load_section(REPO / "params.yaml", "base", BaseConfig)
    return create_model(config, len(CLASSES), image_size=WorldConfig().image_size).train()


def step_flops(step: object) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


@pytest.mark.parametrize("batch", [8, 32])
def test_exact_cft_step_costs_at_most_three_plain_steps_in_multiply_adds(batch: int) -> None:
    """Counted, not timed: a CFT step (exact AttnLRP map with its graph, a loss on it, backward)
    does at most 3× the floating-point work of a plain step on the world's ViT. Over a doubled batch
    it was 5.0×: every backward product of a layer ran over both streams."""
    model = world_vit()
    generator = torch.Generator().manual_seed(1)
    size = WorldConfig().image_size
    x = torch.randn(batch, 3, size, size, generator=generator)
    y = torch.randint(0, len(CLASSES), (batch,), generator=generator)

    def plain() -> None:
        F.cross_entropy(model(x), y).backward()

    def guided() -> None:
        relevance = attnlrp(model, x, y, create_graph=True)
        (relevance.upsampled().square().mean() + F.cross_entropy(relevance.logits, y)).backward()

    ratio = step_flops(guided) / step_flops(plain)
    assert 2.0 < ratio <= 3.0, ratio
