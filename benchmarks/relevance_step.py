"""Cost of one relevance-guided training step against one plain step (same model, batch, device).

The guided step is the CFT step of `cft finetune`: the exact, differentiable AttnLRP map, the CFT
objective on it (``pipeline.training.objective.relevance_loss``, default weights), back-propagated through
both; the plain step is forward, cross-entropy, backward.

    python benchmarks/relevance_step.py                  # world model and ViT-B/16, random weights
    python benchmarks/relevance_step.py --models world   # only the world model
    python benchmarks/relevance_step.py --models vit_base_patch16_224 --batch 64   # another batch size
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F

from pipeline.config.finetune import RelevanceObjective
from pipeline.relevance.attnlrp import attnlrp
from pipeline.training.objective import relevance_loss
from pipeline.utils.device import autocast, resolve_device

MODELS: dict[str, tuple[dict, int, int]] = {
    # name: (timm kwargs, image size, batch size)
    "world": (
        {
            "model_name": "vit_tiny_patch16_224",
            "img_size": 32,
            "patch_size": 4,
            "embed_dim": 96,
            "depth": 4,
            "num_heads": 3,
            "num_classes": 10,
        },
        32,
        64,
    ),
    "vit_base_patch16_224": ({"model_name": "vit_base_patch16_224", "num_classes": 1000}, 224, 8),
}


def timed(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every model (default: per model)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    for name in args.models:
        kwargs, size, batch = MODELS[name]
        batch = args.batch or batch
        objective = RelevanceObjective(objective="relevance")
        model = timm.create_model(pretrained=False, **kwargs).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.randint(0, kwargs["num_classes"], (batch,), device=device)
        masks = (torch.rand(batch, size, size, device=device) > 0.5).float()

        def plain() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()

        def guided() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                relevance = attnlrp(model, images, labels, create_graph=True)
                loss, _ = relevance_loss(relevance.upsampled(), masks, relevance.logits, objective)
            loss.backward()
            optimizer.step()

        plain_s = timed(plain, args.repeats, device)
        guided_s = timed(guided, args.repeats, device)
        print(
            f"{name:22s} batch {batch:3d} on {device.type}: plain {plain_s * 1000:8.1f} ms, "
            f"relevance-guided {guided_s * 1000:8.1f} ms, ratio {guided_s / plain_s:.2f}"
        )


if __name__ == "__main__":
    main()
