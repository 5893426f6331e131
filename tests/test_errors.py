"""User-facing errors are one clean line with exit 2; anything else (a bug) keeps its traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer
from typer.testing import CliRunner

import pipeline
from pipeline.utils.errors import CftError
from stages.common import user_errors


def app_raising(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def run() -> None:
        with user_errors():
            raise error

    return app


def test_a_cft_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CFT_TRACEBACK", raising=False)
    result = CliRunner().invoke(app_raising(CftError("params.yaml: base.lr: must be > 0")))
    assert result.exit_code == 2
    assert result.output.strip() == "error: params.yaml: base.lr: must be > 0"
    assert "Traceback" not in result.output


def test_a_missing_file_is_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CFT_TRACEBACK", raising=False)
    result = CliRunner().invoke(
        app_raising(FileNotFoundError(2, "No such file or directory", "data/prepared/manifest.parquet"))
    )
    assert result.exit_code == 2
    assert "data/prepared/manifest.parquet" in result.output


@pytest.mark.parametrize(
    "bug", [ValueError("operands could not be broadcast"), KeyError("labels"), RuntimeError("shape mismatch")]
)
def test_any_other_exception_keeps_its_traceback(bug: Exception) -> None:
    result = CliRunner().invoke(app_raising(bug))
    assert result.exit_code == 1
    assert result.exception is bug


def test_cft_traceback_shows_the_trace_of_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFT_TRACEBACK", "1")
    error = CftError("x.yaml: bad")
    result = CliRunner().invoke(app_raising(error))
    assert result.exception is error


def test_every_error_class_of_the_library_is_a_cft_error() -> None:
    """The library's own exception classes are all user-facing, so all derive from CftError."""
    found = {}
    for info in pkgutil.walk_packages(pipeline.__path__, prefix="pipeline."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    assert len(found) >= 15
    assert [name for name, kind in found.items() if not issubclass(kind, CftError)] == []
