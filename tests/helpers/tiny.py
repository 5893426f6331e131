"""Tiny settings for fast tests: world splits, base training, subset, fine-tuning and evaluation params."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config.data import PrepareConfig, WorldConfig

TINY_SPLITS = {
    "pretrain": 40,
    "train": 60,
    "val": 20,
    "test": 30,
    "random_bg": 20,
    "swapped_bg": 20,
    "rendition": 20,
    "sketch": 20,
    "pose_sweep": 20,
    "scene": 20,
    "cue_removed": 20,
    "cue_swapped": 20,
    "backgrounds": 14,  # two scenes x 7 variants
}


def tiny_prepare_config(seed: int = 0, **world: object) -> PrepareConfig:
    return PrepareConfig(seed=seed, world=WorldConfig(split_sizes=dict(TINY_SPLITS), **world))


TINY_BASE = {
    "model": "vit_tiny_patch16_224",
    "model_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "phases": [{"split": "pretrain", "epochs": 1}, {"split": "train", "epochs": 1}],
    "batch_size": 32,
    "warmup_steps": 1,
    "allow_chance": True,  # a few steps on 100 images: at chance, which these tests accept
}


TINY_SUBSET = {"images_per_class": 2, "val_images_per_class": 1}


TINY_FINETUNE = {
    "methods": ["cft", "plain"],
    "train": {
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-4,
        "lr_step_epochs": 1,
        "overlay_images": 3,
        "eval_batch_size": 16,
        "allow_chance": True,
    },
    "cft": {"objective": "relevance"},
    "plain": {"objective": "labels"},
}


TINY_EVALUATE = {
    "relevance_images": 8,
    "overlay_images": 3,
    "benchmarks": {
        "test": {"kind": "split"},
        "swapped_bg": {"kind": "split"},
        "backgrounds": {"kind": "split", "ood_mean": False},
    },
    "shortcut_tests": {"bg": "swapped_bg"},
}


def tiny_params(path: Path, **base_overrides: object) -> Path:
    params = {
        "data": {"seed": 0, "world": {"split_sizes": TINY_SPLITS}, "subset": TINY_SUBSET},
        "base": {**TINY_BASE, **base_overrides},
        "finetune": TINY_FINETUNE,
        "evaluate": TINY_EVALUATE,
    }
    path.write_text(yaml.safe_dump(params))
    return path
