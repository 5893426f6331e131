from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_section
from pipeline.config.base import BaseConfig
from pipeline.config.data import PrepareConfig

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


# Settings of params.yaml that differ from the code's defaults on purpose, each with its reason.
DELIBERATE = {
    "base.model_kwargs": "the world's tiny ViT; a default would silently reshape any other model a user names",
    "base.phases": "training phases name the world's splits; the default (none) keeps a pretrained model as it is",
    "evaluate.models": "null means base + every method; dvc.yaml's matrix needs the list written out",
    "evaluate.shortcut_tests": "names world benchmarks; a default would fail for a user's own benchmarks",
}


def params_differences() -> dict[str, tuple[object, object]]:
    """dotted key -> (params.yaml value, code default) for every setting where they differ."""
    import yaml

    from pipeline.config.concepts import ConceptsConfig
    from pipeline.config.evaluate import EvaluateConfig
    from pipeline.config.finetune import TrainSchedule
    from pipeline.config.masks import MasksConfig

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    sections = {
        "data": (PrepareConfig, params.get("data")),
        "base": (BaseConfig, params.get("base")),
        "concepts": (ConceptsConfig, params.get("concepts")),
        "masks": (MasksConfig, params.get("masks")),
        "finetune.train": (TrainSchedule, params["finetune"].get("train")),
        "evaluate": (EvaluateConfig, params.get("evaluate")),
    }
    differences: dict[str, tuple[object, object]] = {}

    def compare(key: str, value: object, default: object) -> None:
        if isinstance(value, dict) and isinstance(default, dict) and value and set(value) <= set(default):
            for name, inner in value.items():
                compare(f"{key}.{name}", inner, default[name])
        elif value != default:
            differences[key] = (value, default)

    for name, (config_type, section) in sections.items():
        compare(name, section or {}, config_type().model_dump(mode="json"))
    return differences


def test_code_defaults_equal_the_repository_params() -> None:
    """A setting left out of a user's params behaves as in the repository's params.yaml."""
    differences = params_differences()
    assert {key: value for key, value in differences.items() if key not in DELIBERATE} == {}
    assert sorted(DELIBERATE) == sorted(differences), "a deliberate difference is gone: drop it from DELIBERATE"
