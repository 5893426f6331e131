"""`cft analyze`: what fine-tuning changed inside the models (attention, representations, logit
lens, sparsity, a sparse autoencoder), every model against the base model on the same probe images."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.config.analyze import load_analyze
from stages.common import PARAMS_OPTION, user_errors


def analyze(
    params: Path = PARAMS_OPTION,
    models_dir: Path = typer.Option(Path("models"), "--models", help="folder of model artifacts (models/base, ...)"),
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare` (the probe images)"),
    metrics: Path = typer.Option(Path("results/analyze.json"), help="summary per model (DVC metrics)"),
    tables: Path = typer.Option(Path("plots/analyze"), help="layers.csv, heads.csv, summary.json"),
    figure: Path = typer.Option(Path("plots/analyze/layers.png"), help="one panel per measurement, by layer"),
) -> None:
    """Per layer: attention entropy and distance, object attention, logit lens, sparsity, CKA with the base model.

    Under torchrun (``torchrun --nproc-per-node=N --no-python cft analyze ...``) the (model, input)
    passes are shared between the ranks and rank 0 writes."""
    started = time.perf_counter()
    with user_errors():
        config = load_analyze(params)
        from pipeline.analysis.figures import write_analysis
        from pipeline.analysis.measure import analyze as run_analysis
        from pipeline.analysis.probe_set import probe_set
        from pipeline.data.preprocess import InputTransform
        from pipeline.models.factory import load_model_artifact
        from pipeline.utils.device import Normalizer, seed_everything
        from pipeline.utils.distributed import session

        assert config.models is not None  # filled in by load_analyze
        seed_everything(config.seed)
        with session(config.device) as (ranks, device):
            models, transforms = {}, set()
            for name in config.models:
                model, spec = load_model_artifact(models_dir / name)
                normalizer = Normalizer(spec["preprocessing"]["mean"], spec["preprocessing"]["std"]).to(device)
                models[name] = (model.to(device).eval(), normalizer)
                transforms.add(InputTransform.from_preprocessing(spec["preprocessing"]))
            if len(transforms) > 1:
                raise ValueError(f"the models {config.models} resize or crop differently; analyse them separately")
            probes = probe_set(
                data / "manifest.parquet",
                config.split,
                config.images,
                transforms.pop(),
                config.applied_corruptions(),
                config.severity,
                config.seed,
            )
            result = run_analysis(
                models, probes, config.batch_size, device, config.sae.model_dump(), config.seed, ranks
            )
        if result is None:  # not the main rank: rank 0 writes
            return
        write_analysis(result, metrics, tables, figure)
    for name, row in result.models.items():
        typer.echo(f"analyze/{name}: " + ", ".join(f"{key} {value:.3f}" for key, value in row.items()))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(
        f"analyze: {len(config.models)} models, {len(probes.clean)} probe images, {time.perf_counter() - started:.0f} s"
    )
