"""The relevance overlay (pipeline.reports.charts.overlay_grid): a colour bar, class names, no blank margin."""

from __future__ import annotations

import numpy as np

from pipeline.reports.charts import overlay_grid


def picture(captions: list[str] | None) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(80, 170, (2, 16, 16, 3), dtype=np.uint8)  # no saturated colour of its own
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[:, 4:12, 4:12] = True
    maps = rng.normal(size=(2, 16, 16)).astype(np.float32)
    return np.asarray(overlay_grid(images, [("object", masks), ("cft", maps)], captions))


def test_a_colour_bar_explains_the_signed_scale() -> None:
    pixels = picture(["fish", "car"]).astype(int)
    # the maps are drawn with alpha over grey, so saturated red and blue appear only in the colour bar
    red = (pixels[..., 0] > 230) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    blue = (pixels[..., 2] > 230) & (pixels[..., 0] < 40) & (pixels[..., 1] < 40)
    assert red.any() and blue.any()
    columns = np.flatnonzero(red.any(axis=0) | blue.any(axis=0))
    assert columns.min() > 0.8 * pixels.shape[1]  # at the right, beside the tiles


def test_rows_carry_the_class_name_and_no_blank_margin_is_left() -> None:
    named, unnamed = picture(["fish", "car"]), picture(None)
    ink = lambda image: np.flatnonzero((image < 200).any(axis=(0, 2)))  # noqa: E731
    assert ink(unnamed)[0] < 0.03 * unnamed.shape[1]  # tiles start at the left edge
    # the caption is drawn left of the first tile: the named picture has ink further left
    assert ink(named)[0] < ink(unnamed)[0] or named.shape[1] > unnamed.shape[1]
    assert not np.array_equal(named[:, : named.shape[1] // 10], np.full_like(named[:, : named.shape[1] // 10], 255))
