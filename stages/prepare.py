"""`cft prepare`: build the dataset artifact (manifest + images) from the ``data`` params section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pipeline.config import load_section
from pipeline.config.data import PrepareConfig
from pipeline.utils.atomic import atomic_directory, write_json
from pipeline.utils.dvc_inputs import check_declared
from stages.common import PARAMS_OPTION, user_errors


def prepare(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="dataset artifact directory (fully rewritten)"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset artifact directory (fully rewritten)"),
    metrics: Path = typer.Option(Path("results/prepare.json"), help="summary metrics JSON"),
    workers: int = typer.Option(
        0, help="rendering processes (world) or decoding threads (image folder); 0 = automatic"
    ),
) -> None:
    """Build the dataset: the built-in world (`data.source: world`), an image folder (`imagefolder`) or Waterbirds."""
    with user_errors():
        config = load_section(params, "data", PrepareConfig)
        check_declared(
            {"data.imagefolder.class_names": config.imagefolder.class_names if config.imagefolder else None}, params
        )
        from pipeline.data.subset import SUBSET_NAME, write_subset

        if config.source in ("imagefolder", "waterbirds"):
            chosen, metrics_row, lines = _files(config, out, workers)
        else:
            chosen, metrics_row, lines = _world(config, out, workers)
        with atomic_directory(subset) as staging:
            write_subset(staging / SUBSET_NAME, chosen)
        seen = json.loads(chosen.schema.metadata[b"cft.subset"])["seen_classes"]
        write_json(
            metrics,
            {
                **metrics_row,
                "subset": {
                    "seen_classes": len(seen),
                    "finetune_images": chosen.column("role").to_pylist().count("finetune"),
                },
            },
        )
    for line in lines:
        typer.echo(line)
    shown = ", ".join(seen[:10]) + (f", ... ({len(seen)} in all)" if len(seen) > 10 else "")
    typer.echo(f"fine-tuning subset {subset}: seen classes {shown}")


def _world(config: PrepareConfig, out: Path, workers: int) -> tuple[Any, dict[str, Any], list[str]]:
    from pipeline.data.manifest import read_manifest
    from pipeline.data.subset import select_subset
    from pipeline.data.world.build import build_world

    with atomic_directory(out) as staging:
        summary = build_world(config, staging, workers=workers or None)
    chosen = select_subset(read_manifest(out / "manifest.parquet"), config.subset)
    counts = ", ".join(f"{split} {info['images']}" for split, info in summary["splits"].items())
    return chosen, {"splits": summary["splits"]}, [f"prepared {out}: {len(summary['classes'])} classes; {counts}"]


def _files(config: PrepareConfig, out: Path, workers: int) -> tuple[Any, dict[str, Any], list[str]]:
    from pipeline.data.selection import write_selection

    if config.source == "waterbirds":
        from pipeline.data.waterbirds import select_waterbirds

        assert config.waterbirds is not None  # the config validator requires it
        manifest, chosen, report = select_waterbirds(config.waterbirds, config.subset, out, workers or None)
    else:
        from pipeline.data.imagefolder import select_imagefolder

        assert config.imagefolder is not None  # the config validator requires it
        manifest, chosen, report = select_imagefolder(config.imagefolder, config.subset, out, workers or None)
    with atomic_directory(out) as staging:
        write_selection(staging, manifest, report)
    replaced = sum(report["replaced"].values())
    lines = [
        f"prepared {out}: {report['classes']} classes from {report['root']}; {report['finetune_images']} fine-tuning and "
        f"{report['val_images']} validation images (nothing copied: the manifest points at the files)",
        f"checked {report['checked']} files: {replaced} replaced {report['replaced']}, kept and read as RGB {report['converted']} (details: {out}/report.json)",
    ]
    keys = ("classes", "seen_classes", "finetune_images", "val_images", "checked", "replaced", "converted")
    return chosen, {config.source: {key: report[key] for key in keys}}, lines
