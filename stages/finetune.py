"""`cft finetune`: fine-tune the base model with one method (``finetune.<method>``)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config.finetune import load_finetune
from pipeline.utils.atomic import atomic_directory
from stages.common import PARAMS_OPTION, user_errors


def finetune(
    method: str = typer.Argument(..., help="a method section under `finetune` in params (e.g. cft, plain)"),
    params: Path = PARAMS_OPTION,
    base: Path = typer.Option(Path("models/base"), help="model artifact to start from"),
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare`"),
    subset: Path = typer.Option(Path("data/subset"), help="fine-tuning subset from `cft prepare`"),
    masks: Path | None = typer.Option(
        None, help="mask store from `cft masks` (relevance objectives with concept masks)"
    ),
    out: Path = typer.Option(..., help="fine-tuned model artifact directory (fully rewritten)"),
    checkpoints: Path = typer.Option(
        ..., help="resumable training state (kept between runs; local scratch, not a DVC output)"
    ),
    metrics: Path = typer.Option(..., help="summary metrics JSON"),
    plots: Path = typer.Option(..., help="curves (CSV, PNG) and the relevance overlay grid"),
) -> None:
    """Fine-tune; an interrupted run resumes from its last epoch when rerun with the same inputs.
    Under `torchrun --nproc-per-node=N --no-python cft finetune ...` the N processes share each batch."""
    with user_errors():
        config = load_finetune(params, method)
        from pipeline.data.subset import SUBSET_NAME
        from pipeline.models.factory import write_model_artifact
        from pipeline.reports.finetune import card_metrics, write_finetune_reports
        from pipeline.training.finetune import FinetuneInputs
        from pipeline.training.finetune import finetune as run_finetune
        from pipeline.utils.distributed import session

        inputs = FinetuneInputs(base_model=base, dataset=data, subset=subset / SUBSET_NAME, masks=masks)
        with session(config.train.device) as (ranks, device):
            outcome = run_finetune(config, inputs, checkpoints, ranks=ranks, device=device)
            if not ranks.main:  # every rank ends with the same model; one writes it
                return
            with atomic_directory(out) as staging:
                write_model_artifact(staging, outcome.model, outcome.spec, card_metrics(outcome.summary))
            write_finetune_reports(outcome, metrics, plots)
    chosen = outcome.summary["selected"]
    typer.echo(
        f"finetune/{method} -> {out}: epoch {outcome.best_epoch} kept; background share of relevance "
        f"{outcome.summary['base']['train_background_share']:.3f} -> {chosen['train_background_share']:.3f}; "
        f"val accuracy unseen {chosen['val_unseen_accuracy']:.3f}, seen {chosen['val_seen_accuracy']:.3f}"
    )
    for warning in outcome.summary.get("warnings", []):
        typer.secho(f"warning: {warning} (recorded in {metrics})", fg=typer.colors.YELLOW, err=True)
