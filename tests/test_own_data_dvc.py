"""A user's own data end to end under `dvc repro`: an image folder, concepts from a catalog file,
masks from (tiny, random-weight) Grounded-SAM, two methods, benchmarks without masks, the report.

This is the main journey of a real user; it also checks that files named in params must be DVC
dependencies (an undeclared catalog stops the concepts stage, naming the line to add), and that
once declared, editing the catalog makes the concepts stage stale.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.grounded_models import save_tiny_grounded_sam
from tests.helpers.project import REPO, copy_repository

pytestmark = pytest.mark.slow

CLASSES = {"redfin": (200, 40, 40), "greenwing": (40, 180, 60), "bluebody": (50, 70, 210)}


def dvc(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests/stand_ins"), str(REPO)]),
        "CFT_TEST_TINY_SAM": "1",
    }
    result = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def write_images(root: Path, per_class: int, rng: np.random.Generator, shift: bool = False) -> None:
    """A coloured blob per class on a noisy background (a shifted background for `shift`)."""
    for name, colour in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = rng.integers(60, 120, (40, 40, 3)).astype(np.uint8)
            if shift:
                image[..., 2] = 200
            top, left = rng.integers(4, 16, 2)
            image[top : top + 20, left : left + 20] = colour
            Image.fromarray(image).save(folder / f"{name}_{index}.png")


@pytest.fixture(scope="module")
def own_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    copy_repository(root)
    rng = np.random.default_rng(0)
    write_images(root / "photos/train", 8, rng)
    write_images(root / "photos/test", 4, rng)
    write_images(root / "photos/shifted", 4, rng, shift=True)
    save_tiny_grounded_sam(root / "data/weights")  # where users keep weights: already a dependency of masks
    (root / "inputs").mkdir()
    (root / "inputs/concepts.yaml").write_text(yaml.safe_dump({name: ["head", "body"] for name in CLASSES}))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"] = {
        "source": "imagefolder",
        "imagefolder": {"root": "photos/train"},
        "subset": {"seen_fraction": 0.5, "images_per_class": 2, "val_images_per_class": 3},
    }
    params["base"] = {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "phases": [{"split": "val", "epochs": 30}],
        "batch_size": 9,
        "lr": 0.003,
        "warmup_steps": 1,
        "device": "cpu",
    }
    params["concepts"] = {"source": "catalog", "catalog": "inputs/concepts.yaml"}
    params["masks"] = {
        "backend": "grounded_sam",
        "resolution": 16,
        "grounded_sam": {
            "grounding": {
                "config": "data/weights/tiny_dino.py",
                "checkpoint": "data/weights/dino.pth",
                "text_encoder": "data/weights/bert",
                "image_size": 64,
                "max_size": 96,
                "box_threshold": 0.6,
                "text_threshold": 0.5,
            },
            "sam": {"model_type": "vit_b", "checkpoint": "data/weights/sam_vit_b.pth"},
            "device": "cpu",
        },
    }
    params["finetune"] = {
        "methods": ["cft", "plain"],
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "lr": 1e-4,
            "overlay_images": 2,
            "eval_batch_size": 16,
            "device": "cpu",
        },
        "cft": {"objective": "relevance"},
        "plain": {"objective": "labels"},
    }
    params["evaluate"].update(
        {  # dvc.yaml tracks single evaluate keys: they must stay in params.yaml
            "benchmarks": {
                "own_test": {"kind": "imagefolder", "path": "photos/test"},
                "own_shifted": {"kind": "imagefolder", "path": "photos/shifted"},
            },
            "models": ["base", "cft", "plain"],
            "in_distribution": "own_test",
            "shortcut_tests": {"shift": "own_shifted"},  # metrics get shift_drop: own_test accuracy minus own_shifted's
            "batch_size": 8,
            "workers": 0,
            "device": "cpu",
        }
    )
    params["analyze"] = {"split": "val", "images": 6, "batch_size": 4, "sae": {"steps": 20}, "device": "cpu"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def test_own_data_runs_end_to_end_under_dvc_repro(own_project: Path) -> None:
    # The catalog is named in params but not yet a dependency: the concepts stage refuses it.
    refused = dvc(["repro"], own_project, ok=False)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert (
        "concepts.catalog = inputs/concepts.yaml is read by stage 'concepts' but is not one of its deps in dvc.yaml"
        in message
    )
    assert "      - inputs/concepts.yaml" in message
    assert not (own_project / "data/concepts").exists()

    # Declared as the message says, the whole pipeline runs through the report.
    pipeline = (own_project / "dvc.yaml").read_text()
    stage = "    cmd: cft concepts --params params.yaml --data data/prepared --out data/concepts\n    deps:\n"
    assert stage in pipeline
    pipeline = pipeline.replace(stage, stage + "      - inputs/concepts.yaml\n")
    (own_project / "dvc.yaml").write_text(pipeline)
    started = time.monotonic()
    output = dvc(["repro"], own_project).stdout
    print(f"own-data dvc repro (after prepare and base): {time.monotonic() - started:.0f} s")
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    evaluations = {f"evaluate@{b}-{m}" for b in ("own_test", "own_shifted") for m in ("base", "cft", "plain")}
    assert {"concepts", "masks", "finetune@cft", "finetune@plain", "report", "analyze"} | evaluations <= ran, ran
    analysed = json.loads((own_project / "results/analyze.json").read_text())
    assert sorted(analysed) == ["base", "cft", "plain"]

    flags = json.loads((own_project / "results/masks.json").read_text())["flags"]
    assert sum(flags.values()) > 0
    for model in ("base", "cft", "plain"):
        compact = json.loads((own_project / f"metrics/{model}.json").read_text())
        assert {"ood_acc", "id_acc", "forgetting", "shift_drop"} <= set(compact)
        assert 0.0 <= compact["ood_acc"] <= 1.0
        assert compact["shift_drop"] == pytest.approx(
            compact["id_acc"] - compact["ood_acc"], abs=2e-4
        )  # one OOD benchmark: own_shifted
    assert json.loads((own_project / "metrics/base.json").read_text())["forgetting"] == 0.0
    for name in ("accuracy.png", "metrics.csv", "summary.csv"):
        assert (own_project / "plots/summary" / name).stat().st_size > 0
    assert not list((own_project / "plots/summary").glob("relevance_*.png"))  # no object masks in these benchmarks

    # Editing the catalog makes the concepts stage (and so what follows) stale.
    assert "Data and pipelines are up to date" in dvc(["status"], own_project).stdout
    (own_project / "inputs/concepts.yaml").write_text(yaml.safe_dump({name: ["head"] for name in CLASSES}))
    status = dvc(["status", "--json"], own_project).stdout
    stale = json.loads(status[status.index("{") :])
    assert "concepts" in stale and "masks" not in stale  # masks follow once concepts.parquet changes
