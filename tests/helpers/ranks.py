"""Running a function in several processes joined as torchrun would join them (gloo, on the CPU)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(world: int, target: Callable[..., None], *args: Any) -> None:
    """``target(*args)`` in ``world`` fresh processes with torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, a rendezvous on 127.0.0.1); an exception in any of them fails the caller. ``target``
    must be importable by name (a module-level function), as for every spawned process."""
    torch.multiprocessing.spawn(_rank, args=(world, free_port(), target, args), nprocs=world, join=True)


def _rank(rank: int, world: int, port: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # two processes on two cores
    target(*args)
