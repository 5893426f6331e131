"""What `cft finetune` writes for people and for `dvc metrics` / `dvc plots`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.reports.base import write_csv
from pipeline.reports.charts import line_chart, overlay_grid, save_png
from pipeline.training.finetune import FinetuneOutcome
from pipeline.utils.atomic import write_json


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_finetune_reports(outcome: FinetuneOutcome, metrics_path: str | Path, plots_dir: str | Path) -> None:
    plots_dir = Path(plots_dir)
    write_json(
        metrics_path,
        {
            key: (_finite(v) if not isinstance(v, dict) else {k: _finite(x) for k, x in v.items()})
            for key, v in outcome.summary.items()
        },
    )
    write_csv(plots_dir / "curves.csv", outcome.curves)
    keys = ["train_background_share", "val_unseen_accuracy", "val_seen_accuracy"]
    line_chart(
        {key: [row[key] for row in outcome.curves] for key in keys},
        "epoch (1 = base model)",
        f"finetune/{outcome.summary['method']}",
        plots_dir / "curves.png",
    )
    overlay = outcome.overlay
    if len(overlay["images"]):
        panels = [
            ("training mask", overlay["masks"]),
            ("relevance before", overlay["before"]),
            (f"after (epoch {outcome.best_epoch})", overlay["after"]),
        ]
        save_png(overlay_grid(overlay["images"], panels, overlay.get("captions")), plots_dir / "relevance.png")


def card_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning measurements a model card shows: the kept epoch against the base model."""
    selected, base = summary["selected"], summary["base"]
    return {
        "images": summary["images"],
        "validation accuracy, seen classes (base model)": f"{selected['val_seen_accuracy']:.4f} ({base['val_seen_accuracy']:.4f})",
        "validation accuracy, unseen classes (base model)": f"{selected['val_unseen_accuracy']:.4f} ({base['val_unseen_accuracy']:.4f})",
        "background share of relevance on the fine-tuning images (base model)": f"{selected['train_background_share']:.4f} ({base['train_background_share']:.4f})",
    }
