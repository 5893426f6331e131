"""What `cft analyze` writes: the per-layer and per-head tables (CSV, for `dvc plots`), the summary
per model (JSON, DVC metrics) and one picture with a panel per measurement, layer on the x axis and
a line per model (solid: clean probe images, dashed: corrupted)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.analysis.measure import Analysis
from pipeline.reports.base import write_csv
from pipeline.utils.atomic import write_json, write_with

PANELS = {
    "logit_lens_accuracy": "logit-lens accuracy (answer formed by this depth)",
    "attention_distance": "mean attention distance (pixels)",
    "attention_entropy": "attention entropy (nats)",
    "object_attention": "class token's attention on the object",
    "active_share": "share of active MLP units",
    "hoyer": "Hoyer sparsity of tokens",
    "cka_to_base": "linear CKA with the base model",
    "cka_clean_corrupted": "linear CKA, clean vs corrupted",
}
COMPACT = {
    "accuracy": "acc",
    "accuracy_corrupted": "acc_c",
    "cka_last": "cka_last",
    "cka_last_corrupted": "cka_last_c",
    "attention_distance": "attn_dist",
    "active_share": "active",
    "sae_fvu": "sae_fvu",
    "sae_overlap": "sae_overlap",
}


def write_analysis(result: Analysis, metrics_path: Path, tables_dir: Path, figure_path: Path) -> None:
    write_csv(tables_dir / "layers.csv", [_rounded(row) for row in result.layers])
    if result.heads:
        write_csv(tables_dir / "heads.csv", [_rounded(row) for row in result.heads])
    write_json(
        metrics_path,
        {
            model: {short: round(row[key], 4) for key, short in COMPACT.items() if key in row}
            for model, row in result.models.items()
        },
    )
    write_json(tables_dir / "summary.json", {"models": result.models, "notes": result.notes})
    layer_figure(result, figure_path)


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()}


def layer_figure(result: Analysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [key for key in PANELS if any(key in row for row in result.layers)]
    columns = 3
    rows = math.ceil((len(panels) + 1) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), dpi=110, squeeze=False)
    models = list(result.models)
    colours = {model: plt.get_cmap("tab10")(i % 10) for i, model in enumerate(models)}
    for ax, key in zip(axes.flat, panels, strict=False):
        for model in models:
            for kind, style in (("clean", "-"), ("corrupted", "--")):
                points = [
                    (row["layer"], row[key])
                    for row in result.layers
                    if row["model"] == model and row["input"] == kind and key in row
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    label = model if kind == "clean" else None
                    ax.plot(xs, ys, style, color=colours[model], marker="o", markersize=3, label=label)
        ax.set_title(PANELS[key], fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    sae_ax = axes.flat[len(panels)]
    width = 0.4
    xs = range(len(models))
    sae_ax.bar(
        [x - width / 2 for x in xs], [result.models[m]["sae_fvu"] for m in models], width, label="clean", color="0.35"
    )
    sae_ax.bar(
        [x + width / 2 for x in xs],
        [result.models[m]["sae_fvu_corrupted"] for m in models],
        width,
        label="corrupted",
        color="0.7",
    )
    sae_ax.set_xticks(list(xs), models, rotation=30, fontsize=7)
    sae_ax.set_title("base model's SAE: variance unexplained (held out)", fontsize=9)
    sae_ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) + 1 :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncols=min(len(models), 6),
        fontsize=8,
        frameon=False,
        title="models: solid = clean probe images, dashed = corrupted",
        title_fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
