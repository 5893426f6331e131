"""The masks stage's contact sheet (plots/masks/masks.png): each image, its concept masks in colour,
and a legend naming each concept beside a swatch of its colour."""

from __future__ import annotations

import numpy as np

from pipeline.masks.store import ImageMasks
from pipeline.reports.charts import PART_PALETTE, concept_sheet

TILE = 64
SIZE = (16, 16)


def block(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=bool)
    mask[rows, cols] = True
    return mask


def results() -> list[ImageMasks]:
    cat = np.stack([block(slice(0, 4), slice(0, 4)), np.zeros(SIZE, bool), block(slice(12, 16), slice(8, 16))])
    fish = np.stack([block(slice(4, 12), slice(4, 12))])
    return [
        ImageMasks(
            "img/cat",
            "cat",
            ["ears", "whiskers", "a very long concept name that cannot fit in its cell at all"],
            cat,
            boxes=[1, 1, 1],
        ),
        ImageMasks("img/fish", "fish", ["fin"], fish, boxes=[1]),
    ]


def colours_in(region: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in pixel) for pixel in region.reshape(-1, 3)}


def test_legend_names_each_concept_beside_its_colour() -> None:
    black = [np.zeros((32, 32, 3), np.uint8)] * 2  # on black, a mask's overlay is exactly 0.6 x its colour
    shown = results()
    sheet = np.asarray(concept_sheet(black, shown, columns=2, tile=TILE))
    lines, line_h = 1 + 3, 11  # the class, then one line per concept of the image with the most
    cell_w, cell_h = 2 * TILE + 6, TILE + lines * line_h + 6
    assert sheet.shape == (cell_h, 2 * cell_w, 3)  # the legend adds its lines below the images

    for index, result in enumerate(shown):
        cell = sheet[:, index * cell_w : (index + 1) * cell_w]
        legend = cell[TILE:]
        for slot, concept in enumerate(result.concepts):
            colour = tuple(int(c) for c in PART_PALETTE[slot + 1])
            line = legend[(slot + 1) * line_h : (slot + 2) * line_h]
            # the swatch of the concept's colour starts its line, even where the mask is empty ("whiskers")
            assert colour in colours_in(line[:, :12]), (result.image_id, concept)
            # and its name follows in dark text
            assert (line[:, 12:].max(axis=-1) < 100).sum() > 5, (result.image_id, concept)
        # the overlay shows each non-empty mask in the colour its legend line gives
        overlay = cell[:TILE, TILE + 2 : 2 * TILE + 2].astype(int)
        for slot in range(len(result.concepts)):
            if result.masks[slot].any():
                row, col = (int(v) * TILE // SIZE[0] for v in np.argwhere(result.masks[slot])[0])
                np.testing.assert_allclose(overlay[row, col], 0.6 * PART_PALETTE[slot + 1].astype(int), atol=1)
        # lines below the image's own concepts stay blank (past the last line's descenders)
        assert (legend[(len(result.concepts) + 1) * line_h + 3 :] == 255).all()
    # the empty mask's colour is nowhere in the overlay: only the legend shows it
    assert tuple(int(c) for c in (0.6 * PART_PALETTE[2]).astype(np.uint8)) not in colours_in(
        sheet[:TILE, TILE + 2 : 2 * TILE + 2]
    )
    # a long name is cut to its cell: nothing is drawn in the gap between the cells
    assert (sheet[TILE:, cell_w - 4 : cell_w] == 255).all()


def test_legend_grows_with_the_concepts() -> None:
    pictures = [np.zeros((32, 32, 3), np.uint8)] * 2
    one = np.asarray(concept_sheet(pictures[:1], results()[1:], columns=1, tile=TILE))
    three = np.asarray(concept_sheet(pictures[:1], results()[:1], columns=1, tile=TILE))
    assert three.shape[0] - one.shape[0] == 2 * 11  # two more legend lines
    assert one.shape[0] > TILE + 2 * 11  # the class line and the concept's line below the image
