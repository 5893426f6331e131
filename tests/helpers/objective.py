"""Hand-built objectives, a float64 tiny ViT and its inputs for finite-difference checks of the objectives."""

from __future__ import annotations

import math

import timm
import torch
from torch import nn

from pipeline.config.finetune import RelevanceObjective
from tests.helpers.relevance_checks import spread_parameters


def objective(**values: object) -> RelevanceObjective:
    return RelevanceObjective(objective="relevance", **values)


def cross_entropy_by_hand(logits: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for row in logits.tolist():
        target = max(range(len(row)), key=row.__getitem__)
        scaled = [value / temperature for value in row]
        total += math.log(sum(math.exp(value) for value in scaled)) - scaled[target]
    return total / len(logits)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = (
        timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=8,
            patch_size=4,
            embed_dim=8,
            depth=1,
            num_heads=2,
            num_classes=3,
        )
        .double()
        .eval()
    )
    spread_parameters(model)
    return model


def fd_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    masks = (torch.rand(2, 8, 8, generator=generator) > 0.5).double()
    return x, masks, torch.tensor([0, 2])


PROBED = ["cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "blocks.0.mlp.fc1.weight"]
