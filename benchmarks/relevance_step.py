"""Cost of one relevance-guided training step against one plain step (same model, batch, device).

Three steps, timed side by side in one run, each an AdamW update on random weights:

* ``plain``: forward, cross-entropy, backward;
* ``rollout``: the published CFT code's step: the gradient-weighted attention rollout of the true
  class (gradients through the attention maps only, :mod:`pipeline.relevance.rollout`) and the CFT
  objective on it (``relevance: rollout``);
* ``attnlrp``: our step, `cft finetune`'s default: the exact, differentiable AttnLRP map and the CFT
  objective on it (``pipeline.training.objective.relevance_loss``, default weights), back-propagated
  through both.

Each is the median of ``--repeats`` steps after one warm-up step; ratios are to the plain step.
``--profile`` adds, per step, where the time goes (torch.profiler, operators by self time).

    python benchmarks/relevance_step.py                              # world ViT at batch 8 and 64, ViT-B/16 at 8
    python benchmarks/relevance_step.py --models world --profile     # and the profile of each step
    python benchmarks/relevance_step.py --models vit_base_patch16_224 --batches 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_section  # noqa: E402
from pipeline.config.base import BaseConfig  # noqa: E402
from pipeline.config.finetune import RelevanceObjective  # noqa: E402
from pipeline.data.world.classes import CLASSES  # noqa: E402
from pipeline.models.factory import create_model  # noqa: E402
from pipeline.relevance.attnlrp import attnlrp  # noqa: E402
from pipeline.relevance.rollout import rollout  # noqa: E402
from pipeline.training.objective import relevance_loss  # noqa: E402
from pipeline.utils.device import autocast, resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# name: (base-model config, classes, image size, default batch sizes); the world's ViT is the one
# params.yaml's `base` section builds, through the same builder as `cft base`
MODELS: dict[str, tuple[BaseConfig, int, int, tuple[int, ...]]] = {
    "world": (load_section(REPO / "params.yaml", "base", BaseConfig), len(CLASSES), 32, (8, 64)),
    "vit_base_patch16_224": (BaseConfig(model="vit_base_patch16_224"), 1000, 224, (8,)),
}
STEPS = ("plain", "rollout", "attnlrp")


def timed(
    step: Callable[[], None], repeats: int, device: torch.device, before: Callable[[], None] | None = None
) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call; ``before`` runs untimed before
    each call (e.g. a barrier, so that ranks start a step together)."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        if before is not None:
            before()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_steps(name: str, batch: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """One closure per step kind, sharing the model, optimiser and a random batch."""
    config, classes, size, _ = MODELS[name]
    model = create_model(config, classes, image_size=size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    masks = (torch.rand(batch, size, size, device=device) > 0.5).float()

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()

    def guided(relevance_method: str) -> Callable[[], None]:
        objective = RelevanceObjective(objective="relevance", relevance=relevance_method)
        method = rollout if relevance_method == "rollout" else attnlrp

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                relevance = method(model, images, labels, create_graph=True)
                loss, _ = relevance_loss(relevance.upsampled(), masks, relevance.logits, objective)
            loss.backward()
            optimizer.step()

        return step

    return {"plain": plain, "rollout": guided("rollout"), "attnlrp": guided("attnlrp")}


def profile_summary(step: Callable[[], None], rows: int = 8) -> str:
    """The operators with the most self time over three steps (on the GPU where there is one, else on
    the CPU), as 'name: ms per step (calls per step)'."""
    step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
    where = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda event: -getattr(event, where))
    total = sum(getattr(event, where) for event in events) / 3e3
    shown = [f"{e.key}: {getattr(e, where) / 3e3:.1f} ms ({e.count // 3})" for e in events[:rows]]
    device = "GPU" if torch.cuda.is_available() else "CPU"
    return f"{total:.0f} ms of {device} operator self time per step; " + "; ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--batches", nargs="+", type=int, default=None, help="batch sizes for every model (default: per model)"
    )
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--profile", action="store_true", help="also print where each step's time goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    steps = ["plain", *(step for step in args.steps if step != "plain")]
    print(
        f"{'model':22s} {'batch':>5s}  "
        + "  ".join(f"{step:>18s}" for step in steps)
        + f"   on {device.type}, median of {args.repeats}"
    )
    rows = []
    for name in args.models:
        for batch in args.batches or MODELS[name][3]:
            torch.manual_seed(0)
            closures = training_steps(name, batch, device)
            seconds = {step: timed(closures[step], args.repeats, device) for step in steps}
            cells = [f"{seconds[step] * 1000:9.1f} ms ({seconds[step] / seconds['plain']:4.2f}×)" for step in steps]
            print(f"{name:22s} {batch:5d}  " + "  ".join(cells), flush=True)
            rows.append(
                {"model": name, "batch": batch, "device": device.type, "repeats": args.repeats, "seconds": seconds}
            )
            if args.profile:
                for step in steps:
                    print(f"    {step}: {profile_summary(closures[step])}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
