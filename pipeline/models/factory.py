"""Model artifacts: safetensors weights plus a small JSON saying how to rebuild the model.

``model.json`` holds everything ``timm.create_model`` needs (name and keyword arguments), the
ordered class names and the input preprocessing, so any later stage, or a colleague, can rebuild
the exact network without the params that produced it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.models.dinov2_classifier import (
    IMAGENET_CLASSES,
    Dinov2LinearClassifier,
    LinearHeadError,
    head_url,
    load_linear_head,
)
from pipeline.models.dinov2_classifier import VARIANTS as DINOV2_CLASSIFIERS
from pipeline.models.export import write_model_card, write_timm_config
from pipeline.utils.atomic import write_json, write_with
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.base import BaseConfig

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
FORMAT_VERSION = 1


class ModelError(CftError):
    """A model that cannot be built or loaded; names the file or the timm name."""


def create_model(config: BaseConfig, num_classes: int, image_size: int | None = None) -> torch.nn.Module:
    """Build ``config.model`` through timm: random init, timm's pretrained weights, or a local file.

    With ``pretrained: true`` timm resolves the weights itself (Hugging Face hub, or its own cache);
    ``checkpoint`` points timm's loader at a local file instead, the route for offline machines.
    """
    import timm

    kwargs = dict(config.model_kwargs)
    head_classes: int | None = None
    if image_size is not None and "img_size" not in kwargs and _is_vision_transformer_name(config.model):
        kwargs["img_size"] = image_size
    if not timm.is_model(config.model):
        raise ModelError(f"unknown timm model {config.model!r} (base.model); see timm.list_models()")
    if config.classifier_checkpoint is not None and config.model.split(".")[0] not in DINOV2_CLASSIFIERS:
        raise ModelError(
            f"base.classifier_checkpoint is for DINOv2 classifiers ({', '.join(DINOV2_CLASSIFIERS)}), not {config.model!r}"
        )
    if config.checkpoint is not None:
        checkpoint = Path(config.checkpoint)
        if not checkpoint.is_file():
            raise ModelError(f"{checkpoint}: checkpoint file not found (base.checkpoint)")
        overlay: dict[str, Any] = {"file": str(checkpoint.resolve())}
        head_classes = _checkpoint_head_classes(checkpoint, config.model)
        if head_classes is not None:
            # timm keeps a checkpoint's classifier only when the cfg's num_classes matches ours.
            overlay["num_classes"] = head_classes
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        model = timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        source = config.checkpoint or "timm's pretrained weights"
        raise ModelError(f"cannot build {config.model!r} from {source}: {exc}") from exc
    _add_linear_head(model, config, head_in_checkpoint=head_classes is not None)  # set only with a checkpoint
    return model


def _add_linear_head(model: torch.nn.Module, config: BaseConfig, head_in_checkpoint: bool) -> None:
    """Meta's head file for a DINOv2 classifier built from a local backbone file (offline route)."""
    if not isinstance(model, Dinov2LinearClassifier):
        return
    if config.classifier_checkpoint is not None:
        try:
            load_linear_head(model, config.classifier_checkpoint)
        except LinearHeadError as exc:
            raise ModelError(f"{exc} (base.classifier_checkpoint)") from exc
    elif (
        config.checkpoint is not None
        and not head_in_checkpoint
        and model.num_classes == IMAGENET_CLASSES
        and not config.phases
    ):
        # An untrained head on ImageNet's classes would be evaluated as if it were Meta's.
        meta_head = head_url(model.pretrained_cfg["architecture"], model.cls_layers).rsplit("/", 1)[-1]
        raise ModelError(
            f"{config.checkpoint}: a backbone without the ImageNet linear head; set base.classifier_checkpoint to "
            f"Meta's head file ({meta_head}) or add base.phases to train one"
        )


def _checkpoint_head_classes(checkpoint: Path, model_name: str) -> int | None:
    """Output size of the classifier stored in ``checkpoint``, if it has the model's classifier."""
    import timm.models

    classifier = timm.models.get_pretrained_cfg_value(model_name, "classifier") or "head"
    try:
        state = timm.models.load_state_dict(str(checkpoint))
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        raise ModelError(f"{checkpoint}: not a readable weights file ({exc})") from exc
    weight = state.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None else None


def _is_vision_transformer_name(name: str) -> bool:
    return name.startswith(("vit_", "deit", "eva", "beit", "dinov2_"))


def preprocessing_of(model: torch.nn.Module, image_size: int | None) -> dict[str, Any]:
    """The model's own input transform (timm ``pretrained_cfg``); a fixed size for the world."""
    from timm.data import resolve_model_data_config

    data_config = resolve_model_data_config(model)
    built_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if image_size is None and built_size is not None and tuple(built_size) != tuple(data_config["input_size"][1:]):
        # img_size in model_kwargs (e.g. DINOv2 at 224 instead of 518): the input follows the model built
        data_config["input_size"] = (3, *built_size)
    if image_size is not None:
        data_config["input_size"] = (3, image_size, image_size)
        data_config["crop_pct"] = 1.0
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data_config.items()}


def save_model_artifact(
    out_dir: str | Path,
    model: torch.nn.Module,
    config: BaseConfig,
    class_names: list[str],
    preprocessing: dict[str, Any],
    extra: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors`` and ``model.json`` atomically (weights first, spec last)."""
    out_dir = Path(out_dir)
    kwargs = dict(config.model_kwargs)
    kwargs["num_classes"] = len(class_names)
    if "img_size" not in kwargs and _is_vision_transformer_name(config.model):
        kwargs["img_size"] = preprocessing["input_size"][-1]
    spec = {
        "format_version": FORMAT_VERSION,
        "timm_name": config.model,
        "create_kwargs": kwargs,
        "class_names": class_names,
        "preprocessing": preprocessing,
        **(extra or {}),
    }
    write_model_artifact(out_dir, model, spec, metrics)


def write_model_artifact(
    out_dir: str | Path, model: torch.nn.Module, spec: dict[str, Any], metrics: dict[str, Any] | None = None
) -> None:
    """Weights, timm's ``config.json`` and the model card first, cft's spec last: a directory with a
    spec always has its matching weights. ``metrics``: what the making stage measured, for the card."""
    out_dir = Path(out_dir)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_with(out_dir / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    write_timm_config(out_dir, model, spec)
    write_model_card(out_dir, spec, metrics)
    write_json(out_dir / SPEC_NAME, spec)


def read_model_spec(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / SPEC_NAME
    if not path.is_file():
        raise ModelError(f"{path}: model spec not found (is {model_dir} a model artifact?)")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    missing = [
        key
        for key in ("format_version", "timm_name", "create_kwargs", "class_names", "preprocessing")
        if key not in spec
    ]
    if missing:
        raise ModelError(f"{path}: missing keys {missing}")
    if spec["format_version"] != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {spec['format_version']}, this cft reads {FORMAT_VERSION}")
    return spec


def load_model_artifact(model_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load its weights (strict: every tensor must match)."""
    import timm

    spec = read_model_spec(model_dir)
    weights = Path(model_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{weights}: weights not found")
    model = timm.create_model(spec["timm_name"], pretrained=False, **spec["create_kwargs"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise ModelError(f"{weights}: does not match {spec['timm_name']} {spec['create_kwargs']}: {exc}") from exc
    return model, spec
