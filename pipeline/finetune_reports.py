"""What `cft finetune` writes for people and for `dvc metrics` / `dvc plots`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.finetuning import FinetuneOutcome
from pipeline.reporting import write_csv
from pipeline.visualize import line_chart, overlay_grid, save_png


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_finetune_reports(outcome: FinetuneOutcome, metrics_path: str | Path, plots_dir: str | Path) -> None:
    plots_dir = Path(plots_dir)
    write_json(metrics_path, {key: (_finite(v) if not isinstance(v, dict) else {k: _finite(x) for k, x in v.items()}) for key, v in outcome.summary.items()})
    write_csv(plots_dir / "curves.csv", outcome.curves)
    keys = ["train_background_share", "val_unseen_accuracy", "val_seen_accuracy"]
    line_chart({key: [row[key] for row in outcome.curves] for key in keys}, "epoch (1 = base model)", f"finetune/{outcome.summary['method']}", plots_dir / "curves.png")
    overlay = outcome.overlay
    if len(overlay["images"]):
        panels = [("training mask", overlay["masks"]), ("relevance before", overlay["before"]), (f"after (epoch {outcome.best_epoch})", overlay["after"])]
        save_png(overlay_grid(overlay["images"], panels, overlay.get("captions")), plots_dir / "relevance.png")
