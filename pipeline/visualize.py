"""Pictures for people: contact sheets of images with their masks, and simple charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.atomic import write_with

# Distinct colours for part labels 1..12 (0 = background stays dark).
PART_PALETTE = np.array(
    [
        [20, 20, 20], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
        [220, 190, 255],
    ],
    dtype=np.uint8,
)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    return PART_PALETTE[np.minimum(labels, len(PART_PALETTE) - 1)]


def contact_sheet(
    images: np.ndarray,
    captions: Sequence[str],
    labels: np.ndarray | None = None,
    columns: int = 8,
    zoom: int = 3,
) -> Image.Image:
    """A grid of images (uint8, N×H×W×3); with ``labels`` each tile shows the image over its part map."""
    count, height, width = images.shape[:3]
    tiles = images if labels is None else np.concatenate([images, colorize_labels(labels)], axis=1)
    tile_h, tile_w = tiles.shape[1] * zoom, width * zoom
    caption_h = 12
    rows = max(1, -(-count // columns))
    sheet = Image.new("RGB", (columns * (tile_w + 4), rows * (tile_h + caption_h + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index in range(count):
        row, col = divmod(index, columns)
        x, y = col * (tile_w + 4) + 2, row * (tile_h + caption_h + 4) + 2
        tile = Image.fromarray(tiles[index]).resize((tile_w, tile_h), Image.NEAREST)
        sheet.paste(tile, (x, y))
        draw.text((x, y + tile_h), captions[index][:18], fill="black", font=font)
    return sheet


def save_png(image: Image.Image, path: str | Path) -> None:
    write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def bar_chart(values: dict[str, float], title: str, path: str | Path, ylabel: str = "accuracy") -> None:
    """A labelled bar chart PNG (one bar per key), for per-split metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(values) + 1.5), 3.2), dpi=120)
    names = list(values)
    bars = ax.bar(names, [values[name] for name in names], color="#4477aa")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def line_chart(series: dict[str, Sequence[float]], xlabel: str, title: str, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name, marker=".")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
