"""Shared training utilities: batching, augmentation, evaluation, guards against bad runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data.datasets import ArraySplit
from pipeline.utils.device import Normalizer, autocast
from pipeline.utils.distributed import Ranks
from pipeline.utils.errors import CftError


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random horizontal flip and translation (reflect-padded crop) of NCHW float images."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1).to(images.device), images.flip(-1), images)
    padded = F.pad(images, (max_shift,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(images.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=images.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=images.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def predict(
    model: torch.nn.Module, normalizer: Normalizer, data: ArraySplit, device: torch.device, batch_size: int
) -> np.ndarray:
    """Predicted class index for every image of ``data``."""
    model.eval()
    predictions = []
    for start in range(0, len(data), batch_size):
        batch = torch.from_numpy(data.images[start : start + batch_size]).to(device)
        with autocast(device):
            logits = model(normalizer(batch))
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def accuracy(
    model: torch.nn.Module, normalizer: Normalizer, data: ArraySplit, device: torch.device, batch_size: int
) -> float:
    return float(np.mean(predict(model, normalizer, data, device, batch_size) == data.labels))


def joint_augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    flip: bool = True,
    min_crop_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop (resized back to full size) and flip for images and their masks.

    ``images`` (N, C, H, W) are resampled bilinearly, ``masks`` (N, M, H, W) by nearest neighbour,
    so a mask stays binary and still covers the same object pixels as its image.
    """
    n = images.shape[0]
    scale = min_crop_scale + (1.0 - min_crop_scale) * torch.rand(n, generator=generator)
    shift = (1.0 - scale) * (2.0 * torch.rand(2, n, generator=generator) - 1.0)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * mirror
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = shift[0]
    theta[:, 1, 2] = shift[1]
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped_images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    warped_masks = F.grid_sample(
        masks.to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return warped_images, warped_masks


@dataclass
class EpochTotals:
    """What one epoch of :func:`train_epoch` measured."""

    losses: list[float] = field(default_factory=list)  # per step
    sums: dict[str, float] = field(default_factory=dict)  # loss and loss terms, summed over images
    correct: int = 0


# One training step's forward pass: (the global batch's indices, this rank's share of them) ->
# (loss, logits, labels, loss terms to report) over the share. Everything random (augmentation,
# corruptions) is drawn for the whole global batch, so each image gets the same draws whatever the
# number of ranks.
StepForward = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]]


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[torch.Tensor],
    forward: StepForward,
    where: Callable[[int], str],
    lr_key: str,
    lr: float,
    bar: tqdm,
    after_step: Callable[[], None] | None = None,
    ranks: Ranks | None = None,
    **postfix: object,
) -> EpochTotals:
    """One epoch of the loop base training and fine-tuning share: forward, a finite-loss guard,
    backward, optimiser step (``after_step``: a per-step scheduler), totals and progress.

    ``where(step)`` names the step in the error of a diverged run, ``lr_key`` and ``lr`` the setting
    to lower and its configured value. Under several ``ranks`` each takes its share of every
    batch, weights its loss by that share, and the gradients, losses and counts are summed over
    ranks: every rank steps with the global batch's mean gradient and reports the global totals.
    """
    ranks = ranks or Ranks()
    model.train()
    totals = EpochTotals()
    for step, batch in enumerate(batches, start=1):
        share = ranks.share(len(batch))
        size = share.stop - share.start
        # a rank without images this step runs one with weight 0, so that all report the same terms
        loss, logits, labels, terms = forward(batch, share if size else slice(0, 1))
        weight = size / len(batch)
        names = sorted(terms)
        correct = int((logits.argmax(1) == labels).sum()) if size else 0
        summed = ranks.sum([loss.item() * weight, *(terms[name] * weight for name in names), correct])
        value = summed[0]
        ensure_finite(value, where(step), lr_key, lr)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        ranks.sum_gradients(model)
        optimizer.step()
        if after_step is not None:
            after_step()
        totals.losses.append(value)
        for key, term in {"loss": value, **dict(zip(names, summed[1:-1], strict=True))}.items():
            totals.sums[key] = totals.sums.get(key, 0.0) + term * len(batch)
        totals.correct += round(summed[-1])
        bar.update(1)
        bar.set_postfix(**postfix, loss=f"{value:.4f}")
    return totals


class TrainingError(CftError):
    """A run that cannot give a usable model (diverged, collapsed); names the stage and what to change."""


def ensure_finite(loss: float, where: str, lr_key: str, lr: float) -> None:
    """Stop at once when the loss is NaN or infinite: every later step would only spread it."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"{where}: the loss is not finite ({loss}); the training diverged: lower {lr_key} (now {lr:g})"
        )


CHANCE_STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class ChanceTest:
    """Is an accuracy on ``images`` labelled images above what predicting one class gets?

    ``chance`` is the share of the most frequent class (1/K for K balanced classes: the accuracy of
    a model that collapsed onto one class). The accuracy must exceed ``chance`` by
    CHANCE_STANDARD_ERRORS binomial standard errors of a chance-level model on that many images,
    sqrt(chance·(1 − chance)/images), to count as learnt: a chance-level model passes this by luck
    about 2 % of the time, and a working one (the world's kept models reach ~0.99 against a bar of
    0.16 on its 100 validation images) is nowhere near it.
    """

    accuracy: float
    images: int
    chance: float
    threshold: float

    @property
    def at_chance(self) -> bool:
        return not self.accuracy > self.threshold  # a NaN accuracy is at chance too

    def describe(self) -> str:
        return (
            f"accuracy {self.accuracy:.3f} on {self.images} held-out images, not above chance "
            f"{self.chance:.3f} + {CHANCE_STANDARD_ERRORS:g} standard errors = {self.threshold:.3f}"
        )


def chance_test(accuracy: float, labels: np.ndarray) -> ChanceTest | None:
    """The test for ``accuracy`` on images with ``labels``; None when it cannot tell (no images,
    or a single class, where predicting it is right every time)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0 or np.unique(labels).size < 2:
        return None
    chance = float(np.bincount(labels).max() / labels.size)
    threshold = chance + CHANCE_STANDARD_ERRORS * math.sqrt(chance * (1.0 - chance) / labels.size)
    return ChanceTest(float(accuracy), int(labels.size), chance, threshold)
