"""Typed, validated configuration: one module per stage section of ``params.yaml``, the loaders here.

Unknown keys and out-of-range values are errors that name the file and the dotted key, so a typo
such as ``base.learning_rte`` fails loudly instead of silently running with the default. A stage
imports only its own section's module, so DVC reruns a stage only when its own config code changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.utils.errors import CftError


class ConfigError(CftError):
    """A params file that cannot be used; the message names the file and the offending key."""


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Config = TypeVar("Config", bound=StrictConfig)


def format_validation_error(path: Path, section: str, error: ValidationError) -> str:
    lines = [f"{path}: invalid section '{section}':"]
    for item in error.errors():
        key = ".".join([section, *(str(part) for part in item["loc"])])
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_section(path: str | Path, section: str, config_type: type[Config]) -> Config:
    """Load and validate one section of a params file; a missing section means all defaults."""
    path = Path(path)
    raw = read_params(path).get(section, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: section '{section}' must be a mapping, got {type(raw).__name__}")
    try:
        return config_type.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, section, exc)) from None
