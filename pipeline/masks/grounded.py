"""The ``grounded_sam`` mask backend: GroundingDINO boxes per concept, SAM masks per box.

Per image: one GroundingDINO call with one caption per concept (plus the whole-object prompt
when ``on_all_missing: object``), sharing one backbone pass; then one SAM embedding and one
decoder call for every box of the image. A concept's mask is the union of its boxes' masks.

Work is saved in parts of ``images_per_part`` images under the work directory, keyed by a
fingerprint of everything the masks depend on; a rerun after an interruption loads the finished
parts and computes only the rest, and yields exactly what an uninterrupted run yields.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.class_names import readable_name
from pipeline.masks.annotated import resize_masks
from pipeline.masks.grounding import ConceptDetector, Detections
from pipeline.masks.segmenting import BoxSegmenter
from pipeline.masks.store import ImageMasks, is_noisy
from pipeline.utils.atomic import write_with
from pipeline.utils.checkpoint import fingerprint, source_digest
from pipeline.utils.distributed import Ranks

if TYPE_CHECKING:
    from pipeline.config.masks import MasksConfig

ImageLoader = Callable[[list[str]], list[np.ndarray]]  # image ids -> (H, W, 3) uint8 RGB images


@dataclass
class GroundedSam:
    detector: ConceptDetector
    segmenter: BoxSegmenter
    provenance: dict[str, Any]


def load_grounded_sam(config: MasksConfig) -> GroundedSam:
    """Both models from the checkpoints in params, on the configured device."""
    from pipeline.masks.grounding import load_grounding_dino
    from pipeline.masks.segmenting import load_sam
    from pipeline.utils.device import resolve_device

    settings = config.grounded_sam
    device = resolve_device(settings.device)
    detector_model, detector_files = load_grounding_dino(settings.grounding)
    sam, sam_files = load_sam(settings.sam)
    return GroundedSam(
        ConceptDetector(detector_model, settings.grounding, device),
        BoxSegmenter(sam, device, settings.sam.boxes_per_batch),
        {"grounding": detector_files, "sam": sam_files},
    )


def slot_count(config: MasksConfig, class_names: list[str], concepts: dict[str, list[str]]) -> int:
    """Mask slots per image in the store: the most concepts of any class, plus the fallback slot."""
    most = max((len(concepts.get(name, [])) for name in class_names), default=0)
    return max(1, most + (config.on_all_missing == "object"))


def object_prompt(config: MasksConfig, class_name: str) -> str:
    return config.object_prompt.replace("{class}", readable_name(class_name))


def grounded_sam_masks(
    models: GroundedSam,
    config: MasksConfig,
    image_ids: list[str],
    class_names: list[str],
    concepts: dict[str, list[str]],
    load_images: ImageLoader,
    resolution: tuple[int, int],
    work_dir: str | Path,
    progress: bool = True,
    ranks: Ranks | None = None,
) -> Iterator[ImageMasks]:
    """The masks of every image, in ``image_ids`` order, resuming from finished parts in ``work_dir``.

    Under several ``ranks`` (torchrun) each rank first segments its parts (r, r + world, ...) into
    the shared ``work_dir``; then the main rank yields every image from the finished parts (exactly
    what one process yields) and the others yield nothing."""
    ranks = ranks or Ranks()
    settings = config.grounded_sam
    run_id = fingerprint(
        {
            "config": config.model_dump(mode="json"),
            "models": models.provenance,
            "images": list(zip(image_ids, class_names, strict=True)),
            "concepts": {name: concepts.get(name, []) for name in sorted(set(class_names))},
            "resolution": resolution,
            "code": source_digest(),
            "torch": torch.__version__,
            "device": models.detector.device.type,
        },
        [],
    )
    parts = PartCache(Path(work_dir), run_id, remove_stale=ranks.main)
    ranks.barrier()
    size, per_batch = settings.images_per_part, settings.sam.images_per_batch
    starts = range(0, len(image_ids), size)

    def segment(start: int) -> list[ImageMasks]:
        ids, names = image_ids[start : start + size], class_names[start : start + size]
        images = load_images(ids)
        results = [
            result
            for batch in range(0, len(ids), per_batch)
            for result in _segment_batch(
                models,
                config,
                ids[batch : batch + per_batch],
                names[batch : batch + per_batch],
                images[batch : batch + per_batch],
                concepts,
                resolution,
            )
        ]
        parts.save(start, results)
        return results

    if ranks.world > 1:
        owned = [start for number, start in enumerate(starts) if number % ranks.world == ranks.rank]
        with tqdm(total=len(owned), desc="masks (grounded_sam), parts", disable=not (progress and ranks.main)) as bar:
            for start in owned:
                if parts.load(start) is None:
                    segment(start)
                bar.update(1)
        ranks.barrier()
        if not ranks.main:
            return
    bar = tqdm(total=len(image_ids), desc="masks (grounded_sam)", unit="img", disable=not progress)
    found = usable = 0
    for start in starts:
        results = parts.load(start)
        if results is None:
            results = segment(start)
        for result in results:
            flags = result.flags()
            found += sum(flag == "ok" for flag in flags)
            usable += result.usable()
            yield result
        bar.update(len(results))
        bar.set_postfix(concepts_found=found, images_usable=f"{usable}/{bar.n}")
    bar.close()


def _segment_batch(
    models: GroundedSam,
    config: MasksConfig,
    ids: list[str],
    class_names: list[str],
    images: list[np.ndarray],
    concepts: dict[str, list[str]],
    resolution: tuple[int, int],
) -> list[ImageMasks]:
    with_object = config.on_all_missing == "object"
    detections: list[list[Detections]] = []
    for image_id, class_name, image in zip(ids, class_names, images, strict=True):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{image_id}: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        if config.resolution is None and image.shape[:2] != tuple(resolution):
            raise ValueError(
                f"{image_id}: {image.shape[1]}x{image.shape[0]} pixels, unlike the first image's {resolution[1]}x{resolution[0]}; set masks.resolution to store masks at one size"
            )
        prompts = concepts.get(class_name, []) + ([object_prompt(config, class_name)] if with_object else [])
        detections.append(models.detector.detect(image, prompts))
    # only images with a box need SAM; each is embedded once, in one encoder call for the batch
    needed = [i for i, found in enumerate(detections) if any(len(d.boxes) for d in found)]
    embeddings = models.segmenter.embed([images[i] for i in needed]) if needed else None
    results = []
    for index, (image_id, class_name, image) in enumerate(zip(ids, class_names, images, strict=True)):
        found = detections[index]
        masks = np.zeros((len(found), *image.shape[:2]), dtype=bool)
        noisy = [False] * len(found)
        if index in needed:
            boxes = np.concatenate([d.boxes for d in found])
            owner = np.concatenate([np.full(len(d.boxes), k) for k, d in enumerate(found)])
            box_masks = models.segmenter.segment(embeddings, needed.index(index), boxes)
            for slot in range(len(found)):
                masks[slot] = box_masks[owner == slot].any(axis=0)
                noisy[slot] = is_noisy(masks[slot], found[slot].boxes)  # at the image's own size, where the boxes are
        masks = resize_masks(masks, resolution)
        names = concepts.get(class_name, [])
        result = ImageMasks(
            image_id,
            class_name,
            list(names),
            masks[: len(names)],
            scores=[d.best_score for d in found[: len(names)]],
            boxes=[len(d.boxes) for d in found[: len(names)]],
            noisy=noisy[: len(names)],
        )
        if with_object and not result.usable():
            result = ImageMasks(
                image_id,
                class_name,
                [*names, object_prompt(config, class_name)],
                masks,
                scores=[d.best_score for d in found],
                boxes=[len(d.boxes) for d in found],
                fallback=True,
                noisy=noisy,
            )
        results.append(result)
    return results


class PartCache:
    """Finished parts of one run (``<work_dir>/<run id>/part-<start>.npz``); other runs' parts are removed."""

    def __init__(self, work_dir: Path, run_id: str, remove_stale: bool = True) -> None:
        self.directory = work_dir / run_id[:20]
        if remove_stale and work_dir.is_dir():
            for stale in work_dir.iterdir():
                if stale.is_dir() and stale != self.directory:
                    shutil.rmtree(stale)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, start: int) -> Path:
        return self.directory / f"part-{start:08d}.npz"

    def load(self, start: int) -> list[ImageMasks] | None:
        path = self._path(start)
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                masks, meta = stored["masks"], json.loads(str(stored["meta"]))
        except Exception:  # a torn file from an interrupted write: recompute the part
            return None
        if not all(isinstance(item, dict) and "noisy" in item for item in meta):
            return None  # written without the QC this code applies: recompute
        results, offset = [], 0
        for item in meta:
            count = len(item["concepts"])
            results.append(
                ImageMasks(
                    item["image_id"],
                    item["class_name"],
                    item["concepts"],
                    masks[offset : offset + count],
                    item["scores"],
                    item["boxes"],
                    fallback=item["fallback"],
                    noisy=item["noisy"],
                )
            )
            offset += count
        return results

    def save(self, start: int, results: list[ImageMasks]) -> None:
        meta = [
            {
                "image_id": r.image_id,
                "class_name": r.class_name,
                "concepts": r.concepts,
                "scores": r.scores,
                "boxes": r.boxes,
                "fallback": r.fallback,
                "noisy": r.noisy,
            }
            for r in results
        ]
        shape = results[0].masks.shape[1:] if results else (0, 0)
        masks = np.concatenate([r.masks for r in results]) if results else np.zeros((0, *shape), dtype=bool)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: numpy would append ".npz" to a path
                np.savez_compressed(handle, masks=masks, meta=np.array(json.dumps(meta)))

        write_with(self._path(start), write)
