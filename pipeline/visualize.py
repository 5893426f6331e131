"""Pictures for people: contact sheets of images with their masks, and simple charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def heatmap(image: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Positive relevance (normalised to its maximum) in the 'inferno' colours over a grey image."""
    from matplotlib import colormaps

    positive = np.clip(relevance, 0, None)
    scaled = positive / positive.max() if positive.max() > 0 else positive
    colours = (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.float32)
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True)
    return (0.35 * grey + 0.65 * colours).clip(0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image, darkened outside the mask."""
    weight = np.where(mask[..., None], 1.0, 0.25)
    return (image.astype(np.float32) * weight).astype(np.uint8)


def overlay_grid(images: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], captions: Sequence[str] | None = None, zoom: int = 4) -> Image.Image:
    """One row per image: the image, then one tile per panel (bool arrays: masks; float: relevance)."""
    count, height, width = images.shape[:3]
    titles = ["image", *(title for title, _ in panels)]
    tile_w, tile_h, label_h = width * zoom, height * zoom, 14
    sheet = Image.new("RGB", (len(titles) * (tile_w + 4) + 90, label_h + count * (tile_h + 4) + 2), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for column, title in enumerate(titles):
        draw.text((90 + column * (tile_w + 4) + 2, 1), title[:22], fill="black", font=font)
    for row in range(count):
        y = label_h + row * (tile_h + 4)
        if captions is not None:
            draw.text((2, y + tile_h // 2 - 6), captions[row][:14], fill="black", font=font)
        tiles = [images[row]]
        for _, maps in panels:
            tiles.append(mask_overlay(images[row], maps[row]) if maps.dtype == bool else heatmap(images[row], maps[row]))
        for column, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile).resize((tile_w, tile_h), Image.NEAREST), (90 + column * (tile_w + 4) + 2, y))
    return sheet


def grouped_bar_chart(values: dict[str, dict[str, float]], title: str, path: str | Path, ylabel: str) -> None:
    """Bars grouped by the outer key (e.g. split), one colour per inner key (e.g. model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(values)
    series = list(dict.fromkeys(name for inner in values.values() for name in inner))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * max(1, len(series)) / 2 + 2), 3.6), dpi=120)
    for index, name in enumerate(series):
        xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [values[g].get(name, np.nan) for g in groups], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), groups, rotation=30)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=len(series))
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def concept_label_map(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool concept masks -> (H, W) uint8 labels, k + 1 for the first concept covering a pixel."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for slot in range(masks.shape[0] - 1, -1, -1):
        labels[masks[slot]] = slot + 1
    return labels


def concept_sheet(images: Sequence[np.ndarray], results: Sequence[Any], columns: int = 6, tile: int = 128) -> Image.Image:
    """Images beside their concept masks, each concept in its colour and named below, with its QC flag.

    ``results`` are ``ImageMasks`` (one per image): masks in any resolution, drawn at ``tile`` pixels.
    """
    lines = max((len(r.concepts) for r in results), default=0) + 1
    line_h, gap = 11, 6
    cell_w, cell_h = 2 * tile + gap, tile + lines * line_h + gap
    rows = max(1, -(-len(results) // columns))
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (image, result) in enumerate(zip(images, results, strict=True)):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        picture = np.asarray(Image.fromarray(image).resize((tile, tile), Image.BILINEAR))
        labels = np.asarray(Image.fromarray(concept_label_map(result.masks)).resize((tile, tile), Image.NEAREST))
        colours = colorize_labels(labels).astype(np.float32)
        blended = np.where(labels[..., None] > 0, 0.4 * picture + 0.6 * colours, 0.5 * picture).astype(np.uint8)
        sheet.paste(Image.fromarray(picture), (x, y))
        sheet.paste(Image.fromarray(blended), (x + tile + 2, y))
        draw.text((x, y + tile), result.class_name[:40], fill="black", font=font)
        for slot, (concept, flag) in enumerate(zip(result.concepts, result.flags(), strict=True)):
            colour = tuple(int(c) for c in colorize_labels(np.array(slot + 1)))
            text = concept if flag == "ok" else f"{concept} [{flag}]"
            top = y + tile + (slot + 1) * line_h
            draw.rectangle((x + 2, top + 2, x + 9, top + 9), fill=colour)  # swatch: yellow text would not read on white
            draw.text((x + 13, top), text[:44], fill="black", font=font)
    return sheet
