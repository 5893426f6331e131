"""`cft evaluate`: every model on every split, accuracy (seen/unseen classes) and relevance mIoU."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config import EvaluateConfig, load_section, read_params
from stages.common import PARAMS_OPTION, user_errors


def evaluate(
    params: Path = PARAMS_OPTION,
    base: Path = typer.Option(Path("models/base"), help="the base model: the reference for forgetting"),
    finetuned: Path = typer.Option(Path("models/finetune"), help="one model artifact per method of `finetune.methods`"),
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset (which classes are seen)"),
    metrics: Path = typer.Option(Path("metrics/evaluate.json"), help="metrics JSON per model and split"),
    plots: Path = typer.Option(Path("plots/evaluate"), help="CSV and charts"),
) -> None:
    """Compare the base model and every fine-tuning method of `finetune.methods`, split by split."""
    with user_errors():
        config = load_section(params, "evaluate", EvaluateConfig)
        methods = (read_params(params).get("finetune") or {}).get("methods") or []
        named = {"base": base, **{method: finetuned / method for method in methods}}
        from pipeline.evaluation import evaluate_models, evaluation_splits, overlay_sample, summarise
        from pipeline.finetune_reports import write_evaluation_overlay, write_evaluation_reports
        from pipeline.manifest import read_manifest
        from pipeline.models import load_model_artifact
        from pipeline.subset import SUBSET_NAME, read_subset
        from pipeline.training import resolve_device

        device = resolve_device(config.device)
        manifest_path = data / "manifest.parquet"
        manifest = read_manifest(manifest_path)
        _, info = read_subset(subset / SUBSET_NAME)
        seen = {info["classes"].index(name) for name in info["seen_classes"]}
        used = {info["config"]["split"], info["config"]["val_split"], "pretrain"}
        splits = evaluation_splits(config, sorted(set(manifest.column("split").to_pylist()), key=_split_order), used)
        models = {}
        for name, directory in named.items():
            loaded, spec = load_model_artifact(directory)
            if spec["class_names"] != info["classes"]:
                raise ValueError(f"{directory}: the model's classes differ from the dataset's")
            models[name] = (loaded.to(device), spec)
        results = evaluate_models(models, manifest_path, manifest, splits, seen, config, device)
        reference = next(iter(models))
        summary = summarise(results, config.in_distribution, reference)
        write_evaluation_reports(results, summary, metrics, plots)
        if config.overlay_images and config.overlay_split in splits:
            images, masks, maps, captions = overlay_sample(models, manifest_path, manifest, config.overlay_split, config.overlay_images, device)
            write_evaluation_overlay(images, masks, maps, captions, plots / "relevance.png")
    for name, row in summary.items():
        shown = ", ".join(f"{key} {value:.3f}" for key, value in row.items())
        typer.echo(f"{name}: {shown}")


def _split_order(split: str) -> tuple[int, str]:
    from pipeline.config import WORLD_SPLITS

    return (WORLD_SPLITS.index(split) if split in WORLD_SPLITS else len(WORLD_SPLITS), split)
