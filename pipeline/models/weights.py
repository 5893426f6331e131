"""Model weight files the user provides: checksums, verification and safe loading.

Checkpoints are big downloads (SAM vit_h: 2.4 GB) that DVC tracks (``dvc import-url``); the
stage records each file's sha256 next to its results and, when params pin a checksum, refuses a
file that does not match it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pipeline.utils.errors import CftError


class ModelFileError(CftError):
    """A weights file that is missing, altered or unreadable; the message names it."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_file(path: str | Path, expected_sha256: str | None, what: str) -> tuple[Path, str]:
    """The file and its sha256; an error naming the file if it is missing or does not match."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: {what} checkpoint not found (download it, e.g. with `dvc import-url`; see docs/grounded-sam.md)"
        )
    actual = file_sha256(path)
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelFileError(
            f"{path}: sha256 {actual} differs from the {what} checksum in params ({expected_sha256}): a wrong or corrupt file"
        )
    return path, actual


def load_weights(path: Path, trusted: bool) -> Any:
    """``torch.load`` of plain tensors; whole pickles only from a file whose checksum params pin.

    Some published checkpoints pickle training arguments next to the weights, which
    ``weights_only`` loading refuses; unpickling runs code, so it needs the user's explicit trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Unsupported global" not in str(exc):  # weights_only's refusal of a pickled class
            raise ModelFileError(
                f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:200]})"
            ) from None
        if not trusted:
            raise ModelFileError(
                f"{path}: holds Python objects besides tensors, which are only loaded from a file you vouch for: "
                "set its sha256 in params to the file's checksum"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_state_dict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, ignore_missing: tuple[str, ...] = ()
) -> list[str]:
    """Load weights by name; missing weights are an error, extra ones are returned (for a report)."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit, which strict=False does not forgive
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ModelFileError(f"{path}: weights do not fit the model (wrong model type or file?): {first}") from None
    missing = (
        [key for key in result.missing_keys if not key.endswith(ignore_missing)]
        if ignore_missing
        else list(result.missing_keys)
    )
    if missing:
        raise ModelFileError(
            f"{path}: {len(missing)} weights of the model are not in the checkpoint, e.g. {missing[:4]} (wrong model type or file?)"
        )
    return list(result.unexpected_keys)
