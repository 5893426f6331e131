"""Atomic writes: every artifact is written aside and renamed into place.

An interrupted write (crash, Ctrl-C, full disk) therefore leaves the previous artifact intact and
never a half-written file that a later stage would read as valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path for a *file*; on success it replaces ``target``.

    The temporary file lives in the same directory so that the final ``os.replace`` is a rename
    on one filesystem. On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Atomically create ``target`` with ``writer(tmp_path)``, for libraries that write to a path."""
    with atomic_path(target) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces the directory ``target`` whole.

    POSIX cannot rename over a non-empty directory, so the old one is first renamed aside and
    deleted only after the new one is in place: at no moment is the old content lost.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        retired = target.parent / f".{target.name}.retired-{uuid.uuid4().hex[:8]}"
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
