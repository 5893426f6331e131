"""Cost of one relevance-guided training step against one plain step (same model, batch, device).

The guided step computes the exact, differentiable AttnLRP map, a loss on it plus cross-entropy,
and back-propagates through both; the plain step is forward, cross-entropy, backward.

    python benchmarks/relevance_step.py                  # world model and ViT-B/16, random weights
    python benchmarks/relevance_step.py --models world   # only the world model
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F

from pipeline.relevance.attnlrp import attnlrp
from pipeline.training import autocast, resolve_device

MODELS: dict[str, tuple[dict, int, int]] = {
    # name: (timm kwargs, image size, batch size)
    "world": ({"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3, "num_classes": 10}, 32, 64),
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
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    for name in args.models:
        kwargs, size, batch = MODELS[name]
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
                heat = relevance.upsampled().float().relu()
                heat = heat / (heat.amax(dim=(1, 2), keepdim=True) + 1e-6)
                loss = (heat * (1 - masks)).mean() + ((heat - masks) * masks).pow(2).mean()
                loss = loss + F.cross_entropy(relevance.logits.float(), labels)
            loss.backward()
            optimizer.step()

        plain_s = timed(plain, args.repeats, device)
        guided_s = timed(guided, args.repeats, device)
        print(f"{name:22s} batch {batch:3d} on {device.type}: plain {plain_s * 1000:8.1f} ms, "
              f"relevance-guided {guided_s * 1000:8.1f} ms, ratio {guided_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
