"""Running every model over one benchmark: batched, streamed to disk in parts, resumable.

The images are decoded once (DataLoader worker processes) and each batch goes through every model
(base and fine-tuned), so adding a model costs its forward passes, not another decode. After every
``part_size`` images the predictions of every protocol, the readable flags and the relevance sums
are saved atomically under the work folder with a fingerprint of the run (models, benchmark,
settings, code); an interrupted evaluation restarts at the first missing part.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pipeline.benchmarks.catalog import BenchmarkImages
from pipeline.benchmarks.corrupted import corruption_breakdown, corruption_metrics
from pipeline.benchmarks.protocols import benchmark_metrics, predict, protocols_for
from pipeline.benchmarks.segmentation import SegmentationScores
from pipeline.benchmarks.sources import ArrayItems, EvalSource
from pipeline.relevance.attnlrp import UnsupportedModelError
from pipeline.relevance.maps import relevance_batch
from pipeline.training.objective import background_share
from pipeline.utils.atomic import write_with
from pipeline.utils.device import Normalizer, autocast
from pipeline.utils.distributed import Ranks

if TYPE_CHECKING:
    from pipeline.config.evaluate import EvaluateConfig

GROUPS = ("all", "seen", "unseen")
PART_PREFIX = "part-"


@dataclass
class ModelUnderTest:
    name: str
    model: torch.nn.Module
    normalizer: Normalizer
    relevance: bool = True  # False when the model has layers the relevance rules do not cover


@dataclass
class PartResult:
    """What one part of the benchmark produced, for every model."""

    readable: np.ndarray  # (n,) bool
    predictions: dict[str, dict[str, np.ndarray]]  # model -> protocol -> (n,) predicted class
    scores: dict[str, dict[str, SegmentationScores]] = field(default_factory=dict)  # model -> group -> sums
    shares: dict[str, list[float]] = field(default_factory=dict)  # model -> background share per measured image
    cue_shares: dict[str, list[float]] = field(
        default_factory=dict
    )  # model -> share on the cue, per measured image with a cue
    cue_areas: list[float] = field(default_factory=list)  # the cue's share of the image, same images

    def save(self, path: Path, fingerprint: str) -> None:
        arrays = {"readable": self.readable}
        arrays.update(
            {
                f"pred/{model}/{protocol}": values
                for model, per in self.predictions.items()
                for protocol, values in per.items()
            }
        )
        extra = {
            "fingerprint": fingerprint,
            "scores": {model: {group: s.to_dict() for group, s in per.items()} for model, per in self.scores.items()},
            "shares": self.shares,
            "cue_shares": self.cue_shares,
            "cue_areas": self.cue_areas,
        }
        arrays["extra"] = np.frombuffer(json.dumps(extra).encode(), dtype=np.uint8)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        write_with(path, write)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> PartResult | None:
        """The saved part if it belongs to this run; None when absent, torn or from another run."""
        if not path.is_file():
            return None
        try:
            with np.load(path) as saved:
                extra = json.loads(saved["extra"].tobytes())
                if extra.get("fingerprint") != fingerprint:
                    return None
                predictions: dict[str, dict[str, np.ndarray]] = {}
                for key in saved.files:
                    if key.startswith("pred/"):
                        _, model, protocol = key.split("/", 2)
                        predictions.setdefault(model, {})[protocol] = saved[key]
                readable = saved["readable"]
        except Exception:  # a torn or foreign file is recomputed, never trusted
            return None
        scores = {
            model: {group: SegmentationScores.from_dict(s) for group, s in per.items()}
            for model, per in extra["scores"].items()
        }
        return cls(readable, predictions, scores, extra["shares"], extra["cue_shares"], extra["cue_areas"])


def seen_flags(images: BenchmarkImages | None, count: int, seen_classes: set[int] | None) -> np.ndarray | None:
    """Per image: is any of its target classes fine-tuned on? None when unknown."""
    if images is None or seen_classes is None:
        return None
    return np.array([any(t in seen_classes for t in targets) for targets in images.targets[:count]], dtype=bool)


def _loader(dataset: Subset[Any], config: EvaluateConfig, device: torch.device) -> DataLoader[Any]:
    if isinstance(dataset.dataset, ArrayItems):
        workers = 0  # already decoded, in memory
    elif config.workers is not None:
        workers = config.workers
    else:
        workers = min(8, os.cpu_count() or 1, max(1, (len(dataset) + config.batch_size - 1) // config.batch_size))
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_single_thread if workers else None,
        persistent_workers=False,
    )


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the main process for cores


def _run_part(
    source: EvalSource,
    indices: list[int],
    models: list[ModelUnderTest],
    seen: np.ndarray | None,
    config: EvaluateConfig,
    device: torch.device,
    bar: tqdm,
) -> PartResult:
    protocols = [p.name for p in protocols_for(source.images)] if source.images is not None else []
    predictions: dict[str, dict[str, list[np.ndarray]]] = {m.name: {p: [] for p in protocols} for m in models}
    readable: list[np.ndarray] = []
    measure = source.has_masks and config.relevance
    groups = GROUPS if seen is not None else ("all",)
    scores = {m.name: {g: SegmentationScores() for g in groups} for m in models if measure and m.relevance}
    shares: dict[str, list[float]] = {name: [] for name in scores}
    cue_shares: dict[str, list[float]] = {name: [] for name in scores}
    cue_areas: list[float] = []
    limit = config.relevance_images if config.relevance_images is not None else len(source)
    for batch in _loader(Subset(source.dataset, indices), config, device):
        images = batch["image"].to(device, non_blocking=True)
        index = batch["index"].numpy()
        readable.append(batch["readable"].numpy().astype(bool))
        # Relevance against the object mask on the first `limit` images that show an object (the
        # backgrounds variants without one have an empty mask, where the metrics mean nothing)
        measured = np.flatnonzero((index < limit) & batch["mask"].numpy().any(axis=(1, 2))) if scores else []
        if scores and "cue" in batch:  # the cue's area on the images whose relevance is measured
            cues = batch["cue"][measured].numpy()
            cue_areas += cues[cues.any(axis=(1, 2))].mean(axis=(1, 2)).tolist()
        for entry in models:
            x = entry.normalizer(images)
            with torch.no_grad(), autocast(device):
                logits = entry.model(x)
            chosen = predict(logits, source.images) if source.images is not None else {"standard": logits.argmax(dim=1)}
            for protocol in protocols:
                predictions[entry.name][protocol].append(chosen[protocol].cpu().numpy())
            if entry.name not in scores or not len(measured):
                continue
            if config.relevance_target == "label" and source.images is not None:
                targets = torch.tensor([source.images.targets[i][0] for i in index[measured]], device=device)
            else:
                targets = chosen["standard"][torch.as_tensor(measured, device=device)]
            x_measured = x[torch.as_tensor(measured, device=device)]
            step = config.relevance_batch_size
            maps = np.concatenate(
                [
                    relevance_batch(
                        entry.model, x_measured[o : o + step], targets[o : o + step], device, source.upsampling
                    )
                    for o in range(0, len(measured), step)
                ]
            )
            masks = batch["mask"][measured].numpy().astype(bool)
            scores[entry.name]["all"].add(maps, masks)
            if seen is not None:
                batch_seen = seen[index[measured]]
                for group, chosen_images in (("seen", batch_seen), ("unseen", ~batch_seen)):
                    if chosen_images.any():
                        scores[entry.name][group].add(maps[chosen_images], masks[chosen_images])
            shares[entry.name] += background_share(torch.from_numpy(maps), torch.from_numpy(masks)).tolist()
            if "cue" in batch:
                cues = batch["cue"][measured].numpy().astype(bool)
                has_cue = cues.any(axis=(1, 2))
                cue_shares[entry.name] += mask_share(maps[has_cue], cues[has_cue]).tolist()
        bar.update(len(index))
    return PartResult(
        readable=np.concatenate(readable),
        predictions={
            m: {p: np.concatenate(v).astype(np.int64) for p, v in per.items()} for m, per in predictions.items()
        },
        scores=scores,
        shares=shares,
        cue_shares=cue_shares,
        cue_areas=cue_areas,
    )


def _finished_part(path: Path, fingerprint: str) -> PartResult:
    """A part another rank scored; every rank must see the same work folder."""
    part = PartResult.load(path, fingerprint)
    if part is None:
        raise FileNotFoundError(
            f"{path}: another rank's finished part is missing; under torchrun every rank needs the same --work folder"
        )
    return part


def mask_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: the share of its positive relevance inside the mask (0 for a map without any)."""
    pixels = int(np.prod(maps.shape[1:]))
    positive = np.clip(maps, 0, None).reshape(len(maps), pixels).astype(np.float64)
    inside = (positive * masks.reshape(len(masks), pixels)).sum(axis=1)
    total = positive.sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


@dataclass
class BenchmarkRun:
    readable: np.ndarray
    predictions: dict[str, dict[str, np.ndarray]]
    scores: dict[str, dict[str, SegmentationScores]]
    shares: dict[str, list[float]]
    cue_shares: dict[str, list[float]] = field(default_factory=dict)
    cue_areas: list[float] = field(default_factory=list)


def run_benchmark(
    source: EvalSource,
    models: list[ModelUnderTest],
    seen_classes: set[int] | None,
    config: EvaluateConfig,
    work_dir: Path,
    fingerprint: str,
    device: torch.device,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> BenchmarkRun:
    """Every model over every image of ``source``, resuming from the parts already in ``work_dir``.

    Under several ``ranks`` (torchrun), rank r scores the parts r, r + world, r + 2·world, ... and
    saves them; after all have finished, every rank assembles the run from the parts in the shared
    ``work_dir``, which holds exactly what one process would have computed."""
    ranks = ranks or Ranks()
    work_dir.mkdir(parents=True, exist_ok=True)
    if ranks.main:
        for stale in work_dir.glob(f"{PART_PREFIX}*"):
            if not stale.name.startswith(f"{PART_PREFIX}{fingerprint[:16]}-"):
                stale.unlink()  # parts of another run (other models, settings or code) are never reused
    ranks.barrier()
    for entry in models:
        entry.model.eval()
    seen = seen_flags(source.images, len(source), seen_classes)
    starts = list(range(0, len(source), config.part_size))
    paths = [work_dir / f"{PART_PREFIX}{fingerprint[:16]}-{number:05d}.npz" for number in range(len(starts))]
    owned = [number for number in range(len(starts)) if number % ranks.world == ranks.rank]
    sizes = {number: min(config.part_size, len(source) - starts[number]) for number in owned}
    computed: dict[int, PartResult] = {}
    names = "+".join(m.name for m in models)
    with tqdm(
        total=sum(sizes.values()),
        desc=f"evaluate/{source.name}/{names}",
        unit="img",
        disable=not (progress and ranks.main),
    ) as bar:
        resumed = 0
        for number in owned:
            indices = list(range(starts[number], starts[number] + sizes[number]))
            part = PartResult.load(paths[number], fingerprint)
            if part is None:
                if resumed and ranks.main:
                    tqdm.write(
                        f"evaluate/{source.name}/{names}: resuming after {resumed} images (finished parts in {work_dir})"
                    )
                resumed = 0
                part = _run_part(source, indices, models, seen, config, device, bar)
                part.save(paths[number], fingerprint)
            else:
                resumed += len(indices)
                bar.update(len(indices))
            computed[number] = part
        if resumed == sum(sizes.values()) and len(source) and ranks.main:
            tqdm.write(
                f"evaluate/{source.name}/{names}: all {resumed} images already scored (finished parts in {work_dir})"
            )
    ranks.barrier()
    parts = [computed.get(number) or _finished_part(path, fingerprint) for number, path in enumerate(paths)]
    predictions = (
        {
            m.name: {
                p: np.concatenate([part.predictions[m.name][p] for part in parts]) for p in parts[0].predictions[m.name]
            }
            for m in models
        }
        if parts
        else {}
    )
    scores: dict[str, dict[str, SegmentationScores]] = {}
    shares: dict[str, list[float]] = {}
    cue_shares: dict[str, list[float]] = {}
    for part in parts:
        for model, per in part.scores.items():
            for group, value in per.items():
                scores.setdefault(model, {})[group] = scores.get(model, {}).get(group, SegmentationScores()) + value
        for model, values in part.shares.items():
            shares.setdefault(model, []).extend(values)
        for model, values in part.cue_shares.items():
            cue_shares.setdefault(model, []).extend(values)
    readable = np.concatenate([part.readable for part in parts]) if parts else np.zeros(0, dtype=bool)
    return BenchmarkRun(
        readable, predictions, scores, shares, cue_shares, [area for part in parts for area in part.cue_areas]
    )


def run_metrics(
    source: EvalSource,
    run: BenchmarkRun,
    seen_classes: set[int] | None,
    trained_corruptions: Mapping[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """model -> flat metrics: accuracy per protocol (seen/unseen classes), relevance scores per group,
    and on corruption benchmarks accuracy per corruption and family, and on the corruptions each
    model was fine-tuned on (``trained_corruptions``) against the others."""
    results: dict[str, dict[str, float]] = {}
    keep = np.flatnonzero(run.readable)
    images = source.images.take(keep.tolist()) if source.images is not None else None
    for model, per_protocol in run.predictions.items():
        row: dict[str, float] = {"images": len(keep), "unreadable": int((~run.readable).sum())}
        if images is not None:
            kept = {p: v[keep] for p, v in per_protocol.items()}
            row.update(benchmark_metrics(images, kept, seen_classes))
            if source.families is not None:
                rows = corruption_breakdown(images, kept, seen_classes, source.families)
                row.update(corruption_metrics(rows, (trained_corruptions or {}).get(model, [])))
        for group, value in run.scores.get(model, {}).items():
            suffix = "" if group == "all" else f"_{group}"
            for key, metric in value.metrics().items():
                if key != "images":
                    row[f"{key}{suffix}"] = metric
        if run.shares.get(model):
            row["background_share"] = round(float(np.mean(run.shares[model])), 6)
        if run.cue_shares.get(model):
            row["cue_share"] = round(float(np.mean(run.cue_shares[model])), 6)
            row["cue_area"] = round(float(np.mean(run.cue_areas)), 6)
        results[model] = row
    return results


def run_fingerprint(model_dirs: list[Path], settings: dict[str, Any], files: list[str]) -> str:
    """Models' bytes, the benchmark's settings and file list, and the code: what a resumed part must share."""
    from pipeline.utils.checkpoint import fingerprint, source_digest

    listing = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return fingerprint(
        {"settings": settings, "files": listing, "code": source_digest(), "torch": torch.__version__}, model_dirs
    )


def relevance_support(models: list[ModelUnderTest], device: torch.device, size: int) -> None:
    """Mark models whose layers the relevance rules do not cover (accuracy is still measured)."""
    probe = torch.zeros(1, 3, size, size, device=device)
    for entry in models:
        try:
            relevance_batch(entry.model, probe, torch.zeros(1, dtype=torch.long, device=device), device)
        except UnsupportedModelError as exc:
            tqdm.write(f"{entry.name}: no relevance metrics ({exc})")
            entry.relevance = False
