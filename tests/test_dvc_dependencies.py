"""Every file a stage reads is a DVC dependency of that stage.

The code a stage runs is the import closure of its command module (``cft <name>`` runs
``stages/<name>.py``): every ``pipeline``/``stages`` module it imports, at the top or inside a
function, followed transitively, with the package ``__init__`` files on the way. ``stages/cli.py``
only registers the commands and is not part of any stage's closure. Files named in params are
covered by ``pipeline.utils.dvc_inputs`` (tested below through DVC itself).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")


def module_file(name: str) -> Path | None:
    """The file of a dotted module name inside this repository, or None (third party, or not a module)."""
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of this repository's modules that ``path`` imports (anywhere in the file)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }  # imports for type hints alone never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in names if name.split(".")[0] in PACKAGES and module_file(name) is not None}


def import_closure(module: str) -> set[Path]:
    """Files of ``module`` and of everything it imports from this repository, with parent packages."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in seen]
        file = module_file(name)
        if file is not None:
            todo += sorted(imported_modules(file) - seen)
    return {module_file(name).relative_to(REPO) for name in seen if module_file(name) is not None}  # type: ignore[union-attr]


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_deps(definition: dict) -> list[str]:
    body = definition.get("do", definition)
    return [dep for dep in body.get("deps", []) if "${" not in dep]


def covered(file: Path, deps: list[str]) -> bool:
    return any(file.as_posix() == dep.rstrip("/") or file.as_posix().startswith(dep.rstrip("/") + "/") for dep in deps)


def command_module(definition: dict) -> str:
    body = definition.get("do", definition)
    # a stage's launcher param (docs/scaling.md: torchrun ...) may come first
    match = re.match(r"\s*(?:\$\{launch\.\w+\}\s+)?cft\s+(\w+)", body["cmd"])
    assert match, f"stage command does not start with `cft <stage>` (after its launcher): {body['cmd']}"
    return f"stages.{match.group(1)}"


@pytest.mark.parametrize("stage", list(stages()))
def test_stage_depends_on_every_module_it_imports(stage: str) -> None:
    definition = stages()[stage]
    closure = import_closure(command_module(definition))
    missing = sorted(file.as_posix() for file in closure if not covered(file, stage_deps(definition)))
    assert not missing, f"dvc.yaml: stage '{stage}' imports {missing} but does not list them under deps"


def test_import_closure_sees_imports_inside_functions(tmp_path: Path) -> None:
    closure = {path.as_posix() for path in import_closure("stages.finetune")}
    # finetune imports pipeline.training.finetune inside its command function, and finetuning imports
    # masks_annotated (the whole-object masks) only when it is needed.
    assert {
        "stages/finetune.py",
        "stages/common.py",
        "pipeline/training/finetune.py",
        "pipeline/__init__.py",
    } <= closure
    assert "stages/cli.py" not in closure and "stages/evaluate.py" not in closure


def test_no_stage_lists_code_that_does_not_exist() -> None:
    for stage, definition in stages().items():
        for dep in stage_deps(definition):
            if dep.startswith(PACKAGES):
                assert (REPO / dep).exists(), f"dvc.yaml: stage '{stage}' depends on {dep}, which does not exist"


def test_lock_file_holds_only_stages_of_the_pipeline() -> None:
    """A stage removed from dvc.yaml must leave dvc.lock too (DVC keeps stale entries itself)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        defined = {stage.addressing for stage in repo.index.stages}
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert not locked - defined, (
        f"dvc.lock: entries of stages that dvc.yaml no longer defines: {sorted(locked - defined)}"
    )


def test_committed_outputs_belong_to_a_stage() -> None:
    """Files in git under metrics/, plots/ and results/ are outputs of some stage (nothing orphaned)."""
    import subprocess

    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        outputs = [Path(out.fs_path).relative_to(REPO).as_posix() for stage in repo.index.stages for out in stage.outs]
    tracked = subprocess.run(
        ["git", "ls-files", "metrics", "plots", "results"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    orphans = [
        name
        for name in tracked
        if name.rsplit("/", 1)[-1] != ".gitignore"
        and not any(name == out or name.startswith(out + "/") for out in outputs)
    ]
    assert not orphans, f"files in git that no stage writes: {orphans[:10]}"


def test_readme_shows_the_pipeline_as_dvc_draws_it() -> None:
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    drawn = subprocess.run(
        [str(dvc), "dag", "--md"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert drawn.startswith("```mermaid")
    assert drawn in (REPO / "README.md").read_text(), (
        "README.md: the `dvc dag --md` block differs from `dvc dag --md`; paste its output again"
    )


def test_evaluations_do_not_depend_on_how_the_report_draws() -> None:
    """A change to the report's code reruns `report` alone, never the (expensive) evaluations."""
    evaluate = stages()["evaluate"]
    assert not covered(Path("pipeline/reports/summary.py"), stage_deps(evaluate))
    assert "pipeline/reports/summary.py" not in {path.as_posix() for path in import_closure(command_module(evaluate))}
