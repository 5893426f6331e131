"""Files named in params must be DVC dependencies of the stage that reads them.

DVC can only rerun a stage when a file it reads changes if that file is listed under the stage's
``deps`` in dvc.yaml, and dvc.yaml cannot take a dependency from a param that may be null. So a
stage run by DVC (which sets ``DVC_STAGE`` and ``DVC_ROOT``) checks each file its params name
against its own deps and stops, naming the line to add, when one is not covered: editing a
concept catalog or swapping a weights file can then never leave stale concepts, masks or models
behind. Outside DVC (the stage command run by hand) there is nothing to check.

Dataset roots and benchmark folders are deliberately not checked: hashing ImageNet-sized folders
on every ``dvc status`` is slow, so their params entry is the dependency (docs/configuration.md: Your own files).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.utils.errors import CftError

DVC_STAGE = "DVC_STAGE"
DVC_ROOT = "DVC_ROOT"


class UndeclaredInputError(CftError):
    """A file named in params that the running DVC stage does not depend on."""


def stage_dependencies(root: Path, stage: str) -> list[Path]:
    """The resolved dependency paths of ``stage`` (e.g. ``concepts``, ``finetune@cft``) in ``root``'s dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (found,) = repo.stage.collect(stage)
        return [Path(dep.fs_path).resolve() for dep in found.deps]


def _covered(path: Path, deps: list[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in deps)


def check_declared(named: dict[str, str | Path | None], params: Path) -> None:
    """Under `dvc repro`, every existing file or folder in ``named`` (param key -> path) must be a
    dependency of the running stage; a path that does not exist is left to the reader's own error."""
    stage, root = os.environ.get(DVC_STAGE), os.environ.get(DVC_ROOT)
    if not stage or not root:
        return
    files = {key: Path(value) for key, value in named.items() if value is not None and Path(value).exists()}
    if not files:
        return
    deps = stage_dependencies(Path(root), stage)
    missing = {key: path for key, path in files.items() if not _covered(path.resolve(), deps)}
    if missing:
        lines = ", ".join(f"{key} = {path}" for key, path in missing.items())
        shown = "\n".join(f"      - {_relative(path, Path(root))}" for path in missing.values())
        raise UndeclaredInputError(
            f"{params}: {lines} is read by stage '{stage}' but is not one of its deps in dvc.yaml, so editing it "
            f"would not rerun the stage. Add it under the deps of stage '{stage.split('@')[0]}' in dvc.yaml:\n{shown}"
        )


def _relative(path: Path, root: Path) -> str:
    resolved, base = path.resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if base in resolved.parents else str(resolved)
