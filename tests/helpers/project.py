"""A copy of this repository as a DVC project, and running commands in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, stdout_only: bool = False) -> str:
    """Output of ``args`` run in ``cwd`` with this Python's environment first on PATH (stdout and
    stderr, or stdout alone); fails the test on a non-zero exit."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout if stdout_only else result.stdout + result.stderr


def invoke_cft(project: Path, *args: str) -> str:
    """``cft <args> --params params.yaml`` in process, in ``project``; fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from stages.cli import app

    previous = os.getcwd()
    os.chdir(project)
    try:
        result = CliRunner().invoke(app, [*args, "--params", "params.yaml"])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    return result.output


def finetune_outputs(method: str) -> list[str]:
    """The output options of ``cft finetune <method>``, at dvc.yaml's paths."""
    return [
        "--out",
        f"models/{method}",
        "--checkpoints",
        f"checkpoints/finetune/{method}",
        "--metrics",
        f"results/finetune/{method}.json",
        "--plots",
        f"plots/finetune/{method}",
    ]


def copy_repository(root: Path) -> None:
    """The project's code and pipeline definition, without any outputs, into ``root``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (
            (REPO / name).is_file()
            and (
                name.startswith("data/weights/")
                or not name.startswith(("data/", "models/", "metrics/", "plots/", "results/"))
            )
            and name != "dvc.lock"
        ):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)


def tiny_project(root: Path) -> Path:
    """A git repository in ``root`` with this project's code and pipeline and tiny params (the
    tiny world, subset, base training, fine-tuning, benchmarks and analysis), nothing run yet."""
    import yaml

    from tests.helpers.tiny import TINY_BASE, TINY_EVALUATE, TINY_FINETUNE, TINY_SPLITS, TINY_SUBSET

    copy_repository(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["world"]["split_sizes"] = TINY_SPLITS
    params["data"]["subset"].update(TINY_SUBSET)
    params["base"] = {**params["base"], **TINY_BASE}
    params["finetune"]["train"].update(TINY_FINETUNE["train"])
    params["evaluate"].update(TINY_EVALUATE)
    params["analyze"].update({"images": 16, "batch_size": 8, "sae": {**params["analyze"]["sae"], "steps": 50}})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], root)
    return root
