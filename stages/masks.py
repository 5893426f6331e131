"""`cft masks`: the mask store, one mask per (fine-tuning image, concept of its class)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.atomic import atomic_directory
from pipeline.config import MasksConfig, load_section
from stages.common import PARAMS_OPTION, user_errors


def masks(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset from `cft prepare`"),
    concepts: Path = typer.Option(Path("data/concepts"), help="concepts artifact from `cft concepts`"),
    out: Path = typer.Option(Path("data/masks"), help="mask store directory (fully rewritten)"),
    sheet: Path = typer.Option(Path("plots/masks/masks.png"), help="contact sheet: images over their concept masks"),
) -> None:
    """Segment every concept in every fine-tuning image (backend `annotated`: the data's part masks)."""
    with user_errors():
        config = load_section(params, "masks", MasksConfig)
        from pipeline.concepts import read_concepts
        from pipeline.manifest import read_manifest
        from pipeline.mask_store import write_mask_store
        from pipeline.masks_annotated import annotated_masks, mask_sheet
        from pipeline.subset import SUBSET_NAME, read_subset, subset_ids
        from pipeline.visualize import save_png

        table, _ = read_subset(subset / SUBSET_NAME)
        manifest = read_manifest(data / "manifest.parquet")
        results, size = annotated_masks(data, manifest, subset_ids(table, "finetune"), read_concepts(concepts), config.resolution)
        with atomic_directory(out) as staging:
            report = write_mask_store(staging, results, size, config.backend)
        save_png(mask_sheet(data, manifest, results[:24]), sheet)
    flags = report.column("flag").to_pylist()
    counts = ", ".join(f"{flag} {flags.count(flag)}" for flag in sorted(set(flags)))
    typer.echo(f"mask store {out}: {len(results)} images, {report.num_rows} concept masks at {size[0]}x{size[1]}; {counts}")
