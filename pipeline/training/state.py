"""The resumable state of a training run, saved after every epoch (as timm's CheckpointSaver
keeps the best checkpoint and the last one to resume from).

One atomic file holds the weights, optimiser, scheduler and generator states, the curves so far
and the best epoch's weights; it is reused only by a run with the same fingerprint (config, input
files, code and torch version), so a changed run never resumes from a stale state.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.utils.checkpoint import load_state, save_state


@dataclass
class TrainingState:
    directory: Path
    fingerprint: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch.optim.lr_scheduler scheduler
    generator: torch.Generator
    saves: bool = True  # False on every rank but the main one of a distributed run: one writer
    curves: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "score": -math.inf, "weights": None})
    epoch: int = 0  # the last finished epoch

    def restore(self) -> bool:
        """Continue from the saved state if it was made by the same run; False when there is none."""
        state = load_state(self.directory, self.fingerprint)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.curves, self.best, self.epoch = state["curves"], state["best"], state["epoch"]
        return True

    def finish_epoch(self, row: dict[str, Any], score: float) -> None:
        """Record the epoch's curves row, keep its weights if ``score`` is the best so far (ties go to
        the later epoch: as good on validation, more trained), and save."""
        self.curves.append(row)
        self.epoch = row["epoch"]
        if score >= self.best["score"]:
            weights = copy.deepcopy({name: tensor.cpu() for name, tensor in self.model.state_dict().items()})
            self.best = {"epoch": self.epoch, "score": score, "weights": weights}
        if not self.saves:
            return
        save_state(
            self.directory,
            {
                "fingerprint": self.fingerprint,
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "curves": self.curves,
                "best": self.best,
            },
        )

    def load_best(self) -> None:
        self.model.load_state_dict(self.best["weights"])
