from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.utils.atomic import atomic_directory, atomic_path, write_json, write_text


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"accuracy": 0.')
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_killed_writer_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "artifact.txt"
    write_text(target, "old")
    script = (
        "import time, sys\n"
        "from pipeline.utils.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    with open(tmp, 'w') as f:\n"
        "        f.write('half'); f.flush()\n"
        "        print('writing', flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert target.read_text() == "old"


def test_directory_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(ValueError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("second, unfinished")
        raise ValueError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_write_creates_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "file.txt"
    write_text(target, "x")
    assert target.read_text() == "x"
    assert time.time() - target.stat().st_mtime < 60
