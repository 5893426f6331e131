"""Which models a stage reads: ``<section>.models``, or by default the base model and every method of
``finetune.methods`` (shared by the evaluate, report and analyze sections)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError, read_params


def resolve_models(path: str | Path, section: str, models: list[str] | None) -> list[str]:
    """``models`` checked against ``finetune.methods``; None = base and every method."""
    methods = (read_params(path).get("finetune") or {}).get("methods") or []
    chosen = ["base", *methods] if models is None else list(models)
    unknown = [name for name in chosen if name != "base" and name not in methods]
    if unknown:
        raise ConfigError(f"{path}: {section}.models {unknown} are neither 'base' nor in finetune.methods {methods}")
    return chosen
