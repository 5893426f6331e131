"""Sharing a mask store through a DVC remote: write, `dvc add`, `dvc push`, then clone and `dvc pull`.

A synthetic store of ``--images`` images with ``--concepts`` masks each (a few random ellipses per
mask, so it compresses like real part masks, not like noise; fixed seed) is written with
``pipeline.masks.store.write_mask_store`` into a fresh git + DVC repository, added to DVC, pushed
to a local-directory remote, and pulled into a fresh ``git clone``. The pulled store is read back
with ``MaskStore`` and compared with the original, every image's concept masks and the table.
Prints the store's size and file count and the seconds of each step (a local remote measures
DVC's own overhead: hashing, cache and checkout copies, per-file costs; not network bandwidth).

    python benchmarks/mask_store_remote.py                                    # 1,500 images, 6 concepts, 224 px
    python benchmarks/mask_store_remote.py --images 10000 --workdir /tmp/cft-remote   # keeps the folder
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline.masks.store import ImageMasks, MaskStore, write_mask_store

T = TypeVar("T")
CLASSES = 10
STORE_DIR = "masks"


def ellipse_masks(rng: np.random.Generator, concepts: int, resolution: int) -> np.ndarray:
    """(concepts, H, W) bool: each mask the union of 1-3 random ellipses (parts of an object)."""
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / resolution
    masks = np.zeros((concepts, resolution, resolution), dtype=bool)
    for k in range(concepts):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.15, 0.85, size=2)
            ry, rx = rng.uniform(0.04, 0.2, size=2)
            angle = rng.uniform(0, np.pi)
            dy, dx = y - cy, x - cx
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            masks[k] |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return masks


def synthetic_results(
    images: int, concepts: int, resolution: int, seed: int, spent: list[float]
) -> Iterator[ImageMasks]:
    """The images' masks, streamed; adds the seconds spent drawing them to ``spent[0]``."""
    rng = np.random.default_rng(seed)
    for index in range(images):
        start = time.perf_counter()
        class_name = f"class{index % CLASSES}"
        names = [f"{class_name} part {k}" for k in range(concepts)]
        result = ImageMasks(f"img{index:06d}", class_name, names, ellipse_masks(rng, concepts, resolution))
        spent[0] += time.perf_counter() - start
        yield result


def timed(step: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = step()
    return result, time.perf_counter() - start


def command(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def store_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def assert_same_store(pulled: Path, original: Path, batch: int = 256) -> None:
    a, b = MaskStore(pulled), MaskStore(original)
    if a.image_ids != b.image_ids or a.resolution != b.resolution or not a.table.equals(b.table):
        raise SystemExit(f"{pulled}: image ids, resolution or table differ from {original}")
    for start in range(0, len(b.image_ids), batch):
        ids = b.image_ids[start : start + batch]
        if not np.array_equal(a.concept_masks(ids), b.concept_masks(ids)):
            raise SystemExit(f"{pulled}: concept masks of images {ids[0]}..{ids[-1]} differ from {original}")


def benchmark(images: int, concepts: int, resolution: int, seed: int, work: Path) -> dict[str, float]:
    repo, remote, clone = work / "repo", work / "remote", work / "clone"
    repo.mkdir(parents=True)
    remote.mkdir()
    git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@cft.invalid"]
    command(["git", "init", "-q"], repo)
    command(["dvc", "init", "-q"], repo)
    command(["dvc", "config", "core.analytics", "false"], repo)
    command(["dvc", "remote", "add", "-d", "store", str(remote)], repo)

    drawing = [0.0]
    results = synthetic_results(images, concepts, resolution, seed, drawing)
    _, write_s = timed(
        lambda: write_mask_store(
            repo / STORE_DIR, results, (resolution, resolution), "synthetic", image_count=images, max_concepts=concepts
        )
    )
    files = store_files(repo / STORE_DIR)
    _, add_s = timed(lambda: command(["dvc", "add", "-q", STORE_DIR], repo))
    command([*git, "add", "-A"], repo)
    command([*git, "commit", "-q", "-m", "mask store"], repo)
    _, push_s = timed(lambda: command(["dvc", "push", "-q"], repo))

    command(["git", "clone", "-q", str(repo), str(clone)], work)
    _, pull_s = timed(lambda: command(["dvc", "pull", "-q"], clone))
    _, verify_s = timed(lambda: assert_same_store(clone / STORE_DIR, repo / STORE_DIR))
    return {
        "size_mb": sum(p.stat().st_size for p in files) / 1e6,
        "raw_mb": images * concepts * resolution * resolution / 1e6,
        "files": len(files),
        "draw_s": drawing[0],
        "write_s": write_s - drawing[0],  # the store's own time (compression, files, table)
        "add_s": add_s,
        "push_s": push_s,
        "pull_s": pull_s,
        "verify_s": verify_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--concepts", type=int, default=6, help="masks per image")
    parser.add_argument("--resolution", type=int, default=224, help="mask side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="empty or new folder, kept afterwards (default: a temporary one, removed)",
    )
    args = parser.parse_args()

    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="cft-mask-remote-") as work:
            row = benchmark(args.images, args.concepts, args.resolution, args.seed, Path(work))
    else:
        if args.workdir.exists() and any(args.workdir.iterdir()):
            parser.error(f"--workdir {args.workdir} is not empty")
        row = benchmark(args.images, args.concepts, args.resolution, args.seed, args.workdir)

    print(
        f"mask store: {args.images} images × {args.concepts} concepts at {args.resolution}×{args.resolution} ({row['raw_mb']:.0f} MB as bool); pulled store verified identical ({row['verify_s']:.1f} s)"
    )
    print(f"drawing the synthetic masks took {row['draw_s']:.1f} s (not counted in write)")
    print("| store size (MB) | files | write (s) | dvc add (s) | dvc push (s) | dvc pull (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {row['size_mb']:.1f} | {row['files']} | {row['write_s']:.1f} | {row['add_s']:.1f} | {row['push_s']:.1f} | {row['pull_s']:.1f} |"
    )


if __name__ == "__main__":
    main()
