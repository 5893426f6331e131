"""Pictures for people: contact sheets of images with their masks, and simple charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.utils.atomic import write_with

# Distinct colours for part labels 1..12 (0 = background stays dark).
PART_PALETTE = np.array(
    [
        [20, 20, 20],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
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


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image, darkened outside the mask."""
    weight = np.where(mask[..., None], 1.0, 0.25)
    return (image.astype(np.float32) * weight).astype(np.uint8)


def overlay_grid(
    images: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], captions: Sequence[str] | None = None, zoom: int = 4
) -> Image.Image:
    """One row per image: the image, then one tile per panel (bool arrays: masks; float: relevance).

    Each relevance map is divided by its own largest magnitude and drawn over the grey image in a
    diverging scale (red: evidence for the class, blue: against), explained by the colour bar;
    each row is labelled with its caption (the class), and the columns with the panel names.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    count, height, width = images.shape[:3]
    columns = 1 + len(panels)
    has_maps = any(maps.dtype != bool for _, maps in panels)
    side, gap = max(0.9, min(2.0, zoom * max(height, width) / 64)), 0.05  # inches
    left = 0.3 if captions is not None else 0.05
    right = 1.0 if has_maps else 0.05
    top, bottom = 0.3, 0.05
    fig_w, fig_h = left + columns * side + (columns - 1) * gap + right, top + count * side + (count - 1) * gap + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    for row in range(count):
        grey = images[row].astype(np.float32).mean(axis=-1) / 255.0
        y = fig_h - top - (row + 1) * side - row * gap
        axes = [
            fig.add_axes(((left + column * (side + gap)) / fig_w, y / fig_h, side / fig_w, side / fig_h))
            for column in range(columns)
        ]
        axes[0].imshow(images[row], interpolation="nearest")
        for ax, (_, maps) in zip(axes[1:], panels, strict=True):
            if maps.dtype == bool:
                ax.imshow(mask_overlay(images[row], maps[row]), interpolation="nearest")
                continue
            relevance = maps[row].astype(np.float32)
            peak = float(np.abs(relevance).max())
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(
                relevance / peak if peak > 0 else relevance,
                cmap="bwr",
                vmin=-1,
                vmax=1,
                alpha=0.7,
                interpolation="nearest",
            )
        if captions is not None:
            axes[0].set_ylabel(captions[row][:18], fontsize=8)
        if row == 0:
            for ax, title in zip(axes, ["image", *(title for title, _ in panels)], strict=True):
                ax.set_title(title[:22], fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    if has_maps:
        bar_height = min(fig_h - top - bottom, 3.0)
        cax = fig.add_axes(
            ((fig_w - right + 0.15) / fig_w, (fig_h - top - bar_height) / fig_h, 0.15 / fig_w, bar_height / fig_h)
        )
        bar = fig.colorbar(ScalarMappable(norm=Normalize(-1, 1), cmap="bwr"), cax=cax)
        bar.set_label("relevance / largest |relevance|\n(red: for the class)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def grouped_bar_chart(
    values: dict[str, dict[str, float]],
    title: str,
    path: str | Path,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.15),
) -> None:
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
    ax.set_ylim(*ylim)
    if ylim[0] < 0:
        ax.axhline(0.0, color="black", linewidth=0.6)
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


def concept_sheet(
    images: Sequence[np.ndarray], results: Sequence[Any], columns: int = 6, tile: int = 128
) -> Image.Image:
    """Images beside their concept masks, with a legend under each: the class, then one line per
    concept, a swatch of the concept's colour in the overlay and its name, with its QC flag when the
    mask is not used (e.g. ``wings [noisy]``). Overlapping masks show the first concept's colour.

    ``results`` are ``ImageMasks`` (one per image): masks in any resolution, drawn at ``tile`` pixels.
    """
    lines = max((len(r.concepts) for r in results), default=0) + 1
    line_h, gap, swatch = 11, 6, 8
    cell_w, cell_h = 2 * tile + gap, tile + lines * line_h + gap
    rows = max(1, -(-len(results) // columns))
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    def fitted(text: str, width: float) -> str:
        """``text``, shortened with an ellipsis to fit ``width`` pixels (names never run into the next cell)."""
        if draw.textlength(text, font=font) <= width:
            return text
        while text and draw.textlength(text + "…", font=font) > width:
            text = text[:-1]
        return text + "…"

    for index, (image, result) in enumerate(zip(images, results, strict=True)):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        picture = np.asarray(Image.fromarray(image).resize((tile, tile), Image.BILINEAR))
        labels = np.asarray(Image.fromarray(concept_label_map(result.masks)).resize((tile, tile), Image.NEAREST))
        colours = colorize_labels(labels).astype(np.float32)
        blended = np.where(labels[..., None] > 0, 0.4 * picture + 0.6 * colours, 0.5 * picture).astype(np.uint8)
        sheet.paste(Image.fromarray(picture), (x, y))
        sheet.paste(Image.fromarray(blended), (x + tile + 2, y))
        draw.text((x, y + tile), fitted(result.class_name, cell_w - gap), fill="black", font=font)
        for slot, (concept, flag) in enumerate(zip(result.concepts, result.flags(), strict=True)):
            colour = tuple(int(c) for c in colorize_labels(np.array(slot + 1)))
            note = "" if flag == "ok" else f" [{flag}]"  # kept whole when a long name is shortened
            text = fitted(concept, cell_w - gap - swatch - 5 - draw.textlength(note, font=font)) + note
            top = y + tile + (slot + 1) * line_h
            # a swatch beside black text: names written in their own colour would not read (yellow on white)
            draw.rectangle((x + 2, top + 2, x + 1 + swatch, top + 1 + swatch), fill=colour)
            draw.text((x + swatch + 5, top), text, fill="black", font=font)
    return sheet
