"""Throughput of the grounded_sam mask backend, and how often each image encoder runs per image.

Runs the backend exactly as `cft masks` does (``pipeline.masks.grounded.grounded_sam_masks``) on
random images with random-weight models, timing the GroundingDINO calls, SAM's image encoder and
SAM's decoder separately, and counting encoder passes (Swin backbone and SAM image encoder) per image.

    python benchmarks/grounded_sam.py                               # small models, CPU
    python benchmarks/grounded_sam.py --models full --device cuda   # Swin-T OGC + BERT-base + SAM vit_h

Random weights give random boxes: with thresholds 0 every concept keeps ``--boxes`` boxes, so SAM
decodes ``concepts × boxes`` prompts per image, a realistic load (real runs keep fewer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.masks import GroundedSamConfig, GroundingDinoConfig, MasksConfig  # noqa: E402
from pipeline.masks.grounded import GroundedSam, grounded_sam_masks  # noqa: E402
from pipeline.masks.grounding import ConceptDetector, build_grounding_dino  # noqa: E402
from pipeline.masks.segmenting import SAM_ARCHITECTURES, BoxSegmenter, build_sam  # noqa: E402
from pipeline.utils.device import resolve_device  # noqa: E402
from tests.helpers.grounded_models import GROUNDING_OVERRIDES, TINY_SAM, spread_scores, tiny_text_encoder  # noqa: E402

CONCEPTS = ["long beak", "wings", "red tail", "head", "legs", "body"]


def full_text_encoder(directory: Path) -> Path:
    """BERT-base's architecture with random weights (a small vocabulary: the cost is in the layers)."""
    from transformers import BertConfig, BertModel

    tiny_text_encoder(directory)
    BertModel(BertConfig(vocab_size=64)).save_pretrained(directory)
    return directory


class Stopwatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = function(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.calls[name] = self.calls.get(name, 0) + 1
            return result

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", choices=["small", "full"], default="small")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--concepts", type=int, default=6)
    parser.add_argument("--boxes", type=int, default=2, help="boxes kept per concept (max_boxes)")
    parser.add_argument("--images-per-batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="cft-grounded-bench-"))

    if args.models == "small":
        text_encoder = tiny_text_encoder(work / "bert")
        grounding = GroundingDinoConfig(
            text_encoder=str(text_encoder),
            image_size=224,
            max_size=400,
            box_threshold=0.0,
            text_threshold=0.0,
            max_boxes=args.boxes,
        )
        detector_model = build_grounding_dino(grounding, GROUNDING_OVERRIDES)
        spread_scores(detector_model)
        sam = build_sam(TINY_SAM)
    else:
        text_encoder = full_text_encoder(work / "bert")
        grounding = GroundingDinoConfig(
            text_encoder=str(text_encoder), box_threshold=0.0, text_threshold=0.0, max_boxes=args.boxes
        )
        detector_model = build_grounding_dino(grounding)
        sam = build_sam(SAM_ARCHITECTURES["vit_h"])
    settings = GroundedSamConfig(grounding=grounding, images_per_part=args.images)
    config = MasksConfig(
        resolution=224,
        grounded_sam=settings.model_copy(
            update={"sam": settings.sam.model_copy(update={"images_per_batch": args.images_per_batch})}
        ),
    )

    watch = Stopwatch(device)
    detector = ConceptDetector(detector_model, grounding, device)
    segmenter = BoxSegmenter(sam, device, config.grounded_sam.sam.boxes_per_batch)
    backbone_passes: list[int] = []
    encoder_images: list[int] = []
    detector_model.backbone[0].patch_embed.register_forward_hook(lambda m, a, o: backbone_passes.append(a[0].shape[0]))
    sam.image_encoder.register_forward_hook(lambda m, a, o: encoder_images.append(a[0].shape[0]))
    detector.detect = watch.wrap("GroundingDINO", detector.detect)  # type: ignore[method-assign]
    segmenter.embed = watch.wrap("SAM encoder", segmenter.embed)  # type: ignore[method-assign]
    segmenter.segment = watch.wrap("SAM decoder", segmenter.segment)  # type: ignore[method-assign]

    rng = np.random.default_rng(0)
    images = {
        f"img/{i}": (rng.random((args.height, args.width, 3)) * 255).astype(np.uint8) for i in range(args.images + 1)
    }
    concepts = {"bird": CONCEPTS[: args.concepts]}
    ids = list(images)
    models = GroundedSam(detector, segmenter, {})
    # warm-up on one image (first-call allocations), then the timed run on the others
    list(
        grounded_sam_masks(
            models,
            config,
            ids[:1],
            ["bird"],
            concepts,
            lambda batch: [images[i] for i in batch],
            (224, 224),
            work / "warm",
            progress=False,
        )
    )
    watch.seconds.clear(), watch.calls.clear(), backbone_passes.clear(), encoder_images.clear()
    started = time.perf_counter()
    results = list(
        grounded_sam_masks(
            models,
            config,
            ids[1:],
            ["bird"] * args.images,
            concepts,
            lambda batch: [images[i] for i in batch],
            (224, 224),
            work / "run",
            progress=True,
        )
    )
    total = time.perf_counter() - started

    count = len(results)
    print(
        f"\n{args.models} models on {device.type}: {count} images of {args.width}x{args.height}, {args.concepts} concepts, {args.boxes} boxes each"
    )
    print(f"throughput: {count / total:.2f} images/s ({total / count * 1000:.0f} ms per image)")
    print(
        f"Swin backbone passes per image: {len(backbone_passes) / count:.2f} (batch of each pass: {sorted(set(backbone_passes))})"
    )
    print(f"SAM image-encoder images per image: {sum(encoder_images) / count:.2f} in {len(encoder_images)} calls")
    for name, seconds in watch.seconds.items():
        print(f"  {name:14s} {seconds:7.2f} s  {seconds / total:5.1%}  ({watch.calls[name]} calls)")


if __name__ == "__main__":
    main()
