"""The `cft` command: one subcommand per pipeline stage."""

from __future__ import annotations

import typer

from stages.analyze import analyze
from stages.base import base
from stages.concepts import concepts
from stages.evaluate import evaluate
from stages.finetune import finetune
from stages.masks import masks
from stages.prepare import prepare
from stages.report import report

app = typer.Typer(
    name="cft",
    help="Concept-Guided Fine-Tuning pipeline. Each subcommand is one DVC stage; see dvc.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(name="prepare")(prepare)
app.command(name="base")(base)
app.command(name="concepts")(concepts)
app.command(name="masks")(masks)
app.command(name="finetune")(finetune)
app.command(name="evaluate")(evaluate)
app.command(name="report")(report)
app.command(name="analyze")(analyze)

if __name__ == "__main__":
    app()
