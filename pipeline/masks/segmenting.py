"""Segment Anything as a box segmenter: one image embedding per image, all its boxes decoded together.

``SamPredictor`` embeds one image per ``set_image`` call; here the encoder takes a batch of images
(``sam.images_per_batch``) and every box of every concept of an image is decoded in one batched
call of the light mask decoder, reusing that image's embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.models.weights import load_state_dict, load_weights, verified_file
from pipeline.utils.device import autocast

if TYPE_CHECKING:
    from pipeline.config.masks import SamConfig

PROMPT_EMBED_DIM = 256


@dataclass(frozen=True)
class SamArchitecture:
    """SAM's image-encoder shape; the presets are ``segment_anything.build_sam``'s."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    decoder_mlp_dim: int = 2048


SAM_ARCHITECTURES = {
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
}


def build_sam(architecture: SamArchitecture) -> nn.Module:
    """SAM with random weights; parameter names match the published checkpoints."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = architecture.image_size // architecture.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=architecture.depth,
            embed_dim=architecture.embed_dim,
            img_size=architecture.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=architecture.num_heads,
            patch_size=architecture.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=architecture.global_attn_indexes,
            window_size=architecture.window_size,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(architecture.image_size, architecture.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=architecture.decoder_mlp_dim, num_heads=8
            ),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(config: SamConfig, architecture: SamArchitecture | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``config.model_type`` (or ``architecture``) and load ``config.checkpoint`` into it."""
    if config.checkpoint is None:
        raise ValueError("masks.grounded_sam.sam.checkpoint is not set")
    path, sha256 = verified_file(config.checkpoint, config.sha256, f"SAM {config.model_type}")
    sam = build_sam(architecture or SAM_ARCHITECTURES[config.model_type])
    state = load_weights(path, trusted=config.sha256 is not None)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a SAM state dict, got {type(state).__name__}")
    unexpected = load_state_dict(sam, state, path)
    if unexpected:
        raise ValueError(
            f"{path}: {len(unexpected)} weights that SAM {config.model_type} does not have, e.g. {unexpected[:4]} (wrong model_type?)"
        )
    return sam, {"model_type": config.model_type, "checkpoint": str(config.checkpoint), "sha256": sha256}


@dataclass
class ImageEmbeddings:
    """SAM embeddings of a batch of images, with the geometry needed to map boxes and masks."""

    embeddings: torch.Tensor  # (n, 256, grid, grid)
    input_sizes: list[tuple[int, int]]  # each image's size after resizing, before padding
    original_sizes: list[tuple[int, int]]


class BoxSegmenter:
    def __init__(self, sam: nn.Module, device: torch.device, boxes_per_batch: int = 64) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam.to(device).eval()
        self.device = device
        self.boxes_per_batch = boxes_per_batch
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> ImageEmbeddings:
        """One encoder call for the batch: each image is embedded exactly once."""
        inputs, input_sizes = [], []
        for image in images:
            resized = (
                torch.as_tensor(self.transform.apply_image(image), device=self.device).permute(2, 0, 1).contiguous()
            )
            input_sizes.append(tuple(resized.shape[-2:]))
            inputs.append(self.sam.preprocess(resized[None].float()))
        with autocast(self.device):
            embeddings = self.sam.image_encoder(torch.cat(inputs)).float()
        return ImageEmbeddings(embeddings, input_sizes, [tuple(i.shape[:2]) for i in images])

    @torch.no_grad()
    def segment(self, embeddings: ImageEmbeddings, index: int, boxes: np.ndarray) -> np.ndarray:
        """(n, H, W) bool masks of ``boxes`` (n, 4 pixel x0 y0 x1 y1) in image ``index`` of the batch."""
        height, width = embeddings.original_sizes[index]
        if len(boxes) == 0:
            return np.zeros((0, height, width), dtype=bool)
        prompts = self.transform.apply_boxes_torch(
            torch.as_tensor(boxes, dtype=torch.float32, device=self.device), (height, width)
        )
        masks = []
        for start in range(0, len(prompts), self.boxes_per_batch):
            chunk = prompts[start : start + self.boxes_per_batch]
            with autocast(self.device):
                sparse, dense = self.sam.prompt_encoder(points=None, boxes=chunk, masks=None)
                low_res, _ = self.sam.mask_decoder(
                    image_embeddings=embeddings.embeddings[index : index + 1],
                    image_pe=self.sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
            upscaled = self.sam.postprocess_masks(low_res.float(), embeddings.input_sizes[index], (height, width))
            masks.append((upscaled[:, 0] > self.sam.mask_threshold).cpu().numpy())
        return np.concatenate(masks)
