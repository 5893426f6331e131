"""End-to-end evaluation throughput: JPEG decoding, the model's resize and crop, and the forward pass.

Writes a fake ImageNet-val folder (``--images`` JPEGs of 500×375, ImageNet's typical size, in
WordNet-id folders) and runs `cft evaluate`'s runner on it exactly as the stage does (DataLoader
decoding workers, bf16 autocast on CUDA, every protocol), with one random-weight model. Reports
images/s end to end, and the model alone on pre-decoded batches for comparison.

    python benchmarks/evaluate_throughput.py                                  # ViT-B/16, CPU, batch 64
    python benchmarks/evaluate_throughput.py --device cuda --batch-size 256 --images 20000 --workers 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.benchmarks.catalog import read_benchmark  # noqa: E402
from pipeline.benchmarks.runner import ModelUnderTest, run_benchmark  # noqa: E402
from pipeline.benchmarks.sources import EvalSource, FileItems  # noqa: E402
from pipeline.config.evaluate import EvaluateConfig  # noqa: E402
from pipeline.data.class_names import imagenet_classes  # noqa: E402
from pipeline.data.preprocess import InputTransform  # noqa: E402
from pipeline.models.factory import preprocessing_of  # noqa: E402
from pipeline.utils.device import Normalizer, autocast, resolve_device  # noqa: E402


def fake_imagenet_val(root: Path, count: int, classes: int = 50) -> None:
    rng = np.random.default_rng(0)
    wnids = imagenet_classes()[:classes]
    # Smooth noise compresses like a photo (random pixels would make unrealistically large JPEGs).
    base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for index in range(count):
        folder = root / wnids[index % classes]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(np.roll(base, index, axis=1)).resize((500, 375), Image.Resampling.BICUBIC)
        picture.save(folder / f"ILSVRC2012_val_{index:08d}.JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_base_patch16_224.augreg2_in21k_ft_in1k")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes; default as `cft evaluate`")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import timm

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000).to(device).eval()
    preprocessing = preprocessing_of(model, None)
    transform = InputTransform.from_preprocessing(preprocessing)
    entry = ModelUnderTest("model", model, Normalizer(preprocessing["mean"], preprocessing["std"]).to(device))
    config = EvaluateConfig(
        benchmarks={},
        in_distribution=None,
        batch_size=args.batch_size,
        workers=args.workers,
        part_size=10**9,
        relevance=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "val"
        fake_imagenet_val(root, args.images)
        images = read_benchmark("imagefolder", root, imagenet_classes())
        source = EvalSource("val", "imagefolder", FileItems(root, images.files, transform), images, False, [])

        batch = torch.randint(
            0, 255, (args.batch_size, transform.size, transform.size, 3), dtype=torch.uint8, device=device
        )
        with torch.no_grad(), autocast(device):
            model(entry.normalizer(batch))  # warm-up (CUDA kernels, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run_benchmark(source, [entry], None, config, Path(tmp) / "work", "throughput", device, progress=True)
        end_to_end = time.perf_counter() - started

        repeats = max(1, args.images // args.batch_size)
        started = time.perf_counter()
        with torch.no_grad(), autocast(device):
            for _ in range(repeats):
                model(entry.normalizer(batch)).argmax(1).cpu()
        model_only = time.perf_counter() - started
    print(
        f"{args.model} on {device.type} ({torch.get_num_threads()} threads), batch {args.batch_size}, {args.images} JPEGs 500x375"
    )
    print(
        f"end to end (decode + resize/crop + model + protocols): {args.images / end_to_end:.1f} img/s ({end_to_end:.1f} s)"
    )
    print(f"model alone on decoded batches: {repeats * args.batch_size / model_only:.1f} img/s")


if __name__ == "__main__":
    main()
