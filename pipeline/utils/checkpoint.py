"""Resumable training state, saved atomically after every epoch.

A checkpoint carries a *fingerprint* of everything the run depends on (its config, the bytes of
its input artifacts and the pipeline's source code). A rerun resumes only from a checkpoint with
the same fingerprint, so a changed param, a new base model or changed code starts afresh instead
of continuing a different run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.utils.atomic import write_with

STATE_NAME = "state.pt"


def fingerprint(config: dict[str, Any], inputs: list[str | Path]) -> str:
    """sha256 over the config (canonical JSON) and every file under ``inputs``, in sorted order."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for root in map(Path, inputs):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            name = str(path.relative_to(root) if root.is_dir() else path.name).encode()
            # lengths first, so that no two different sets of files hash the same bytes
            digest.update(len(name).to_bytes(8, "little") + name + path.stat().st_size.to_bytes(8, "little"))
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def source_digest(package: str | Path | None = None) -> str:
    """sha256 of the package's ``.py`` sources: a checkpoint written by other code is not resumed."""
    # the whole pipeline package (this file lives in pipeline/utils/)
    root = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root)).encode()
        data = path.read_bytes()
        digest.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def save_state(directory: str | Path, state: dict[str, Any]) -> None:
    write_with(Path(directory) / STATE_NAME, lambda tmp: torch.save(state, tmp))


def load_state(directory: str | Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it belongs to this run; None when absent, unreadable or from another run."""
    path = Path(directory) / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a torn or foreign file: start afresh rather than fail
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected_fingerprint:
        return None
    return state
