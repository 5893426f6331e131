"""A model artifact that plain timm (and the Hugging Face hub) can load, with a model card.

Beside cft's own ``model.json``, an artifact holds timm's hub layout: ``config.json`` (the
architecture, its arguments, the class names and a ``pretrained_cfg`` with the input
preprocessing), written by timm's own exporter next to the same ``model.safetensors``. So
``timm.create_model("local-dir:<artifact>", pretrained=True)`` rebuilds the fine-tuned network
without cft, and the folder can be uploaded to the hub as it is (``hf-hub:<user>/<name>``).
``README.md`` is a model card: what the model is, how it was made, and what was measured then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.utils.atomic import write_text, write_with

TIMM_CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def write_timm_config(out_dir: Path, model: torch.nn.Module, spec: dict[str, Any]) -> None:
    """timm's ``config.json`` for the model, with cft's preprocessing as its ``pretrained_cfg``."""
    from timm.models._hub import save_config_for_hf

    preprocessing = {key: spec["preprocessing"][key] for key in PREPROCESSING_KEYS if key in spec["preprocessing"]}
    # tag and license: the architecture's defaults describe timm's own weights, not these
    model_config = {
        "label_names": list(spec["class_names"]),
        "pretrained_cfg": {**preprocessing, "tag": "cft", "license": "other"},
    }
    # model_args: how to rebuild the network (timm's factory reads them back as create_model kwargs)
    write_with(
        out_dir / TIMM_CONFIG_NAME,
        lambda tmp: save_config_for_hf(
            model, str(tmp), model_config=model_config, model_args=dict(spec["create_kwargs"])
        ),
    )


def model_card(spec: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm's model-card fields for an artifact: what it is, how it was made, what was measured."""
    finetune = spec.get("finetune")
    classes = spec["class_names"]
    details: dict[str, Any] = {
        "Model type": "image classification",
        "Architecture": f"timm {spec['timm_name']}",
        "Classes": f"{len(classes)}: {', '.join(classes[:20])}{', …' if len(classes) > 20 else ''}",
        "Input": f"{spec['preprocessing']['input_size']}, mean {spec['preprocessing']['mean']}, std {spec['preprocessing']['std']}",
    }
    if finetune is None:
        description = "The base model of a cft pipeline (before fine-tuning)."
    else:
        objective = finetune["objective"]
        description = (
            f"Fine-tuned by cft (Concept-Guided Fine-Tuning pipeline) with the method `{finetune['method']}` "
            f"(objective `{objective['objective']}`) from the pipeline's base model."
        )
        details["Method"] = dict(objective)
        details["Fine-tuned on"] = f"the seen classes {', '.join(finetune['seen_classes'])}"
        details["Not fine-tuned on (unseen)"] = ", ".join(finetune["unseen_classes"]) or "none"
        details["Selected epoch"] = finetune["best_epoch"]
    if metrics:
        details["Measured when it was made"] = {
            key: f"{value:.4f}" if isinstance(value, float) else value for key, value in metrics.items()
        }
    usage = (
        "Without cft, with timm alone:\n\n```python\nimport timm\n\n"
        'model = timm.create_model("local-dir:<this folder>", pretrained=True).eval()\n'
        "config = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**config, is_training=False)\n```\n\n"
        "Out-of-distribution results of the whole pipeline: `dvc metrics show` in the project that made it."
    )
    return {
        "description": description,
        "details": details,
        "usage": usage,
        "license": "other",
        "tags": ["image-classification", "timm", "cft"],
    }


def write_model_card(out_dir: Path, spec: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
    from timm.models._hub import generate_readme

    method = spec.get("finetune", {}).get("method")
    title = f"{spec['timm_name']}, fine-tuned by cft ({method})" if method else f"{spec['timm_name']}, cft base model"
    write_text(out_dir / CARD_NAME, generate_readme(model_card(spec, metrics), title))
