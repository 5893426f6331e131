from __future__ import annotations

import os

# Offline machines: without these, timm/HF and litellm spend ~47 s on network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from pipeline.config import PrepareConfig, WorldConfig  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402

TINY_SPLITS = {
    "pretrain": 40, "train": 60, "val": 20, "test": 30, "random_bg": 20,
    "swapped_bg": 20, "rendition": 20, "sketch": 20, "pose_sweep": 20, "scene": 20,
    "cue_removed": 20, "cue_swapped": 20,
}


def tiny_prepare_config(seed: int = 0, **world: object) -> PrepareConfig:
    return PrepareConfig(seed=seed, world=WorldConfig(split_sizes=dict(TINY_SPLITS), **world))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world built once per test session; tests must not modify it."""
    from pipeline.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(tiny_prepare_config(), out, workers=1)
    return out


@pytest.fixture(scope="module")
def manifest(tiny_world: Path) -> pa.Table:
    """The tiny world's manifest."""
    return read_manifest(tiny_world / "manifest.parquet")


@pytest.fixture(scope="module")
def world_concepts(tiny_world: Path) -> dict[str, list[str]]:
    """The tiny world's concept catalog (its part names)."""
    return json.loads((tiny_world / "world.json").read_text())["concepts"]
