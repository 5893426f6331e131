from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import BaseConfig, ConfigError, PrepareConfig, load_section

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_are_valid() -> None:
    data = load_section(REPO / "params.yaml", "data", PrepareConfig)
    base = load_section(REPO / "params.yaml", "base", BaseConfig)
    assert data.source == "world" and data.world.spurious_p == 0.98
    assert [phase.split for phase in base.phases] == ["pretrain", "train"]


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "base:\n  learning_rte: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_section(path, "base", BaseConfig)
    assert str(path) in str(error.value)
    assert "base.learning_rte: unknown key" in str(error.value)


def test_nested_out_of_range_value_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  world:\n    spurious_p: 1.5\n")
    with pytest.raises(ConfigError, match=r"data\.world\.spurious_p: Input should be less than or equal to 1"):
        load_section(path, "data", PrepareConfig)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "base:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"base\.batch_size"):
        load_section(path, "base", BaseConfig)


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  world:\n    split_sizes: {train: 10, test: 10, imagenet_a: 5}\n")
    with pytest.raises(ConfigError, match=r"unknown split\(s\) \['imagenet_a'\]"):
        load_section(path, "data", PrepareConfig)


def test_checkpoint_requires_pretrained(tmp_path: Path) -> None:
    path = write(tmp_path, "base:\n  checkpoint: weights.safetensors\n")
    with pytest.raises(ConfigError, match="set pretrained: true"):
        load_section(path, "base", BaseConfig)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_section(tmp_path / "nope.yaml", "base", BaseConfig)
    path = write(tmp_path, "base: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section(path, "base", BaseConfig)
    path = write(tmp_path, "base: 3\n")
    with pytest.raises(ConfigError, match="section 'base' must be a mapping"):
        load_section(path, "base", BaseConfig)


def test_missing_section_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "other: {}\n")
    assert load_section(path, "base", BaseConfig) == BaseConfig()
