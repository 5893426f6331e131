"""DINOv2 ImageNet classifiers as timm models: timm's DINOv2 backbone under Meta's linear head.

timm ships the DINOv2 backbones (``vit_base_patch14_dinov2.lvd142m``) without a classifier.
Meta's ImageNet linear heads (torch hub ``dinov2_vitb14_lc``) read features no timm pooling
gives: the class tokens of the last ``cls_layers`` blocks (4 by default, or 1) and the mean patch
token of the last block, each through the final norm, concatenated into ``(1 + cls_layers)·D``.

Importing this module registers ``dinov2_vit{s,b,l}14[_reg]_lc`` with timm, so the rest of cft
(``timm.create_model``, ``model.json``, AttnLRP) treats them like any timm model:

- ``pretrained=True`` loads the backbone through timm's own DINOv2 route (Hugging Face hub, or a
  ``pretrained_cfg_overlay`` file: timm's safetensors or Meta's ``*_pretrain.pth``), then Meta's
  head from ``dl.fbaipublicfiles.com`` when the weights held none and the model has 1000 classes.
  A local file with a head (a cft artifact) loads whole. Offline, Meta's head file goes through
  :func:`load_linear_head` (``base.classifier_checkpoint``).
- The input is Meta's linear-evaluation transform: resize 256 (bicubic), centre crop 224. The
  position embedding is resampled to 16×16 once at load (timm), where Meta's code interpolates it
  on every forward pass with a 0.1 offset, so accuracies may differ from Meta's in the last digit.

The giant (g/14) models use a SwiGLU MLP, which the AttnLRP rules do not cover; they are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from pipeline.utils.errors import CftError

IMAGENET_CLASSES = 1000
_META_URL = "https://dl.fbaipublicfiles.com/dinov2"

# name → (timm backbone with its pretrained tag, Meta's model folder, Meta's name for the weights, architecture)
_SMALL = dict(patch_size=14, embed_dim=384, depth=12, num_heads=6)
_BASE = dict(patch_size=14, embed_dim=768, depth=12, num_heads=12)
_LARGE = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16)
_REGISTERS = dict(reg_tokens=4, no_embed_class=True)
VARIANTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "dinov2_vits14_lc": ("vit_small_patch14_dinov2.lvd142m", "dinov2_vits14", "dinov2_vits14", _SMALL),
    "dinov2_vitb14_lc": ("vit_base_patch14_dinov2.lvd142m", "dinov2_vitb14", "dinov2_vitb14", _BASE),
    "dinov2_vitl14_lc": ("vit_large_patch14_dinov2.lvd142m", "dinov2_vitl14", "dinov2_vitl14", _LARGE),
    "dinov2_vits14_reg_lc": (
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "dinov2_vits14",
        "dinov2_vits14_reg4",
        {**_SMALL, **_REGISTERS},
    ),
    "dinov2_vitb14_reg_lc": (
        "vit_base_patch14_reg4_dinov2.lvd142m",
        "dinov2_vitb14",
        "dinov2_vitb14_reg4",
        {**_BASE, **_REGISTERS},
    ),
    "dinov2_vitl14_reg_lc": (
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "dinov2_vitl14",
        "dinov2_vitl14_reg4",
        {**_LARGE, **_REGISTERS},
    ),
}


class LinearHeadError(CftError):
    """A linear-head file that does not fit the model; the message names the file."""


def head_url(name: str, cls_layers: int) -> str:
    """Meta's ImageNet linear head for ``name`` (e.g. ``.../dinov2_vitb14/dinov2_vitb14_linear4_head.pth``)."""
    _, folder, weights, _ = VARIANTS[name]
    return f"{_META_URL}/{folder}/{weights}_linear{cls_layers if cls_layers == 4 else ''}_head.pth"


class Dinov2LinearClassifier(VisionTransformer):
    """A timm ViT whose head reads Meta's linear-probe features.

    ``forward_features`` returns the normed class tokens of the last ``cls_layers`` blocks followed
    by the last block's normed patch tokens (register tokens dropped), ``(B, cls_layers + N, D)``;
    ``pool`` turns that into the head's input. Both are linear in the tokens, so the ViT AttnLRP
    rules cover the model unchanged.
    """

    def __init__(self, cls_layers: int = 4, **kwargs: Any) -> None:
        if cls_layers not in (1, 4):
            raise LinearHeadError(f"cls_layers must be 1 or 4 (Meta's linear heads), not {cls_layers}")
        super().__init__(global_pool="token", **kwargs)
        self.cls_layers = cls_layers
        self.head_hidden_size = (1 + cls_layers) * self.embed_dim
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise LinearHeadError(f"{type(self).__name__} pools Meta's way; global_pool {global_pool!r} does not apply")
        self.num_classes = num_classes
        like = self.patch_embed.proj.weight
        self.head = (
            nn.Linear(self.head_hidden_size, num_classes, device=like.device, dtype=like.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        blocks = self.forward_intermediates(
            x,
            indices=self.cls_layers,
            norm=True,
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
            attn_mask=attn_mask,
            is_causal=is_causal,
        )
        class_tokens = [prefix[:, :1] for _, prefix in blocks]
        return torch.cat([*class_tokens, blocks[-1][0]], dim=1)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        class_tokens, patches = x[:, : self.cls_layers], x[:, self.cls_layers :]
        return torch.cat([class_tokens.flatten(1), patches.mean(dim=1)], dim=1)


def load_linear_head(model: Dinov2LinearClassifier, path: str | Path) -> None:
    """Load Meta's head file (an ``nn.Linear`` state: ``weight``, ``bias``) into ``model.head``."""
    path = Path(path)
    if not path.is_file():
        raise LinearHeadError(f"{path}: linear head file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise LinearHeadError(f"{path}: not a readable torch file ({exc})") from exc
    _load_head_state(model, state, str(path))


def _load_head_state(model: Dinov2LinearClassifier, state: Any, source: str) -> None:
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise LinearHeadError(f"{source}: expected a linear head state with 'weight' and 'bias', found {keys}")
    expected = (model.num_classes, model.head_hidden_size)
    if tuple(state["weight"].shape) != expected:
        raise LinearHeadError(
            f"{source}: head weight {tuple(state['weight'].shape)} does not fit this model's {expected} "
            f"({model.num_classes} classes × (1 + cls_layers={model.cls_layers})·{model.embed_dim}); "
            "check the model size, registers and cls_layers (Meta's 'linear4' heads need cls_layers 4)"
        )
    model.head.load_state_dict(state)


def _cfg(backbone: str) -> dict[str, Any]:
    # num_classes=0: the backbone weights carry no head, so timm loads them without one.
    return dict(
        hf_hub_id=f"timm/{backbone}",
        num_classes=0,
        input_size=(3, 224, 224),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        license="apache-2.0",
        origin_url="https://github.com/facebookresearch/dinov2",
    )


default_cfgs = generate_default_cfgs(
    {f"{name}.lvd142m_in1k": _cfg(backbone) for name, (backbone, *_) in VARIANTS.items()}
)


def _create(name: str, pretrained: bool, **kwargs: Any) -> Dinov2LinearClassifier:
    kwargs.setdefault("num_classes", IMAGENET_CLASSES)
    kwargs.setdefault("img_size", 224)
    kwargs.setdefault("init_values", 1e-5)  # DINOv2's LayerScale
    model = build_model_with_cfg(
        Dinov2LinearClassifier,
        name,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**VARIANTS[name][3], **kwargs},
    )
    cfg = model.pretrained_cfg
    head_in_weights = cfg.get("num_classes") == model.num_classes
    if pretrained and not head_in_weights and not cfg.get("file") and model.num_classes == IMAGENET_CLASSES:
        url = head_url(name, model.cls_layers)
        _load_head_state(model, torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True), url)
    return model


@register_model
def dinov2_vits14_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-S/14 with Meta's ImageNet linear head."""
    return _create("dinov2_vits14_lc", pretrained, **kwargs)


@register_model
def dinov2_vitb14_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-B/14 with Meta's ImageNet linear head."""
    return _create("dinov2_vitb14_lc", pretrained, **kwargs)


@register_model
def dinov2_vitl14_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-L/14 with Meta's ImageNet linear head."""
    return _create("dinov2_vitl14_lc", pretrained, **kwargs)


@register_model
def dinov2_vits14_reg_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-S/14 with 4 registers and Meta's ImageNet linear head."""
    return _create("dinov2_vits14_reg_lc", pretrained, **kwargs)


@register_model
def dinov2_vitb14_reg_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-B/14 with 4 registers and Meta's ImageNet linear head."""
    return _create("dinov2_vitb14_reg_lc", pretrained, **kwargs)


@register_model
def dinov2_vitl14_reg_lc(pretrained: bool = False, **kwargs: Any) -> Dinov2LinearClassifier:
    """DINOv2 ViT-L/14 with 4 registers and Meta's ImageNet linear head."""
    return _create("dinov2_vitl14_reg_lc", pretrained, **kwargs)
