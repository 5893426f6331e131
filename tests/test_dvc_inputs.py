"""Files named in params must be DVC dependencies of the stage that reads them (pipeline.utils.dvc_inputs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.utils.dvc_inputs import UndeclaredInputError, check_declared

PIPELINE = """stages:
  concepts:
    cmd: cft concepts
    deps:
      - inputs/catalog.yaml
      - weights
    outs:
      - out
"""


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "weights").mkdir()
    for name in ("inputs/catalog.yaml", "inputs/other.yaml", "weights/sam.pth"):
        (tmp_path / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_outside_dvc_nothing_is_checked(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_STAGE", raising=False)
    check_declared({"concepts.catalog": "inputs/other.yaml"}, Path("params.yaml"))


def test_a_declared_file_or_a_file_in_a_declared_folder_passes(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_STAGE", "concepts")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    check_declared(
        {
            "concepts.catalog": "inputs/catalog.yaml",
            "sam": "weights/sam.pth",
            "unset": None,
            "missing": "inputs/nowhere.yaml",
        },
        Path("params.yaml"),
    )


def test_an_undeclared_file_stops_the_stage_naming_the_line_to_add(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_STAGE", "concepts")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    with pytest.raises(
        UndeclaredInputError,
        match=r"concepts.catalog = inputs/other.yaml is read by stage 'concepts' but is not one of its deps",
    ) as caught:
        check_declared({"concepts.catalog": "inputs/other.yaml", "sam": "weights/sam.pth"}, Path("params.yaml"))
    assert caught.value.args[0].endswith("\n      - inputs/other.yaml")
    assert "sam" not in caught.value.args[0]
