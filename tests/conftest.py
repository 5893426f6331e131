from __future__ import annotations

import os

from tests.helpers.tiny import tiny_prepare_config

# Offline machines: without these, timm/HF and litellm spend ~47 s on network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from pipeline.data.manifest import read_manifest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world built once per test session; tests must not modify it."""
    from pipeline.data.world.build import build_world

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
