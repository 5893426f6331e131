"""`cft masks`: the mask store, one mask per (fine-tuning image, concept of its class)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config import load_section
from pipeline.config.masks import MasksConfig
from pipeline.utils.atomic import atomic_directory, write_json
from pipeline.utils.dvc_inputs import check_declared
from stages.common import PARAMS_OPTION, user_errors


def masks(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset from `cft prepare`"),
    concepts: Path = typer.Option(Path("data/concepts"), help="concepts artifact from `cft concepts`"),
    out: Path = typer.Option(Path("data/masks"), help="mask store directory (fully rewritten)"),
    work: Path = typer.Option(
        Path("checkpoints/masks"),
        help="finished parts of an interrupted run (grounded_sam; local scratch, not a DVC output)",
    ),
    sheet: Path = typer.Option(
        Path("plots/masks/masks.png"), help="contact sheet: images with their named concept masks"
    ),
    metrics: Path | None = typer.Option(None, help="QC summary JSON (flag counts, usable images)"),
) -> None:
    """Segment every concept in every fine-tuning image (backend `annotated`: the data's part masks;
    `grounded_sam`: GroundingDINO boxes, then SAM masks)."""
    with user_errors():
        config = load_section(params, "masks", MasksConfig)
        if config.backend == "grounded_sam":
            grounding, sam = config.grounded_sam.grounding, config.grounded_sam.sam
            check_declared(
                {
                    "masks.grounded_sam.grounding.checkpoint": grounding.checkpoint,
                    "masks.grounded_sam.grounding.config": grounding.config
                    if Path(grounding.config).is_file()
                    else None,
                    "masks.grounded_sam.grounding.text_encoder": grounding.text_encoder
                    if Path(grounding.text_encoder).is_dir()
                    else None,
                    "masks.grounded_sam.sam.checkpoint": sam.checkpoint,
                },
                params,
            )
        from pipeline.masks.backends import build_mask_store
        from pipeline.utils.distributed import session

        with session(config.grounded_sam.device) as (ranks, _):
            if not ranks.main:  # under torchrun: this rank's share of the parts; the main rank writes
                build_mask_store(config, data, subset, concepts, out, work, None, ranks=ranks)
                return
            with atomic_directory(out) as staging:
                summary = build_mask_store(config, data, subset, concepts, staging, work, sheet, ranks=ranks)
            assert summary is not None  # the main rank always builds the store
        if metrics is not None:
            write_json(
                metrics,
                {
                    "images": summary.images,
                    "masks": summary.masks,
                    "flags": summary.flags,
                    "usable_images": summary.images - len(summary.unusable_images),
                    "fallback_images": summary.flags.get("fallback", 0),
                },
            )
    counts = ", ".join(f"{flag} {count}" for flag, count in summary.flags.items())
    typer.echo(
        f"mask store {out}: {summary.images} images, {summary.masks} masks at {summary.resolution[0]}x{summary.resolution[1]}; {counts}"
    )
    if summary.unusable_images:
        typer.secho(
            f"{len(summary.unusable_images)} image(s) have no usable mask and will be skipped by fine-tuning, e.g. {summary.unusable_images[:3]} (see masks.parquet)",
            fg=typer.colors.YELLOW,
        )
