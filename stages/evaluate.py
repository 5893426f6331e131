"""`cft evaluate <benchmark> <model>...`: models on one benchmark of `evaluate.benchmarks`.

DVC runs one stage per (benchmark, model) (`evaluate@<benchmark>-<model>`), so a change to one
method re-scores only that method. Several models given in one call share each decoded batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.config.evaluate import EvaluateConfig, load_evaluate
from pipeline.utils.atomic import atomic_directory
from stages.common import PARAMS_OPTION, user_errors

if TYPE_CHECKING:
    import torch

    from pipeline.utils.distributed import Ranks


def evaluate(
    benchmark: str = typer.Argument(..., help="a benchmark name under evaluate.benchmarks in the params file"),
    models: list[str] = typer.Argument(..., help="models of evaluate.models: base, or a method of finetune.methods"),
    params: Path = PARAMS_OPTION,
    models_dir: Path = typer.Option(
        Path("models"), "--models", help="folder of model artifacts, one per model name (models/base, models/cft, ...)"
    ),
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare` (kind split reads it)"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset (which classes are seen)"),
    out: Path = typer.Option(
        None, help="results of the benchmark, one folder per model; default results/evaluate/<benchmark>"
    ),
    work: Path = typer.Option(
        None, help="finished parts, for resuming (local scratch); default checkpoints/evaluate/<benchmark>"
    ),
) -> None:
    """Accuracy per protocol (seen/unseen classes) and relevance scores where the benchmark has masks."""
    with user_errors():
        config = load_evaluate(params)
        if benchmark not in config.benchmarks:
            raise ValueError(
                f"{params}: no benchmark '{benchmark}' under evaluate.benchmarks; defined: {sorted(config.benchmarks)}"
            )
        unknown = [model for model in models if model not in config.models]
        if unknown:
            raise ValueError(f"{params}: {unknown} not in evaluate.models {config.models}")
        out = out or Path("results/evaluate") / benchmark
        work = (work or Path("checkpoints/evaluate") / benchmark) / "+".join(models)
        from pipeline.utils.distributed import session

        model_dirs = {model: models_dir / model for model in models}
        with session(config.device) as (ranks, device):
            summary = _evaluate(benchmark, config, model_dirs, data, subset, out, work, ranks, device)
    for model, row in summary.items():  # empty on every rank but the main one under torchrun
        shown = ", ".join(f"{key} {value:.3f}" for key, value in row.items() if isinstance(value, float))
        typer.echo(f"{benchmark} / {model}: {shown}")


def _evaluate(
    name: str,
    config: EvaluateConfig,
    model_dirs: dict[str, Path],
    data: Path,
    subset: Path,
    out: Path,
    work: Path,
    ranks: Ranks,
    device: torch.device,
) -> dict[str, Any]:
    """The evaluation on this rank's device; under torchrun each rank scores its parts and the
    main one writes the results (returned there; the others return nothing)."""
    from pipeline.benchmarks.files import OVERLAY_NAME
    from pipeline.benchmarks.reports import benchmark_info, write_model_results, write_overlay_arrays
    from pipeline.benchmarks.runner import (
        ModelUnderTest,
        relevance_support,
        run_benchmark,
        run_fingerprint,
        run_metrics,
    )
    from pipeline.benchmarks.sources import open_source
    from pipeline.data.manifest import read_manifest
    from pipeline.data.preprocess import InputTransform
    from pipeline.data.subset import SUBSET_NAME, read_subset
    from pipeline.models.factory import load_model_artifact
    from pipeline.utils.device import Normalizer

    benchmark = config.benchmarks[name]
    _, info = read_subset(subset / SUBSET_NAME)
    models: list[ModelUnderTest] = []
    specs = []
    for model_name, directory in model_dirs.items():
        model, spec = load_model_artifact(directory)
        if spec["class_names"] != info["classes"]:
            raise ValueError(f"{directory}: the model's classes differ from the dataset's ({subset / SUBSET_NAME})")
        models.append(
            ModelUnderTest(
                model_name,
                model.to(device).eval(),
                Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"]).to(device),
            )
        )
        specs.append(spec)
    transforms = {InputTransform.from_preprocessing(spec["preprocessing"]) for spec in specs}
    if len(transforms) > 1:
        raise ValueError(
            f"the models {list(model_dirs)} resize or crop differently ({transforms}); evaluate them in separate runs"
        )
    transform = transforms.pop()
    class_names = specs[0]["class_names"]
    seen = {class_names.index(c) for c in info["seen_classes"]}
    manifest_path = data / "manifest.parquet"
    reads_split = benchmark.kind == "split" or (benchmark.of is not None and benchmark.of.kind == "split")
    manifest = read_manifest(manifest_path) if reads_split else None
    source = open_source(name, benchmark, class_names, transform, manifest_path, manifest, config.relevance)
    if source.has_masks and config.relevance:
        relevance_support(models, device, transform.size)
    settings = {
        "benchmark": benchmark.model_dump(),
        "relevance": config.relevance,
        "relevance_target": config.relevance_target,
        "relevance_images": config.relevance_images,
        "part_size": config.part_size,
        "models": list(model_dirs),
    }
    listing = source.images.files if source.images is not None else [str(len(source))]
    fingerprint = run_fingerprint(list(model_dirs.values()), settings, listing)
    run = run_benchmark(source, models, seen, config, work, fingerprint, device, ranks=ranks)
    if not ranks.main:
        return {}
    trained = {
        model_name: list((spec.get("finetune") or {}).get("objective", {}).get("corruptions", []))
        for model_name, spec in zip(model_dirs, specs, strict=True)
    }
    results = run_metrics(source, run, seen, trained)
    info_row = benchmark_info(source, {"path": benchmark.path, "limit": benchmark.limit})
    if source.families is not None:
        info_row["families"] = source.families
    for entry in models:
        with atomic_directory(out / entry.name) as staging:
            write_model_results(
                source, run, entry.name, results[entry.name], info_row, staging, seen, trained[entry.name]
            )
            if config.overlay_images and source.has_masks and config.relevance:
                write_overlay_arrays(source, entry, config.overlay_images, device, staging / OVERLAY_NAME)
    return results
