"""GroundingDINO as a concept detector: one text prompt per concept, one backbone pass per image.

The reference Grounded-SAM demo joins all phrases into one caption and maps detected phrases
back to classes by substring, which silently mislabels overlapping phrases ("wing" in "wing
mirror"). Here every concept is its own caption. The prompts of an image run as one batch of the
image repeated; the Swin backbone is patched to compute the image's features once and share them
across the batch (the text-conditioned encoder and decoder still run per prompt, as they must).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.models.weights import ModelFileError, load_state_dict, load_weights, verified_file
from pipeline.utils.device import autocast
from pipeline.utils.errors import CftError

if TYPE_CHECKING:
    from pipeline.config.masks import GroundingDinoConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXT_ENCODER_FILES = ["config.json", "*.txt", "tokenizer*.json", "*.safetensors"]
SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")


class GroundingError(CftError):
    """GroundingDINO cannot be built or loaded; the message says what to provide."""


@dataclass
class Detections:
    """Boxes of one prompt in one image, best first."""

    boxes: np.ndarray  # (n, 4) float32, x0 y0 x1 y1 in pixels of the original image
    scores: np.ndarray  # (n,) float32
    best_score: float  # best box score over all queries, kept or not (for QC)


def caption(prompt: str) -> str:
    """GroundingDINO's caption form: lower case, ending with a period."""
    text = prompt.lower().strip()
    return text if text.endswith(".") else text + "."


def resolve_text_encoder(name: str) -> Path:
    """A local directory holding the BERT text encoder: ``name`` itself, or its Hugging Face cache entry.

    Never waits on network retries offline: with ``HF_HUB_OFFLINE`` set only the cache is tried.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GroundingError(f"{path}: text encoder directory without config.json")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id like "org/name"
        raise GroundingError(f"{path}: text encoder directory not found")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=TEXT_ENCODER_FILES, local_files_only=True))
    except Exception as cached_error:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            reason = f"offline (HF_HUB_OFFLINE) and not in the Hugging Face cache ({cached_error.__class__.__name__})"
        else:
            try:
                return Path(snapshot_download(name, allow_patterns=TEXT_ENCODER_FILES, etag_timeout=10))
            except Exception as exc:
                reason = f"not in the Hugging Face cache and the download failed ({exc.__class__.__name__}: {str(exc)[:200]})"
    raise GroundingError(
        f"GroundingDINO's text encoder '{name}' is {reason}. On a machine with internet run "
        f"`huggingface-cli download {name}` (then copy ~/.cache/huggingface), or set "
        f"masks.grounded_sam.grounding.text_encoder to a local directory with its config.json, vocab.txt and weights."
    )


def config_path(config: str) -> Path:
    """A GroundingDINO config by file name (shipped with groundingdino-py) or by path."""
    path = Path(config)
    if path.is_file():
        return path
    import groundingdino.config

    shipped = Path(groundingdino.config.__file__).parent / config
    if shipped.is_file():
        return shipped
    known = sorted(p.name for p in shipped.parent.glob("*.py") if p.name != "__init__.py")
    raise GroundingError(f"{config}: no such GroundingDINO config file (shipped ones: {known})")


def build_grounding_dino(config: GroundingDinoConfig, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The architecture of ``config.config`` with random weights (``overrides`` change its args)."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config_path(config.config)))
    args.text_encoder_type = str(resolve_text_encoder(config.text_encoder))
    args.device = "cpu"
    # activation checkpointing only saves memory in training and warns under no_grad
    args.use_checkpoint = False
    args.use_transformer_ckpt = False
    for key, value in (overrides or {}).items():
        setattr(args, key, value)
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints the text encoder path
        model = build_model(args)
    return model.eval()


def load_grounding_dino(
    config: GroundingDinoConfig, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model and load ``config.checkpoint``; returns it with the file's provenance."""
    if config.checkpoint is None:
        raise GroundingError("masks.grounded_sam.grounding.checkpoint is not set")
    path, sha256 = verified_file(config.checkpoint, config.sha256, "GroundingDINO")
    model = build_grounding_dino(config, overrides)
    checkpoint = load_weights(path, trusted=config.sha256 is not None)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(
            f"{path}: expected a state dict (or {{'model': state dict}}), got {type(checkpoint).__name__}"
        )
    # position_ids are a buffer whose presence in checkpoints varies across transformers versions
    unexpected = load_state_dict(model, state, path, ignore_missing=("position_ids",))
    provenance = {
        "config": config.config,
        "checkpoint": str(config.checkpoint),
        "sha256": sha256,
        "text_encoder": config.text_encoder,
        "unexpected_weights": len(unexpected),
    }
    return model, provenance


class SharedImageFeatures:
    """Patches the backbone so that a batch of one image repeated (stride 0) is encoded once; inside
    ``reuse()``, later calls with the same image tensor reuse those features too."""

    def __init__(self, image_encoder: nn.Module) -> None:
        from groundingdino.util.misc import NestedTensor

        encode = image_encoder.forward
        self._reusing = False
        self._key: tuple[Any, ...] | None = None
        self._features: dict[Any, NestedTensor] = {}

        def forward(tensor_list: NestedTensor) -> dict[Any, NestedTensor]:
            images, mask = tensor_list.tensors, tensor_list.mask
            if images.shape[0] > 1 and images.stride(0) != 0:
                return encode(tensor_list)
            key = (images.data_ptr(), tuple(images.shape[1:]), mask.data_ptr())
            if not self._reusing or key != self._key:
                self._features = encode(NestedTensor(images[:1], mask[:1]))
                self._key = key
            count = images.shape[0]
            return {
                k: NestedTensor(f.tensors.expand(count, *f.tensors.shape[1:]), f.mask.expand(count, *f.mask.shape[1:]))
                for k, f in self._features.items()
            }

        image_encoder.forward = forward

    @classmethod
    def patch(cls, image_encoder: nn.Module) -> SharedImageFeatures:
        """Patch once per module: a second detector on the same model reuses the first patch."""
        shared = getattr(image_encoder, "_cft_shared_features", None)
        if shared is None:
            shared = cls(image_encoder)
            image_encoder._cft_shared_features = shared
        return shared

    @contextlib.contextmanager
    def reuse(self) -> Iterator[None]:
        self._reusing = True
        try:
            yield
        finally:
            self._reusing, self._key, self._features = False, None, {}


class ConceptDetector:
    """Boxes for each of several text prompts in one image, in one batched model call."""

    def __init__(self, model: nn.Module, config: GroundingDinoConfig, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self._shared = SharedImageFeatures.patch(self.model.backbone[0])
        self._special = torch.tensor(self.model.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """GroundingDINO's own inference transform: shorter side to ``image_size`` (longer side capped), normalised."""
        height, width = image.shape[:2]
        scale = self.config.image_size / min(height, width)
        if max(height, width) * scale > self.config.max_size:
            scale = self.config.max_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
        tensor = torch.from_numpy(resized).permute(2, 0, 1).float().div_(255.0)
        return (tensor - self._mean) / self._std

    @torch.no_grad()
    def detect(self, image: np.ndarray, prompts: list[str]) -> list[Detections]:
        """One ``Detections`` per prompt; ``image`` is (H, W, 3) uint8 RGB."""
        from groundingdino.util.misc import NestedTensor

        if not prompts:
            return []
        height, width = image.shape[:2]
        tensor = self.preprocess(image).to(self.device)
        pad_mask = torch.zeros((1, *tensor.shape[1:]), dtype=torch.bool, device=self.device)
        captions = [caption(p) for p in prompts]
        tokens = self.model.tokenizer(captions, padding="longest", return_tensors="pt")
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        # GroundingDINO treats a padded caption's [SEP] like a phrase separator, which changes its
        # scores; captions of equal token length batch exactly, and the image is encoded once for all
        scores: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        coordinates: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        with self._shared.reuse():
            for length in sorted(set(lengths)):
                group = [i for i, n in enumerate(lengths) if n == length]
                samples = NestedTensor(tensor[None].expand(len(group), -1, -1, -1), pad_mask.expand(len(group), -1, -1))
                with autocast(self.device):
                    outputs = self.model(samples, captions=[captions[i] for i in group])
                for row, index in enumerate(group):
                    scores[index] = outputs["pred_logits"][row].float().sigmoid().cpu()  # (queries, max_text_len)
                    coordinates[index] = outputs["pred_boxes"][row].float().cpu()  # (queries, 4) normalised cx cy w h
        logits, boxes = torch.stack(scores), torch.stack(coordinates)
        words = tokens["attention_mask"].bool() & ~torch.isin(tokens["input_ids"], self._special)
        words = words[:, : logits.shape[2]]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        results = []
        for index in range(len(prompts)):
            box_score = logits[index].max(dim=1).values
            word_score = logits[index, :, : words.shape[1]].masked_fill(~words[index], 0.0).max(dim=1).values
            keep = torch.nonzero(
                (box_score > self.config.box_threshold) & (word_score > self.config.text_threshold)
            ).flatten()
            keep = keep[box_score[keep].argsort(descending=True, stable=True)][: self.config.max_boxes]
            pixel_boxes = (cxcywh_to_xyxy(boxes[index, keep]) * scale).clamp_(min=0)
            pixel_boxes[:, 0::2] = pixel_boxes[:, 0::2].clamp(max=width)
            pixel_boxes[:, 1::2] = pixel_boxes[:, 1::2].clamp(max=height)
            results.append(Detections(pixel_boxes.numpy(), box_score[keep].numpy(), float(box_score.max())))
        return results


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
