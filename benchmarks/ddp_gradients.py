"""DistributedDataParallel against `cft finetune`'s all-reduce after backward, on the CFT objective.

The CFT loss differentiates AttnLRP's relevance, itself a gradient taken with ``create_graph``, so
one step runs ``torch.autograd.grad(..., create_graph=True)`` inside the forward pass and then an
ordinary backward through both. This measures, for the world ViT (params.yaml's ``base``) and one
global batch split over the ranks, how far each way's gradient lies from one process's gradient of
the whole batch, and what a step costs:

* ``all-reduce``: `cft finetune`'s way (:meth:`pipeline.utils.distributed.Ranks.sum_gradients`):
  each rank's loss weighted by its share of the batch, one all-reduce of all gradients after backward;
* ``ddp``, ``ddp static_graph``, ``ddp find_unused``: the model wrapped in
  ``DistributedDataParallel`` (its reducer averages gradients during backward), the AttnLRP rules
  patched onto the wrapped module and the forward called through the wrapper.

    torchrun --standalone --nproc-per-node=2 benchmarks/ddp_gradients.py            # gloo on the CPU
    torchrun --standalone --nproc-per-node=2 benchmarks/ddp_gradients.py --device cuda --batch 64

Gradients are compared to the single-process gradient as max |difference| / max |reference| over
all parameters (float rounding differs between the ways: expect ~1e-6 in float32).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relevance_step import timed  # noqa: E402  (beside this script)

from pipeline.config import load_section  # noqa: E402
from pipeline.config.base import BaseConfig  # noqa: E402
from pipeline.config.finetune import RelevanceObjective  # noqa: E402
from pipeline.data.world.classes import CLASSES  # noqa: E402
from pipeline.models.factory import create_model  # noqa: E402
from pipeline.relevance.attnlrp import Relevance, _cell_sums, attnlrp, attnlrp_rules, relevance_cell  # noqa: E402
from pipeline.relevance.streams import TwoStreams  # noqa: E402
from pipeline.training.objective import competitor_classes, relevance_loss  # noqa: E402
from pipeline.utils.distributed import session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
OBJECTIVES = {
    "paper objective": RelevanceObjective(objective="relevance"),
    "with competitors": RelevanceObjective(objective="relevance", competitor_weight=1.0, competitors=2),
}
DDP_OPTIONS: dict[str, dict[str, bool]] = {
    "ddp": {},
    "ddp static_graph": {"static_graph": True},
    "ddp find_unused": {"find_unused_parameters": True},
}
RelevanceOf = Callable[[torch.Tensor, torch.Tensor], Relevance]


def ddp_relevance(wrapper: DistributedDataParallel, images: torch.Tensor, targets: torch.Tensor) -> Relevance:
    """:func:`attnlrp` with ``create_graph``, the forward run through DDP's wrapper (so its reducer
    sees the pass) and the rules patched onto the module it wraps."""
    module = wrapper.module
    linear_input = images.detach().clone().requires_grad_(True)
    with attnlrp_rules(module):
        both = wrapper(TwoStreams(images, linear_input))
    selected = both.linear.gather(1, targets.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(selected, linear_input, create_graph=True)
    pixels = (linear_input * gradient).sum(dim=1)
    cell = relevance_cell(module)
    return Relevance(pixels=pixels, tokens=_cell_sums(pixels, cell), logits=both.normal, cell=cell)


def cft_loss(
    relevance_of: RelevanceOf,
    objective: RelevanceObjective,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
) -> torch.Tensor:
    """The CFT loss of a batch, every relevance map (the competitors' too) from ``relevance_of``."""
    relevance = relevance_of(images, labels)
    competitors = None
    if objective.competitor_weight > 0:
        classes = competitor_classes(relevance.logits, labels, objective.competitors)
        maps = relevance_of(images.repeat_interleave(objective.competitors, dim=0), classes.flatten())
        competitors = maps.upsampled().unflatten(0, (len(images), objective.competitors))
    loss, _ = relevance_loss(relevance.upsampled(), masks, relevance.logits, objective, labels, None, competitors)
    return loss


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def relative_gap(found: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    scale = max(r.abs().max().item() for r in reference)
    return max((f - r).abs().max().item() for f, r in zip(found, reference, strict=True)) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="global batch, split over the ranks")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file (rank 0)")
    parser.add_argument("--ways", nargs="+", default=list(DDP_OPTIONS), choices=list(DDP_OPTIONS), help="DDP settings")
    args = parser.parse_args()
    with session(args.device) as (ranks, device):
        if ranks.world < 2:
            raise SystemExit("run under torchrun with --nproc-per-node of 2 or more")
        torch.manual_seed(0)
        config = load_section(REPO / "params.yaml", "base", BaseConfig)
        model = create_model(config, len(CLASSES), image_size=IMAGE_SIZE).to(device).train()
        images = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
        labels = torch.randint(0, len(CLASSES), (args.batch,), device=device)
        masks = (torch.rand(args.batch, IMAGE_SIZE, IMAGE_SIZE, device=device) > 0.5).float()
        share = ranks.share(args.batch)

        rows: list[dict[str, object]] = []

        def report(name: str, way: str, gap: float, seconds: float, remark: str = "") -> None:
            if ranks.main:
                rows.append({"objective": name, "way": way, "gradient_gap": gap, "seconds": seconds, "error": remark})
                if args.json is not None:  # rewritten after every row: a run that stops keeps what it measured
                    args.json.write_text(json.dumps(rows, indent=2) + "\n")
                print(f"{name:18s} {way:18s} {gap:13.2e} {seconds * 1000:8.1f} ms  {remark}", flush=True)

        if ranks.main:
            print(f"world ViT, batch {args.batch} over {ranks.world} ranks on {device.type}, median of {args.repeats}")
            print(f"{'objective':18s} {'way':18s} {'gradient gap':>13s} {'step':>11s}")
        failed: list[DistributedDataParallel] = []
        for name, objective in OBJECTIVES.items():

            def single(images: torch.Tensor, targets: torch.Tensor) -> Relevance:
                return attnlrp(model, images, targets, create_graph=True)

            model.zero_grad(set_to_none=True)
            cft_loss(single, objective, images, labels, masks).backward()
            reference = gradients(model)

            def all_reduce_step(objective: RelevanceObjective = objective) -> None:
                model.zero_grad(set_to_none=True)
                loss = cft_loss(single, objective, images[share], labels[share], masks[share])
                (loss * (share.stop - share.start) / args.batch).backward()
                ranks.sum_gradients(model)

            all_reduce_step()
            gap = relative_gap(gradients(model), reference)
            report(name, "all-reduce", gap, timed(all_reduce_step, args.repeats, device, dist.barrier))
            # the communication alone: the most that overlapping it with the backward pass (DDP's buckets) could save
            report(
                name,
                "(its all-reduce)",
                float("nan"),
                timed(lambda: ranks.sum_gradients(model), args.repeats, device, dist.barrier),
            )
            for way in args.ways:
                options = DDP_OPTIONS[way]
                # a copy each: a wrapper's hooks stay on the parameters it wrapped, even after an error
                wrapper = DistributedDataParallel(copy.deepcopy(model), **options)

                def ddp_step(
                    wrapper: DistributedDataParallel = wrapper, objective: RelevanceObjective = objective
                ) -> None:
                    wrapper.zero_grad(set_to_none=True)

                    def through_wrapper(images: torch.Tensor, targets: torch.Tensor) -> Relevance:
                        return ddp_relevance(wrapper, images, targets)

                    cft_loss(through_wrapper, objective, images[share], labels[share], masks[share]).backward()

                try:
                    ddp_step()
                except RuntimeError as error:
                    failed.append(wrapper)
                    report(name, way, float("nan"), float("nan"), f"RuntimeError: {str(error).splitlines()[0][:90]}")
                    continue
                gap = relative_gap(gradients(wrapper.module), reference)
                report(name, way, gap, timed(ddp_step, args.repeats, device, dist.barrier))
        if failed:
            # a wrapper whose backward raised keeps its reducer waiting for buckets that never come,
            # and tearing it or the process group down then blocks: leave without either
            sys.stdout.flush()
            os._exit(0)


if __name__ == "__main__":
    main()
