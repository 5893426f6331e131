"""Which CPU settings make training give the same bytes on different x86 machines?

Reruns on one machine are bit-identical, but a clone on another CPU rebuilt other model bytes.
The suspects are the thread count and the instruction set each library dispatches to at run time
(ATen's vectorised kernels, MKL's GEMM, oneDNN). This trains the same small base model (the world
ViT, one epoch on a small world) in fresh processes under each setting, emulating an older CPU on
this one by capping the instruction sets (`ATEN_CPU_CAPABILITY=avx2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`,
`ONEDNN_MAX_CPU_ISA=AVX2`), and prints the weights' hash and the training time per setting.

    python benchmarks/cpu_determinism.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OLDER_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PINNED = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
SETTINGS = {
    "this CPU, 2 threads": {"OMP_NUM_THREADS": "2"},
    "this CPU, 1 thread": {"OMP_NUM_THREADS": "1"},
    "older CPU, 2 threads": {"OMP_NUM_THREADS": "2", **OLDER_CPU},
    "pinned, this CPU, 2 threads": {"OMP_NUM_THREADS": "2", **PINNED},
    "pinned, older CPU, 2 threads": {"OMP_NUM_THREADS": "2", **OLDER_CPU, **PINNED},
    "pinned, this CPU, 1 thread": {"OMP_NUM_THREADS": "1", **PINNED},
}

TRAIN = """
import hashlib, json, sys, time
import torch
from pipeline.training.base import train_base
from pipeline.config.base import BaseConfig
config = BaseConfig(model="vit_tiny_patch16_224", model_kwargs={"patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
                    phases=[{"split": "pretrain", "epochs": 1}], batch_size=64, warmup_steps=5, device="cpu", allow_chance=True)
started = time.perf_counter()
outcome = train_base(config, sys.argv[1], progress=False)
digest = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in outcome.model.state_dict().values())).hexdigest()
print(json.dumps({"sha256": digest[:16], "seconds": round(time.perf_counter() - started, 1), "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from pipeline.config.data import PrepareConfig, WorldConfig
    from pipeline.data.world.build import build_world

    with tempfile.TemporaryDirectory() as folder:
        sizes = {
            "pretrain": 512,
            "train": 64,
            "val": 64,
            "test": 64,
            "random_bg": 8,
            "swapped_bg": 8,
            "rendition": 8,
            "sketch": 8,
            "pose_sweep": 8,
            "scene": 8,
        }
        build_world(PrepareConfig(world=WorldConfig(split_sizes=sizes)), Path(folder), workers=1)
        print("| setting | weights sha256 | train seconds | ATen kernels |\n|---|---|---|---|")
        for name, env in SETTINGS.items():
            result = subprocess.run(
                [sys.executable, "-c", TRAIN, str(Path(folder) / "manifest.parquet")],
                env={**os.environ, **env},
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {name} | {row['sha256']} | {row['seconds']} | {row['capability']} |", flush=True)


if __name__ == "__main__":
    main()
