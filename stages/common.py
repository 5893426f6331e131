"""What every stage command shares: the params option and turning library errors into clean exits."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer

from pipeline.utils.errors import CftError

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params file; the stage reads its own section")

# Errors whose message already names the file and the problem: shown without a traceback. A
# missing file is the user's too (its message names the path); anything else is a bug and keeps
# its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (CftError, FileNotFoundError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user-facing error (no traceback) and exit 2; set CFT_TRACEBACK=1 to see the trace."""
    try:
        yield
    except _USER_ERRORS as exc:
        if os.environ.get("CFT_TRACEBACK") == "1":
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
