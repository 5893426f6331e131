"""Running a stage under ``torchrun``: the process group, this process's rank, and what ranks share.

A stage run as ``torchrun --nproc-per-node=N --no-python cft <stage> ...`` finds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment (torchrun sets them, and the rendezvous for
several nodes); :func:`session` joins the process group (NCCL on CUDA, gloo on the CPU) and
yields this process's :class:`Ranks`. Without torchrun it yields a single rank, and nothing here
communicates.

Fine-tuning is data-parallel by hand: every rank draws the same global batch (same generator),
keeps its contiguous share, weights its loss by its share of the batch, and the gradients are
summed across ranks after the backward pass (:meth:`Ranks.sum_gradients`), so every rank holds
the global batch's mean gradient and steps its optimiser to the same weights. Not
DistributedDataParallel, chosen by measurement (``benchmarks/ddp_gradients.py``, checked by
``tests/test_distributed.py``): the CFT objective differentiates a gradient (AttnLRP's relevance is
taken with ``create_graph``), and of DDP's settings only the default gives the right gradient there
(as the sum after backward does, also with the competitor term's second pass); ``static_graph``
gives a silently wrong one and ``find_unused_parameters`` raises (pytorch/pytorch#47562 and #63929
list more such cases). DDP's gain would be overlapping the all-reduce with the backward pass, at
most the all-reduce's own time, a small part of a CFT step (measured in docs/scaling.md). Summing
once after the backward pass is right for every objective, needs no wrapper around the patched
model, and leaves nothing to misconfigure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.utils.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (a single rank without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes artifacts, reports progress and saves resumable state."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` items (sizes differ by at most one; may be empty)."""
        return slice(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64), the same on every rank."""
        if self.world == 1:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=_communication_device())
        dist.all_reduce(summed)
        return summed.tolist()

    def sum_gradients(self, model: nn.Module) -> None:
        """Replace every trainable parameter's gradient by its sum over ranks (a missing one counts as zero)."""
        if self.world == 1:
            return
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch._utils._flatten_dense_tensors(gradients)  # one all-reduce, not one per tensor
        dist.all_reduce(flat)
        for parameter, summed in zip(parameters, torch._utils._unflatten_dense_tensors(flat, gradients), strict=True):
            parameter.grad = summed

    def gather(self, value: object) -> list[object] | None:
        """Every rank's ``value`` in rank order on the main rank (None elsewhere); values are
        pickled, so tensors in them should be on the CPU."""
        if self.world == 1:
            return [value]
        gathered: list[object] | None = [None] * self.world if self.main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _communication_device() -> torch.device:
    """Where collective tensors live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_ranks() -> int:
    """WORLD_SIZE as torchrun sets it; 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def session(device_name: str) -> Iterator[tuple[Ranks, torch.device]]:
    """This process's ranks and device for a stage configured with ``device_name`` (auto, cpu,
    cuda): under torchrun, the process group is joined (NCCL for CUDA, gloo for the CPU), the
    device is this node's GPU ``LOCAL_RANK``, and the group is left on exit."""
    device = resolve_device(device_name)
    if launched_ranks() == 1:
        yield Ranks(), device
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), local_rank), device
    finally:
        if joined:
            dist.destroy_process_group()
